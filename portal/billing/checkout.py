"""Starting a purchase: the pending purchase, its Checkout Session, and cancelling it.

Stripe is never called while a database lock is held.
"""

from datetime import timedelta
from enum import StrEnum

from sqlalchemy import select, update

from portal import policy
from portal.accounts.models import User
from portal.billing.fulfilment import fulfil_checkout, mark_unpaid
from portal.billing.gateway import gateway
from portal.billing.models import PAYMENT_METHOD_NAMES, Purchase, PurchaseStatus
from portal.db import db
from portal.errors import AccountTerminated, NotFound, PaymentProviderError, ValidationError
from portal.timeutil import utcnow

# A second click on Buy within this time reuses the pending purchase (and, through the
# idempotency key, the same Checkout Session) instead of starting another.
PENDING_REUSE_WINDOW = timedelta(minutes=30)


def _checkout_key(purchase: Purchase) -> str:
    # The creation time keeps keys unique even if purchase ids restart (a reset test
    # database against the same Stripe account): Stripe refuses a reused key.
    return f"purchase-{purchase.id}-{purchase.created_at:%Y%m%dT%H%M%S%f}-checkout"


# -- starting a purchase --------------------------------------------------------------


def start_checkout(
    user: User, package_code: str, success_url: str, cancel_url: str, save_card: bool = False
) -> str:
    """Record a pending purchase and open a Checkout Session for it; return its URL.

    The session is for the account's Stripe Customer (made at the first checkout), makes
    an invoice, offers the customer's saved cards, and saves the new card for later when
    `save_card` (Checkout itself also offers to save it).

    :raises ValidationError: no such package.
    :raises AccountTerminated: the account may not buy.
    :raises PaymentProviderError: Stripe refused or could not be reached; the pending
        purchase stays, and the next attempt reuses it with the same idempotency key.
    """
    package = policy.PACKAGES_BY_CODE.get(package_code)
    if package is None:
        raise ValidationError("Choose one of the packages.", field="package")
    if user.is_terminated:
        raise AccountTerminated("terminated accounts cannot buy credits")
    purchase = _pending_purchase(user, package, save_card)
    customer_id = stripe_customer(user)
    params = _session_params(customer_id, user, purchase, package, success_url, cancel_url)
    if purchase.saves_card:
        # Saved for the customer's own next checkouts (no charge is ever made without
        # them), and shown again there: a card saved this way is otherwise "limited",
        # which Checkout does not offer.
        params["payment_intent_data"]["setup_future_usage"] = "on_session"
        params["payment_method_data"] = {"allow_redisplay": "always"}
    session = gateway().create_checkout_session(params, _checkout_key(purchase))
    purchase.stripe_checkout_session_id = session.id
    db.session.commit()
    return session.url


def _pending_purchase(user: User, package: policy.Package, save_card: bool) -> Purchase:
    """The customer's recent pending purchase of `package` made with the same choice
    about saving the card, or a new one (committed, so that Stripe can be called without
    a transaction open)."""
    purchase = db.session.scalar(
        select(Purchase)
        .where(
            Purchase.user_id == user.id,
            Purchase.package_code == package.code,
            Purchase.saves_card == save_card,
            Purchase.status == PurchaseStatus.PENDING,
            Purchase.created_at >= utcnow() - PENDING_REUSE_WINDOW,
        )
        .order_by(Purchase.id.desc())
        .limit(1)
    )
    if purchase is None:
        purchase = Purchase(
            user_id=user.id,
            package_code=package.code,
            credits=package.credits,
            amount_cents=package.price_cents,
            currency=package.currency,
            saves_card=save_card,
        )
        db.session.add(purchase)
        db.session.commit()
    return purchase


def stripe_customer(user: User) -> str:
    """The account's Stripe Customer id, created the first time it is needed.

    Stripe is called with no lock held. Two first checkouts at once send the same
    idempotency key, so Stripe answers both with one customer, and the conditional
    update stores it once.

    :raises PaymentProviderError: Stripe refused or could not be reached.
    """
    if user.stripe_customer_id:
        return user.stripe_customer_id
    customer_id = gateway().create_customer(
        user.email,
        {"user_id": str(user.id)},
        f"customer-{user.id}-{user.created_at:%Y%m%dT%H%M%S%f}",
    )
    db.session.execute(
        update(User)
        .where(User.id == user.id, User.stripe_customer_id.is_(None))
        .values(stripe_customer_id=customer_id)
    )
    db.session.commit()
    db.session.refresh(user)
    return user.stripe_customer_id


