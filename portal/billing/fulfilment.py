"""Crediting a paid purchase exactly once, and marking the payments that did not happen.

Stripe is never called while a database lock is held: each operation first asks Stripe
what is true (a webhook is only a hint), then locks the purchase row, checks its state,
and acts, in one transaction.
"""

import logging
from dataclasses import dataclass, replace
from enum import StrEnum

from portal import audit
from portal.billing.gateway import gateway, purchase_id_of
from portal.billing.models import Purchase, PurchaseOrigin, PurchaseStatus
from portal.billing.money_back import disputes, state
from portal.billing.money_back.state import lock_purchase
from portal.db import transactional
from portal.ledger import services as ledger
from portal.money import format_cents
from portal.notifications.services import notify_staff, queue_email
from portal.ops.counters import FULFILMENTS
from portal.timeutil import utcnow

log = logging.getLogger(__name__)

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


# -- fulfilment -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Payment:
    payment_intent: str | None
    charge_id: str | None
    receipt_url: str | None = None
    # The charge's payment method: its type ("card"), and that type's details.
    method_type: str | None = None
    method: dict | None = None
    # The invoice Checkout made for the payment, when it made one.
    invoice: dict | None = None


def _payment_details(session: dict) -> _Payment:
    payment = _payment_of_intent(session.get("payment_intent"))
    invoice = session.get("invoice")
    if isinstance(invoice, dict):
        return replace(payment, invoice=invoice)
    return payment


def _payment_of_intent(intent) -> _Payment:
    if not intent:
        return _Payment(None, None)
    if not isinstance(intent, dict):
        # Not expanded along with the session (see the gateway): one more call.
        intent = gateway().retrieve_payment_intent(intent)
    intent_id = intent.get("id")
    charge = intent.get("latest_charge")
    if not isinstance(charge, dict):
        return _Payment(intent_id, charge)
    details = charge.get("payment_method_details") or {}
    method_type = details.get("type")
    return _Payment(
        intent_id,
        charge.get("id"),
        charge.get("receipt_url"),
        method_type,
        details.get(method_type) if method_type else None,
    )


def fulfil_checkout(session_id: str) -> Fulfilment:
    """Credit the purchase behind a paid Checkout Session, exactly once (see `_fulfil`)."""
    outcome = _fulfil(session_id)
    FULFILMENTS.labels(outcome.value).inc()
    return outcome


@transactional
def _fulfil(session_id: str) -> Fulfilment:
    """Credit the purchase behind a paid Checkout Session, exactly once.

    Safe to call any number of times, from the webhook, the success page and the
    reconciliation alike: the purchase row lock serialises concurrent calls, and the
    unique lot per purchase and ledger key make a second crediting impossible.

    :raises PaymentProviderError: Stripe could not be asked; `NoSuchObject` when Stripe
        has no such session (nothing is credited, and asking again will not change it).
    """
    session = gateway().retrieve_checkout_session(session_id)
    purchase_id = purchase_id_of(session)
    if purchase_id is None:
        log.warning("checkout session %s names no purchase", session_id)
        return Fulfilment.UNKNOWN
    paid = session.get("status") == "complete" and session.get("payment_status") == "paid"
    payment = _payment_details(session) if paid else _Payment(None, None, None)

    purchase = lock_purchase(purchase_id)
    if purchase is None or purchase.stripe_checkout_session_id not in (None, session_id):
        log.warning("checkout session %s does not belong to purchase %s", session_id, purchase_id)
        return Fulfilment.UNKNOWN
    purchase.stripe_checkout_session_id = session_id
    if purchase.credited_at is not None:
        return Fulfilment.ALREADY_CREDITED
    if not paid:
        return Fulfilment.PROCESSING if session.get("status") == "complete" else Fulfilment.NOT_PAID
    return _credit_paid(
        purchase,
        payment,
        session.get("amount_total"),
        session.get("currency"),
        f"Checkout session {session_id}",
    )


def fulfil_purchase(purchase: Purchase) -> Fulfilment | None:
    """Credit a purchase, exactly once, through what it was paid with: its Checkout
    Session, or a recharge's PaymentIntent. None while it has neither yet."""
    if purchase.stripe_checkout_session_id:
        return fulfil_checkout(purchase.stripe_checkout_session_id)
    if purchase.is_recharge and purchase.stripe_payment_intent_id:
        return fulfil_payment_intent(purchase.stripe_payment_intent_id)
    return None


