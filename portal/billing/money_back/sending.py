"""The worker sends due refunds; Stripe answers; a refund succeeds, fails or is canceled."""

import logging
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import exists, select

from portal import audit, policy
from portal.billing.gateway import gateway
from portal.billing.models import (
    OPEN_DISPUTE_STATUSES,
    Dispute,
    Purchase,
    Refund,
    RefundStatus,
)
from portal.billing.money_back.state import (
    REFUND_TRANSITIONS,
    lock_purchase_and_refund,
    money_state,
    move,
    release,
    settle,
)
from portal.db import db, locked, transactional
from portal.errors import PaymentProviderError
from portal.money import format_cents
from portal.notifications.services import notify_staff, queue_email
from portal.ops.counters import REFUNDS
from portal.refunds.models import OPEN_STATUSES as OPEN_REQUEST_STATUSES
from portal.refunds.models import RefundRequest, RequestStatus, add_event, email_customer

log = logging.getLogger(__name__)


# -- the portal's own refunds: the worker sends, Stripe answers --------------------------


def _unfinished_after() -> timedelta:
    """A send still without Stripe's answer after this long was cut off: send it again."""
    return timedelta(seconds=current_app.config["REFUND_RESEND_AFTER_SECONDS"])


def _open_dispute_on(purchase_id):
    return exists().where(
        Dispute.purchase_id == purchase_id, Dispute.status.in_(OPEN_DISPUTE_STATUSES)
    )


def due_refund_ids(now: datetime, limit: int = 50) -> list[int]:
    """Refunds to send now: scheduled ones past their undo window, and sends left
    unfinished; none of a payment under an open dispute (the bank decides first)."""
    unfinished = (Refund.status == RefundStatus.PENDING) & Refund.stripe_refund_id.is_(None)
    return list(
        db.session.scalars(
            select(Refund.id)
            .where(
                ((Refund.status == RefundStatus.SCHEDULED) & (Refund.scheduled_for <= now))
                | (unfinished & (Refund.sent_at <= now - _unfinished_after())),
                ~_open_dispute_on(Refund.purchase_id),
            )
            .order_by(Refund.id)
            .limit(limit)
        )
    )


def send_due_refunds(now: datetime) -> int:
    """Send every refund that is due; return how many were sent or settled."""
    sent = 0
    for refund_id in due_refund_ids(now):
        if send_refund(refund_id, now) is not None:
            sent += 1
    return sent


def send_refund(refund_id: int, now: datetime) -> Refund | None:
    """Send one due refund to Stripe, exactly once, and record what Stripe answered.

    The refund is claimed (marked pending) in its own transaction before Stripe is
    called, so two workers never send it twice; if the process dies mid-call, the next
    run sends it again with the same idempotency key, which Stripe answers with the
    refund it already made. A refund of a payment under an open dispute waits; one whose
    payment the bank has already returned (a dispute lost) is canceled.
    """
    # Two transactions with Stripe's call between them (never under a lock), so this one
    # commits by hand: the claim, then what Stripe answered (`refund_answered`).
    purchase, refund = lock_purchase_and_refund(refund_id, skip_locked=True)
    first_send = refund is not None and refund.status == RefundStatus.SCHEDULED
    due = refund is not None and (
        (first_send and refund.scheduled_for <= now)
        or (
            # Left unfinished by a worker that stopped mid-call, not one still calling.
            refund.status == RefundStatus.PENDING
            and refund.stripe_refund_id is None
            and refund.sent_at <= now - _unfinished_after()
        )
    )
    state = money_state(purchase) if due else None
    if not due or state.dispute_open:
        db.session.rollback()
        return None
    if state.lost_cents and first_send:
        cancel_for_lost_dispute(purchase, refund)
        db.session.commit()
        return refund
    if first_send:
        move(refund, RefundStatus.PENDING)
        _tell_customer_refund_sent(purchase, refund)
    refund.sent_at = now
    payment_intent = purchase.stripe_payment_intent_id
    key, amount, reason = refund.attempt_key, refund.amount_cents, refund.reason
    metadata = {
        "refund_id": str(refund.id),
        "attempt": str(refund.attempt),
        "purchase_id": str(purchase.id),
    }
    db.session.commit()
    if payment_intent is None:
        return refund_failed(refund_id, "The purchase has no Stripe payment to refund.")
    try:
        answer = gateway().create_refund(payment_intent, amount, reason, key, metadata)
    except PaymentProviderError as error:
        if error.retryable:
            log.warning("refund %s not sent yet (%s); it will be retried", refund_id, error)
            return refund
        return refund_failed(refund_id, str(error))
    return refund_answered(refund_id, answer)


def _tell_customer_refund_sent(purchase: Purchase, refund: Refund) -> None:
    # Sent when the undo window has closed and the money is really leaving, so that an
    # approval undone inside the window never reaches the customer.
    amount = format_cents(refund.amount_cents, refund.currency)
    request = db.session.get(RefundRequest, refund.refund_request_id)
    days = f"{policy.PAYOUT_BUSINESS_DAYS_MIN}-{policy.PAYOUT_BUSINESS_DAYS_MAX}"
    if refund.attempt == 1:
        subject = "refund approved"
        body = (
            f"We approved a refund of {amount} to your original payment method. "
            f"It reaches you within {days} business days."
        )
    else:
        subject = "refund sent again"
        body = (
            f"We are sending your refund of {amount} to your original payment method "
            f"again. It reaches you within {days} business days."
        )
    email_customer(request, purchase.user.email, subject, body)


