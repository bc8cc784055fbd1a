"""Staff decide: schedule a refund (its credits leave at once), undo it inside the
window, try a failed one again. The caller (staff services) holds the locks and commits."""

from datetime import datetime

from sqlalchemy.exc import IntegrityError

from portal.billing.models import (
    Purchase,
    Refund,
    RefundStatus,
)
from portal.billing.money_back.state import (
    UNDO_WINDOW,
    lock_purchase_and_refund,
    money_state,
    move,
    release,
    settle,
    share_of_credits,
)
from portal.db import db
from portal.errors import Conflict, NotFound, ValidationError
from portal.ledger import services as ledger
from portal.money import format_cents
from portal.refunds.models import RefundRequest

# -- the portal's own refunds: staff decide ----------------------------------------------


def refundable_cents(purchase: Purchase) -> int:
    """How much of the purchase's payment may still be refunded.

    :raises Conflict: the payment is disputed (the bank decides where the money goes).
    """
    state = money_state(purchase)
    if not state.with_us:
        raise Conflict(
            "The payment is disputed with the customer's bank, so no refund can be sent; "
            "the bank's decision settles it."
        )
    return state.refundable_cents


def schedule_refund(
    purchase: Purchase,
    request: RefundRequest,
    amount_cents: int,
    reason: str,
    actor_id: int,
    memo: str,
    now: datetime,
) -> tuple[Refund, int]:
    """Approve money back: remove the purchase's unused share of credits now and schedule
    the refund for the end of the undo window. The caller holds the purchase's lock
    (`lock_purchase`) and the request's, and commits. Returns the refund and the credits
    removed.

    :raises Conflict: the payment is disputed (the bank decides where the money goes).
    :raises ValidationError: the amount is not positive or more than is left to refund.
    """
    left = refundable_cents(purchase)
    if not 0 < amount_cents <= left:
        raise ValidationError(f"Refund between $0.01 and {format_cents(left)}.", field="amount")
    credits = min(ledger.unused_credits(purchase), share_of_credits(purchase, amount_cents))
    refund = Refund(
        purchase_id=purchase.id,
        refund_request_id=request.id,
        amount_cents=amount_cents,
        currency=purchase.currency,
        reason=reason,
        status=RefundStatus.SCHEDULED,
        scheduled_for=now + UNDO_WINDOW,
        idempotency_key=f"approval-{request.id}-{now:%Y%m%dT%H%M%S%f}",
        created_by_id=actor_id,
        created_at=now,
    )
    db.session.add(refund)
    purchase.committed_refund_cents += amount_cents
    try:
        db.session.flush()
    except IntegrityError:
        raise ValidationError("That is more than is left to refund.", field="amount") from None
    refund.idempotency_key = refund.attempt_key
    if credits:
        ledger.claw_back(
            purchase, credits, refund.claw_back_key, refund_id=refund.id, memo=memo, at=now
        )
    return refund, credits


def undo(refund_id: int, now: datetime) -> Refund:
    """Cancel a scheduled refund inside its undo window; its credits come back. The
    caller reopens the request and commits.

    :raises NotFound: no such refund of a request.
    :raises Conflict: the refund was already sent or the window has passed.
    """
    purchase, refund = lock_purchase_and_refund(refund_id)
    if refund is None or refund.refund_request_id is None:
        raise NotFound("no such refund")
    if refund.status != RefundStatus.SCHEDULED or refund.scheduled_for <= now:
        raise Conflict("This refund has already been sent; it can no longer be undone.")
    release(purchase, refund, RefundStatus.CANCELED, "approval undone", suffix="undo")
    settle(purchase)
    return refund


def retry(refund_id: int, memo: str, now: datetime) -> Refund:
    """Try a failed refund again as a new attempt (Stripe's refusal is final for the old
    key), sent at once. The caller moves the request and commits.

    :raises NotFound: no such refund of a request.
    :raises Conflict: the refund has not failed, or the payment is now disputed.
    :raises ValidationError: the amount no longer fits what is left to refund.
    """
    purchase, refund = lock_purchase_and_refund(refund_id)
    if refund is None or refund.refund_request_id is None:
        raise NotFound("no such refund")
    if refund.status != RefundStatus.FAILED:
        raise Conflict("Only a failed refund can be tried again.")
    if not money_state(purchase).with_us:
        raise Conflict(
            "The payment is disputed with the customer's bank; the bank's decision settles it."
        )
    move(refund, RefundStatus.SCHEDULED)
    refund.attempt += 1
    refund.stripe_refund_id = None
    refund.scheduled_for = now
    refund.failure_reason = None
    refund.idempotency_key = refund.attempt_key
    purchase.committed_refund_cents += refund.amount_cents
    try:
        db.session.flush()
    except IntegrityError:
        raise ValidationError("That is more than is left to refund.", field="amount") from None
    credits = min(ledger.unused_credits(purchase), share_of_credits(purchase, refund.amount_cents))
    if credits:
        ledger.claw_back(purchase, credits, refund.claw_back_key, refund_id=refund.id, memo=memo)
    return refund