def fulfil_payment_intent(intent_id: str) -> Fulfilment:
    """Credit the auto-recharge behind a succeeded PaymentIntent, exactly once (see
    `_fulfil_intent`)."""
    outcome = _fulfil_intent(intent_id)
    FULFILMENTS.labels(outcome.value).inc()
    return outcome


@transactional
def _fulfil_intent(intent_id: str) -> Fulfilment:
    """Credit the auto-recharge behind a succeeded PaymentIntent, exactly once.

    A recharge has no Checkout Session: its PaymentIntent is what was paid. Only
    recharges are credited this way; a Checkout purchase's PaymentIntent is followed
    through its session (`_fulfil`), so each purchase has one way in. Otherwise as
    `_fulfil`: Stripe is asked first, then the purchase row is locked, and the ledger key
    makes a second crediting impossible.

    :raises PaymentProviderError: Stripe could not be asked; `NoSuchObject` when Stripe
        has no such PaymentIntent.
    """
    intent = gateway().retrieve_payment_intent(intent_id)
    purchase_id = purchase_id_of(intent)
    if purchase_id is None:
        log.warning("payment intent %s names no purchase", intent_id)
        return Fulfilment.UNKNOWN
    paid = intent.get("status") == "succeeded"
    payment = _payment_of_intent(intent) if paid else _Payment(None, None)

    purchase = lock_purchase(purchase_id)
    if (
        purchase is None
        or purchase.origin != PurchaseOrigin.AUTO_RECHARGE
        or purchase.stripe_payment_intent_id not in (None, intent_id)
    ):
        log.warning("payment intent %s is not purchase %s's recharge", intent_id, purchase_id)
        return Fulfilment.UNKNOWN
    purchase.stripe_payment_intent_id = intent_id
    if purchase.credited_at is not None:
        return Fulfilment.ALREADY_CREDITED
    if not paid:
        processing = intent.get("status") == "processing"
        return Fulfilment.PROCESSING if processing else Fulfilment.NOT_PAID
    purchase.needs_customer_since = None
    return _credit_paid(
        purchase,
        payment,
        intent.get("amount_received"),
        intent.get("currency"),
        f"PaymentIntent {intent_id}",
    )


def _credit_paid(
    purchase: Purchase,
    payment: _Payment,
    paid_cents: int | None,
    currency: str | None,
    paid_through: str,
) -> Fulfilment:
    """Record a locked purchase's payment and add its credits, unless the amount is not
    the package's or the money already went back."""
    _record_payment(purchase, payment)
    if paid_cents != purchase.amount_cents or (currency or "").lower() != purchase.currency:
        return _hold_mismatch(purchase, paid_cents, currency, paid_through)
    if purchase.status not in CREDITABLE or purchase.refunded_cents >= purchase.amount_cents:
        # Refunded or disputed before we ever credited it: those credits must not exist.
        if purchase.refunded_cents >= purchase.amount_cents:
            purchase.status = PurchaseStatus.REFUNDED
        return Fulfilment.REFUSED
    now = utcnow()
    purchase.status = (
        PurchaseStatus.PARTIALLY_REFUNDED if purchase.refunded_cents else PurchaseStatus.CREDITED
    )
    purchase.credited_at = now
    ledger.credit_purchase(purchase, purchase.credit_key, memo=purchase.history_memo)
    if purchase.refunded_cents:
        # Refunded through Stripe before its credits were added: that share goes again.
        state.settle(purchase, refunded_is_fresh=True)
    audit.record("purchase.credited", "purchase", purchase.id, after={"credits": purchase.credits})
    queue_email(purchase.user.email, *_credited_email(purchase))
    return Fulfilment.CREDITED


def _credited_email(purchase: Purchase) -> tuple[str, str]:
    """The subject and text telling the customer their credits are in."""
    paid = format_cents(purchase.amount_cents, purchase.currency)
    if purchase.origin == PurchaseOrigin.AUTO_RECHARGE:
        card = purchase.payment_method_words or "your saved card"
        return (
            f"Auto-recharge added {purchase.credits:,} credits",
            f"Your balance fell below the amount you chose for auto-recharge, so we charged "
            f"{paid} to {card} for the {purchase.package_code.capitalize()} package. "
            f"{purchase.credits:,} credits are now in your balance. The receipt is under "
            "Purchases in the portal, with the invoice once Stripe has made it.",
        )
    return (
        f"{purchase.credits:,} credits added to your account",
        f"Thank you for your purchase. {purchase.credits:,} credits ({paid}) are now in "
        "your balance.",
    )


