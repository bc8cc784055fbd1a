"""Buying credits: Checkout, exactly-once fulfilment, payments that did not happen, and
reconciliation with Stripe. Money going back (refunds, disputes) is `money_back`'s.

Stripe is never called while a database lock is held: each operation first asks Stripe
what is true (a webhook is only a hint), then locks the purchase row, checks its state,
and acts, in one transaction.
"""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlalchemy import select

from portal import audit, policy
from portal.accounts.models import User
from portal.billing import money_back
from portal.billing.gateway import gateway
from portal.billing.models import Purchase, PurchaseStatus
from portal.billing.money_back import lock_purchase
from portal.errors import AccountTerminated, NotFound, PaymentProviderError, ValidationError
from portal.extensions import db
from portal.ledger import services as ledger
from portal.money import format_cents
from portal.notifications.services import notify_staff, queue_email
from portal.ops.metrics import FULFILMENTS
from portal.timeutil import utcnow

log = logging.getLogger(__name__)

# A second click on Buy within this time reuses the pending purchase (and, through the
# idempotency key, the same Checkout Session) instead of starting another.
PENDING_REUSE_WINDOW = timedelta(minutes=30)

# Statuses from which a paid session may still be credited.
CREDITABLE = {
    PurchaseStatus.PENDING,
    PurchaseStatus.FAILED,
    PurchaseStatus.EXPIRED,
    PurchaseStatus.PAID,
}


class Fulfilment(StrEnum):
    CREDITED = "credited"
    ALREADY_CREDITED = "already_credited"
    PROCESSING = "processing"
    NOT_PAID = "not_paid"
    AMOUNT_MISMATCH = "amount_mismatch"
    REFUSED = "refused"
    UNKNOWN = "unknown"


def _checkout_key(purchase: Purchase) -> str:
    # The creation time keeps keys unique even if purchase ids restart (a reset test
    # database against the same Stripe account): Stripe refuses a reused key.
    return f"purchase-{purchase.id}-{purchase.created_at:%Y%m%dT%H%M%S%f}-checkout"


def _credit_key(purchase: Purchase) -> str:
    return f"purchase:{purchase.id}:credit"


def _purchase_id_of(stripe_object: dict) -> int | None:
    """Read our purchase id from a session's reference or any object's metadata."""
    metadata = stripe_object.get("metadata") or {}
    for candidate in (stripe_object.get("client_reference_id"), metadata.get("purchase_id")):
        if isinstance(candidate, str) and candidate.isdigit():
            return int(candidate)
    return None


# -- starting a purchase --------------------------------------------------------------


