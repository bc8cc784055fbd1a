"""Refunds Stripe reports, the portal's and those made in Stripe's dashboard: each is
looked up at Stripe, and the charge's refunded amount is re-read."""

from sqlalchemy import select

from portal import audit
from portal.billing.gateway import gateway, purchase_id_of
from portal.billing.models import (
    Purchase,
    Refund,
    RefundStatus,
)
from portal.billing.money_back.sending import apply_refund_status
from portal.billing.money_back.state import lock_purchase, lock_refund, settle
from portal.db import db, locked, parse_id, transactional
from portal.timeutil import utcnow

# -- refunds reported by Stripe (also those made in Stripe's dashboard) ------------------


def purchase_for_payment(payment_intent: str | None) -> Purchase | None:
    """The purchase a PaymentIntent paid for, locked; None if it is none of ours."""
    if not isinstance(payment_intent, str) or not payment_intent:
        return None
    found = db.session.scalar(
        select(Purchase.id).where(Purchase.stripe_payment_intent_id == payment_intent)
    )
    if found is None:
        found = _unrecorded_purchase_of(payment_intent)
    return lock_purchase(found) if found is not None else None


def _unrecorded_purchase_of(payment_intent: str) -> int | None:
    """News about a payment before its fulfilment recorded it: the intent's metadata names
    the purchase, and that purchase's Checkout Session must confirm it was paid with this
    very intent (Stripe is asked before any lock is taken)."""
    named = purchase_id_of(gateway().retrieve_payment_intent(payment_intent))
    session_id = (
        db.session.scalar(select(Purchase.stripe_checkout_session_id).where(Purchase.id == named))
        if named is not None
        else None
    )
    if session_id is None:
        return None
    paid_with = gateway().retrieve_checkout_session(session_id).get("payment_intent")
    if isinstance(paid_with, dict):
        paid_with = paid_with.get("id")
    return named if paid_with == payment_intent else None


@transactional
def sync_refunds(payment_intent: str | None) -> Purchase | None:
    """Bring a purchase's refunded amount in line with Stripe's charge, as it is now.

    Refunds issued outside the portal (Stripe's dashboard) remove the matching share of
    the purchase's unused credits.
    """
    if not isinstance(payment_intent, str) or not payment_intent:
        return None
    intent = gateway().retrieve_payment_intent(payment_intent)
    charge = intent.get("latest_charge")
    if not isinstance(charge, dict):
        return None
    purchase = purchase_for_payment(payment_intent)
    if purchase is None:
        return None
    before = purchase.refunded_cents
    purchase.stripe_payment_intent_id = purchase.stripe_payment_intent_id or payment_intent
    purchase.refunded_cents = min(int(charge.get("amount_refunded") or 0), purchase.amount_cents)
    settle(purchase, refunded_is_fresh=True)
    if before != purchase.refunded_cents:
        audit.record(
            "purchase.refund_synced",
            "purchase",
            purchase.id,
            before={"refunded_cents": before},
            after={"refunded_cents": purchase.refunded_cents},
        )
    return purchase


def refund_changed(stripe_refund_id: str) -> Refund | None:
    """A refund event: ask Stripe how the refund stands, record it, then re-read the
    charge so that amounts and credits agree."""
    refund = gateway().retrieve_refund(stripe_refund_id)
    # The charge first, while our row still says what it said: a refund that failed has
    # left the charge's refunded amount and our row at once, never one without the other.
    sync_refunds(refund.get("payment_intent"))
    return _record_refund(refund)


def _record_refund(refund: dict) -> Refund | None:
    """Keep our copy of a Stripe refund (including dashboard ones) in step with Stripe.

    The portal's own refunds then settle through the transitions that also move credits.
    """
    row, ours = _store_refund(refund)
    if row is not None and ours:
        return apply_refund_status(row.id, refund.get("status"), refund.get("failure_reason"))
    return row


@transactional
def _store_refund(refund: dict) -> tuple[Refund | None, bool]:
    """Our row for a Stripe refund, found or made; and whether it is one of the portal's
    own (a refund of a request) whose status the caller still has to apply."""
    stripe_id = refund.get("id")
    intent = refund.get("payment_intent")
    if not isinstance(stripe_id, str) or not isinstance(intent, str) or not intent:
        return None, False
    purchase = purchase_for_payment(intent)
    if purchase is None:
        return None, False
    metadata = refund.get("metadata") or {}
    ours, attempt = metadata.get("refund_id"), metadata.get("attempt")
    row = locked(Refund, Refund.stripe_refund_id == stripe_id)
    refund_id = parse_id(ours) if isinstance(ours, str) else None
    if row is None and refund_id is not None:
        candidate = lock_refund(refund_id)
        # Only news of the current attempt counts: a late event about an earlier,
        # failed attempt must not undo the retry.
        if (
            candidate is not None
            and candidate.purchase_id == purchase.id
            and attempt == str(candidate.attempt)
            and (candidate.stripe_refund_id in (None, stripe_id))
        ):
            row = candidate
        elif candidate is not None:
            return candidate, False
    if row is None:
        row = Refund(
            purchase_id=purchase.id,
            amount_cents=int(refund.get("amount") or 0),
            currency=refund.get("currency") or purchase.currency,
            reason=refund.get("reason") or "requested_by_customer",
            status=RefundStatus.PENDING,
            idempotency_key=f"stripe:{stripe_id}",
        )
        db.session.add(row)
    row.stripe_refund_id = stripe_id
    if row.refund_request_id is not None:
        return row, True
    # A refund made in Stripe's dashboard is Stripe's own record: its status is copied.
    status = refund.get("status")
    if status in {member.value for member in RefundStatus}:
        row.status = RefundStatus(status)
    row.failure_reason = refund.get("failure_reason") or row.failure_reason
    row.updated_at = utcnow()
    return row, False