def _record_payment(purchase: Purchase, payment: _Payment) -> None:
    purchase.paid_at = purchase.paid_at or utcnow()
    purchase.stripe_payment_intent_id = payment.payment_intent or purchase.stripe_payment_intent_id
    purchase.stripe_charge_id = payment.charge_id or purchase.stripe_charge_id
    purchase.receipt_url = payment.receipt_url or purchase.receipt_url
    if payment.method:
        # A card names its brand; other methods (a bank account) are named by their type.
        purchase.payment_method_brand = payment.method.get("brand") or payment.method_type
        purchase.payment_method_last4 = payment.method.get("last4")
        purchase.payment_method_fingerprint = payment.method.get("fingerprint")
    if payment.invoice:
        purchase.stripe_invoice_id = payment.invoice.get("id")
        purchase.invoice_number = payment.invoice.get("number")
        purchase.invoice_url = payment.invoice.get("hosted_invoice_url")
        purchase.invoice_pdf_url = payment.invoice.get("invoice_pdf")


def _hold_mismatch(
    purchase: Purchase, paid_cents: int | None, currency: str | None, paid_through: str
) -> Fulfilment:
    """Keep a payment whose amount does not match its package away from the balance."""
    if purchase.status == PurchaseStatus.PAID:
        # Already held and reported when fulfilment first saw it.
        return Fulfilment.AMOUNT_MISMATCH
    purchase.status = PurchaseStatus.PAID
    paid = format_cents(paid_cents or 0, currency or "usd")
    expected = format_cents(purchase.amount_cents, purchase.currency)
    audit.record(
        "purchase.amount_mismatch",
        "purchase",
        purchase.id,
        before={"expected_cents": purchase.amount_cents, "currency": purchase.currency},
        after={"paid_cents": paid_cents, "currency": currency},
    )
    notify_staff(
        f"Payment anomaly on purchase {purchase.id}",
        f"{paid_through} was paid {paid}, but purchase {purchase.id} "
        f"({purchase.package_code}) expected {expected}. No credits were added; please review.",
    )
    return Fulfilment.AMOUNT_MISMATCH


# -- payments that did not happen -----------------------------------------------------


@transactional
def mark_unpaid(purchase_id: int, status: PurchaseStatus, tell_customer: bool) -> bool:
    purchase = lock_purchase(purchase_id)
    if purchase is None or purchase.status not in (PurchaseStatus.PENDING, PurchaseStatus.FAILED):
        return False
    purchase.status = status
    if tell_customer:
        what = "could not be completed" if status == PurchaseStatus.FAILED else "expired"
        queue_email(
            purchase.user.email,
            f"Your {purchase.package_code.capitalize()} purchase {what}",
            f"Your payment of {format_cents(purchase.amount_cents, purchase.currency)} {what}, "
            "so no credits were added and nothing was charged. You can buy again at any time.",
        )
    return True


def checkout_failed(session_id: str) -> bool:
    """Mark a purchase failed when its delayed payment did not go through."""
    session = gateway().retrieve_checkout_session(session_id)
    purchase_id = purchase_id_of(session)
    if purchase_id is None or session.get("payment_status") == "paid":
        return False
    return mark_unpaid(purchase_id, PurchaseStatus.FAILED, tell_customer=True)


def checkout_expired(session_id: str) -> bool:
    """Mark a purchase expired, if Stripe confirms its session really is."""
    session = gateway().retrieve_checkout_session(session_id)
    purchase_id = purchase_id_of(session)
    if purchase_id is None or session.get("status") != "expired":
        return False
    return mark_unpaid(purchase_id, PurchaseStatus.EXPIRED, tell_customer=True)


def payment_attempt_failed(payment_intent: dict) -> bool:
    """Mark a pending purchase failed after a declined card (the customer may retry)."""
    purchase_id = purchase_id_of(payment_intent)
    if purchase_id is None:
        return False
    return mark_unpaid(purchase_id, PurchaseStatus.FAILED, tell_customer=False)


# -- disputes ---------------------------------------------------------------------------


def dispute_changed(stripe_dispute_id: str) -> Purchase | None:
    """Apply a dispute as Stripe says it stands (see `disputes.dispute_changed`); a
    payment disputed before its credits were added and then won is credited now."""
    purchase = disputes.dispute_changed(stripe_dispute_id)
    if (
        purchase is not None
        and purchase.status == PurchaseStatus.PAID
        and purchase.credited_at is None
    ):
        fulfil_purchase(purchase)
    return purchase