def refund_answered(refund_id: int, answer: dict) -> Refund | None:
    """Store Stripe's refund id on our record, then act on a final status."""
    if _store_answer(refund_id, answer) is None:
        return None
    return apply_refund_status(refund_id, answer.get("status"), answer.get("failure_reason"))


@transactional
def _store_answer(refund_id: int, answer: dict) -> Refund | None:
    purchase, refund = lock_purchase_and_refund(refund_id)
    if refund is not None:
        # Stripe's answer names the refund of this attempt (a retry is a new Stripe refund).
        refund.stripe_refund_id = answer.get("id") or refund.stripe_refund_id
        settle(purchase)
    return refund


def apply_refund_status(refund_id: int, status, failure_reason) -> Refund | None:
    if status == RefundStatus.SUCCEEDED:
        return refund_succeeded(refund_id)
    if status in (RefundStatus.FAILED, RefundStatus.CANCELED):
        return refund_failed(refund_id, failure_reason or status)
    return db.session.get(Refund, refund_id)


@transactional
def refund_succeeded(refund_id: int) -> Refund | None:
    """Mark a refund settled and tell the customer (once)."""
    purchase, refund = lock_purchase_and_refund(refund_id)
    if refund is None or RefundStatus.SUCCEEDED not in REFUND_TRANSITIONS[refund.status]:
        return refund
    move(refund, RefundStatus.SUCCEEDED)
    REFUNDS.labels("succeeded").inc()
    amount = format_cents(refund.amount_cents, refund.currency)
    days = f"{policy.PAYOUT_BUSINESS_DAYS_MIN}-{policy.PAYOUT_BUSINESS_DAYS_MAX}"
    _request_event(
        refund,
        "refund_settled",
        f"{amount} was refunded to your original payment method. "
        f"Banks usually show it within {days} business days.",
    )
    audit.record(
        "refund.succeeded", "refund", refund.id, after={"amount_cents": refund.amount_cents}
    )
    queue_email(
        purchase.user.email,
        f"Your refund of {amount} was sent",
        f"We refunded {amount} to the card or account you paid with. It usually shows "
        f"within {days} business days.",
    )
    settle(purchase)
    return refund


@transactional
def refund_failed(refund_id: int, why: str) -> Refund | None:
    """Record a refund that did not go through: free its amount, return the request to
    review, and give the credits back if the purchase's money is still with us (under a
    dispute they stay held until the bank decides)."""
    purchase, refund = lock_purchase_and_refund(refund_id)
    if refund is None or RefundStatus.FAILED not in REFUND_TRANSITIONS[refund.status]:
        return refund
    with_us = money_state(purchase).with_us
    release(purchase, refund, RefundStatus.FAILED, "refund did not go through", "reversal")
    REFUNDS.labels("failed").inc()
    refund.failure_reason = why[:500]
    _reopen_request(refund)
    amount = format_cents(refund.amount_cents, refund.currency)
    credits_word = (
        "The credits are back in your balance"
        if with_us
        else "The payment is disputed with your bank, so its credits stay on hold until "
        "the bank decides"
    )
    _request_event(
        refund,
        "refund_failed",
        f"The refund of {amount} did not go through: {refund.failure_words}. {credits_word}; "
        "our team will follow up.",
    )
    audit.record("refund.failed", "refund", refund.id, after={"reason": why[:200]})
    queue_email(
        purchase.user.email,
        f"Your refund of {amount} did not go through",
        f"The refund could not be completed: {refund.failure_words}. {credits_word}. Our "
        "team will contact you about another way.",
    )
    notify_staff(f"Refund {refund.id} failed", f"Refund {refund.id} of {amount} failed: {why}")
    settle(purchase)
    return refund


def cancel_for_lost_dispute(purchase: Purchase, refund: Refund) -> None:
    """The bank returned the payment to the customer: the scheduled refund must not go."""
    release(purchase, refund, RefundStatus.CANCELED, "payment returned by the bank", "dispute")
    refund.failure_reason = "The customer's bank returned the payment through a dispute."
    _reopen_request(refund)
    _request_event(
        refund,
        "refund_canceled",
        "Your bank returned the payment to you through a dispute, so no refund was sent.",
    )
    audit.record("refund.canceled", "refund", refund.id, after={"reason": "dispute lost"})
    settle(purchase)


def _request_event(refund: Refund, kind: str, body: str) -> None:
    if refund.refund_request_id is not None:
        request = db.session.get(RefundRequest, refund.refund_request_id)
        add_event(request, kind, body)


def _reopen_request(refund: Refund) -> None:
    """Send the refund's request back to review, where staff see what happened.

    A purchase has one open request at a time: if the customer has filed another since
    (possible once a refund had arrived, and Stripe can still fail it later), that one is
    where staff decide, and this one stays decided with the refund's news on it.
    """
    if refund.refund_request_id is None:
        return
    request = locked(RefundRequest, RefundRequest.id == refund.refund_request_id)
    other_open = db.session.scalar(
        select(RefundRequest.id).where(
            RefundRequest.purchase_id == request.purchase_id,
            RefundRequest.id != request.id,
            RefundRequest.status.in_(OPEN_REQUEST_STATUSES),
        )
    )
    if request.status == RequestStatus.APPROVED and other_open is None:
        request.reopen()