def start_checkout(user: User, package_code: str, success_url: str, cancel_url: str) -> str:
    """Record a pending purchase and open a Checkout Session for it; return its URL.

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
    purchase = db.session.scalar(
        select(Purchase)
        .where(
            Purchase.user_id == user.id,
            Purchase.package_code == package.code,
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
        )
        db.session.add(purchase)
        db.session.commit()
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
        "metadata": references,
        "payment_intent_data": {"metadata": references},
        "success_url": success_url,
        "cancel_url": cancel_url,
    }
    if user.stripe_customer_id:
        params["customer"] = user.stripe_customer_id
    else:
        params["customer_email"] = user.email
    session = gateway().create_checkout_session(params, _checkout_key(purchase))
    purchase.stripe_checkout_session_id = session.id
    db.session.commit()
    return session.url


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
        _mark_unpaid(purchase.id, PurchaseStatus.EXPIRED, tell_customer=False)
        return Cancellation.CANCELED
    # Completed meanwhile (another tab): credit it if paid; a delayed payment still
    # processing will be credited or failed when the bank answers.
    fulfil_checkout(purchase.stripe_checkout_session_id)
    if session.get("payment_status") == "paid":
        return Cancellation.PAID
    return Cancellation.PROCESSING


# -- fulfilment -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Payment:
    payment_intent: str | None
    charge_id: str | None
    receipt_url: str | None


def _payment_details(session: dict) -> _Payment:
    intent = session.get("payment_intent")
    if not intent:
        return _Payment(None, None, None)
    if not isinstance(intent, dict):
        # Not expanded along with the session (see the gateway): one more call.
        intent = gateway().retrieve_payment_intent(intent)
    intent_id = intent.get("id")
    charge = intent.get("latest_charge")
    if isinstance(charge, dict):
        return _Payment(intent_id, charge.get("id"), charge.get("receipt_url"))
    return _Payment(intent_id, charge, None)


def fulfil_checkout(session_id: str) -> Fulfilment:
    """Credit the purchase behind a paid Checkout Session, exactly once (see `_fulfil`)."""
    outcome = _fulfil(session_id)
    FULFILMENTS.labels(outcome.value).inc()
    return outcome


def _fulfil(session_id: str) -> Fulfilment:
    """Credit the purchase behind a paid Checkout Session, exactly once.

    Safe to call any number of times, from the webhook, the success page and the
    reconciliation alike: the purchase row lock serialises concurrent calls, and the
    unique lot per purchase and ledger key make a second crediting impossible.

    :raises PaymentProviderError: Stripe could not be asked.
    """
    session = gateway().retrieve_checkout_session(session_id)
    purchase_id = _purchase_id_of(session)
    if purchase_id is None:
        log.warning("checkout session %s names no purchase", session_id)
        return Fulfilment.UNKNOWN
    paid = session.get("status") == "complete" and session.get("payment_status") == "paid"
    payment = _payment_details(session) if paid else _Payment(None, None, None)

    purchase = lock_purchase(purchase_id)
    if purchase is None or purchase.stripe_checkout_session_id not in (None, session_id):
        db.session.rollback()
        log.warning("checkout session %s does not belong to purchase %s", session_id, purchase_id)
        return Fulfilment.UNKNOWN
    purchase.stripe_checkout_session_id = session_id
    if purchase.credited_at is not None:
        db.session.rollback()
        return Fulfilment.ALREADY_CREDITED
    if not paid:
        db.session.commit()
        return Fulfilment.PROCESSING if session.get("status") == "complete" else Fulfilment.NOT_PAID
    _record_payment(purchase, payment)
    if session.get("amount_total") != purchase.amount_cents or (
        (session.get("currency") or "").lower() != purchase.currency
    ):
        return _hold_mismatch(purchase, session)
    if purchase.status not in CREDITABLE or purchase.refunded_cents >= purchase.amount_cents:
        # Refunded or disputed before we ever credited it: those credits must not exist.
        if purchase.refunded_cents >= purchase.amount_cents:
            purchase.status = PurchaseStatus.REFUNDED
        db.session.commit()
        return Fulfilment.REFUSED
    now = utcnow()
    purchase.status = (
        PurchaseStatus.PARTIALLY_REFUNDED if purchase.refunded_cents else PurchaseStatus.CREDITED
    )
    purchase.credited_at = now
    ledger.credit_purchase(purchase, _credit_key(purchase))
    if purchase.refunded_cents:
        # Refunded through Stripe before its credits were added: that share goes again.
        money_back.settle_after_crediting(purchase)
    audit.record("purchase.credited", "purchase", purchase.id, after={"credits": purchase.credits})
    queue_email(
        _customer_email(purchase),
        f"{purchase.credits:,} credits added to your account",
        f"Thank you for your purchase. {purchase.credits:,} credits "
        f"({format_cents(purchase.amount_cents, purchase.currency)}) are now in your balance.",
    )
    db.session.commit()
    return Fulfilment.CREDITED


def _record_payment(purchase: Purchase, payment: _Payment) -> None:
    purchase.paid_at = purchase.paid_at or utcnow()
    purchase.stripe_payment_intent_id = payment.payment_intent or purchase.stripe_payment_intent_id
    purchase.stripe_charge_id = payment.charge_id or purchase.stripe_charge_id
    purchase.receipt_url = payment.receipt_url or purchase.receipt_url


def _hold_mismatch(purchase: Purchase, session: dict) -> Fulfilment:
    """Keep a payment whose amount does not match its package away from the balance."""
    if purchase.status == PurchaseStatus.PAID:
        # Already held and reported when fulfilment first saw it.
        db.session.commit()
        return Fulfilment.AMOUNT_MISMATCH
    purchase.status = PurchaseStatus.PAID
    paid = format_cents(session.get("amount_total") or 0, session.get("currency") or "usd")
    expected = format_cents(purchase.amount_cents, purchase.currency)
    audit.record(
        "purchase.amount_mismatch",
        "purchase",
        purchase.id,
        before={"expected_cents": purchase.amount_cents, "currency": purchase.currency},
        after={"paid_cents": session.get("amount_total"), "currency": session.get("currency")},
    )
    notify_staff(
        f"Payment anomaly on purchase {purchase.id}",
        f"Checkout session {session.get('id')} was paid {paid}, but purchase {purchase.id} "
        f"({purchase.package_code}) expected {expected}. No credits were added; please review.",
    )
    db.session.commit()
    return Fulfilment.AMOUNT_MISMATCH


def _customer_email(purchase: Purchase) -> str:
    return db.session.scalar(select(User.email).where(User.id == purchase.user_id))


# -- payments that did not happen -----------------------------------------------------


def _mark_unpaid(purchase_id: int, status: PurchaseStatus, tell_customer: bool) -> bool:
    purchase = lock_purchase(purchase_id)
    if purchase is None or purchase.status not in (PurchaseStatus.PENDING, PurchaseStatus.FAILED):
        db.session.rollback()
        return False
    purchase.status = status
    if tell_customer:
        what = "could not be completed" if status == PurchaseStatus.FAILED else "expired"
        queue_email(
            _customer_email(purchase),
            f"Your {purchase.package_code.capitalize()} purchase {what}",
            f"Your payment of {format_cents(purchase.amount_cents, purchase.currency)} {what}, "
            "so no credits were added and nothing was charged. You can buy again at any time.",
        )
    db.session.commit()
    return True


def checkout_failed(session_id: str) -> bool:
    """Mark a purchase failed when its delayed payment did not go through."""
    session = gateway().retrieve_checkout_session(session_id)
    purchase_id = _purchase_id_of(session)
    if purchase_id is None or session.get("payment_status") == "paid":
        return False
    return _mark_unpaid(purchase_id, PurchaseStatus.FAILED, tell_customer=True)


def checkout_expired(session_id: str) -> bool:
    """Mark a purchase expired, if Stripe confirms its session really is."""
    session = gateway().retrieve_checkout_session(session_id)
    purchase_id = _purchase_id_of(session)
    if purchase_id is None or session.get("status") != "expired":
        return False
    return _mark_unpaid(purchase_id, PurchaseStatus.EXPIRED, tell_customer=True)


def payment_attempt_failed(payment_intent: dict) -> bool:
    """Mark a pending purchase failed after a declined card (the customer may retry)."""
    purchase_id = _purchase_id_of(payment_intent)
    if purchase_id is None:
        return False
    return _mark_unpaid(purchase_id, PurchaseStatus.FAILED, tell_customer=False)


# -- reconciliation ---------------------------------------------------------------------


@dataclass(frozen=True)
class ReconcileResult:
    session_id: str
    purchase_id: int | None
    outcome: Fulfilment


def reconcile(since: datetime) -> list[ReconcileResult]:
    """Run fulfilment on every completed Checkout Session since `since`; return them all.

    This is how a payment whose webhook was lost still gets its credits.
    """
    results = []
    for session in gateway().completed_checkout_sessions(int(since.astimezone(UTC).timestamp())):
        outcome = fulfil_checkout(session["id"])
        results.append(ReconcileResult(session["id"], _purchase_id_of(session), outcome))
    return results


@dataclass(frozen=True)
class MoneyBackCheck:
    refunds: int
    disputes: int
    unanswered: int


def reconcile_money_back(now: datetime, since: datetime) -> MoneyBackCheck:
    """Ask Stripe again about every refund still pending a while after it was sent, every
    dispute still open and every dispute opened since `since`, and settle them as Stripe
    says they stand: how a refund or a dispute whose webhooks were lost still ends.

    One object Stripe cannot answer for is logged and skipped, not allowed to stop the
    others; listing the disputes needs Stripe, and its failure ends the run.
    """
    refunds = money_back.refunds_to_recheck(now)
    disputes = set(money_back.open_disputes())
    disputes.update(
        dispute["id"]
        for dispute in gateway().disputes_since(int(since.astimezone(UTC).timestamp()))
    )
    steps = [(money_back.refund_changed, refund_id) for refund_id in refunds]
    steps += [(dispute_changed, dispute_id) for dispute_id in sorted(disputes)]
    unanswered = 0
    for step, stripe_id in steps:
        try:
            step(stripe_id)
        except PaymentProviderError as error:
            db.session.rollback()
            unanswered += 1
            log.warning("reconciliation could not settle %s: %s", stripe_id, error)
    return MoneyBackCheck(len(refunds), len(disputes), unanswered)


# -- disputes ---------------------------------------------------------------------------


def dispute_changed(stripe_dispute_id: str) -> Purchase | None:
    """Apply a dispute as Stripe says it stands (see `money_back.dispute_changed`); a
    payment disputed before its credits were added and then won is credited now."""
    purchase = money_back.dispute_changed(stripe_dispute_id)
    if (
        purchase is not None
        and purchase.status == PurchaseStatus.PAID
        and purchase.credited_at is None
        and purchase.stripe_checkout_session_id
    ):
        fulfil_checkout(purchase.stripe_checkout_session_id)
    return purchase