def saved_card_words(user: User) -> list[str]:
    """The cards Stripe keeps for the account, as the buy page names them ("Visa ending
    in 4242"); none when it has no customer yet or Stripe cannot be reached (the page
    then simply does not mention them)."""
    if not user.stripe_customer_id:
        return []
    try:
        cards = gateway().saved_cards(user.stripe_customer_id)
    except PaymentProviderError:
        return []
    # One line per card, however many times it was saved.
    by_fingerprint = {
        card["card"]["fingerprint"]: card["card"] for card in cards if card.get("card")
    }
    return [
        f"{PAYMENT_METHOD_NAMES.get(card['brand'], 'Card')} ending in {card['last4']}"
        for card in by_fingerprint.values()
    ]


def billing_portal_url(user: User, return_url: str) -> str:
    """A link to Stripe's customer portal for the account (cards, invoices).

    :raises PaymentProviderError: Stripe refused or could not be reached.
    """
    return gateway().create_billing_portal_session(stripe_customer(user), return_url)


def _session_params(
    customer_id: str,
    user: User,
    purchase: Purchase,
    package: policy.Package,
    success_url: str,
    cancel_url: str,
) -> dict:
    references = {"purchase_id": str(purchase.id), "user_id": str(user.id)}
    params = {
        "mode": "payment",
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": package.currency,
                    "unit_amount": package.price_cents,
                    "product_data": {
                        "name": f"{package.name}: {package.credits:,} credits",
                    },
                },
            }
        ],
        "client_reference_id": str(purchase.id),
        "customer": customer_id,
        "metadata": references,
        "payment_intent_data": {"metadata": references},
        # A numbered invoice for every purchase, made and kept by Stripe.
        "invoice_creation": {
            "enabled": True,
            "invoice_data": {
                "description": f"{package.name} package: {package.credits:,} credits",
                "metadata": references,
            },
        },
        # Checkout shows the customer's saved cards and offers to save a new one.
        "saved_payment_method_options": {
            "payment_method_save": "enabled",
            "allow_redisplay_filters": ["always"],
        },
        "success_url": success_url,
        "cancel_url": cancel_url,
    }
    return params


def purchase_by_session(user_id: int, session_id: str) -> Purchase:
    """Return the customer's purchase for a Checkout Session id.

    :raises NotFound: no such session, or not this customer's.
    """
    purchase = db.session.scalar(
        select(Purchase).where(Purchase.stripe_checkout_session_id == session_id)
    )
    if purchase is None or purchase.user_id != user_id:
        raise NotFound("no such checkout")
    return purchase


class Cancellation(StrEnum):
    CANCELED = "canceled"
    PROCESSING = "processing"
    PAID = "paid"
    NOTHING_TO_CANCEL = "nothing_to_cancel"


def cancel_checkout(purchase: Purchase) -> Cancellation:
    """Close the checkout the customer walked away from, so it can no longer be paid.

    Stripe is asked first: only a session still open (nothing paid) is expired. A
    payment the customer already started (a bank debit still processing) can no longer
    be stopped from here, and one that went through is credited.
    """
    if purchase.status != PurchaseStatus.PENDING or not purchase.stripe_checkout_session_id:
        return Cancellation.NOTHING_TO_CANCEL
    session = gateway().retrieve_checkout_session(purchase.stripe_checkout_session_id)
    if session["status"] == "open":
        session = gateway().expire_checkout_session(purchase.stripe_checkout_session_id)
    if session["status"] == "expired":
        mark_unpaid(purchase.id, PurchaseStatus.EXPIRED, tell_customer=False)
        return Cancellation.CANCELED
    # Completed meanwhile (another tab): credit it if paid; a delayed payment still
    # processing will be credited or failed when the bank answers.
    fulfil_checkout(purchase.stripe_checkout_session_id)
    if session.get("payment_status") == "paid":
        return Cancellation.PAID
    return Cancellation.PROCESSING
