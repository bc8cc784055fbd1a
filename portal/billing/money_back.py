"""Money going back: refunds, failed refunds, disputes and claw-backs, purchase by purchase.

This module is the one owner of that life cycle. Nothing else creates or changes a
`Refund` or a `Dispute`, or posts the ledger entries that take a purchase's credits out
of the balance for them (claw-backs, dispute holds) or put them back. Every event goes
through here, whoever reports it:

    staff            approve · undo · retry
    the worker       send a refund whose undo window has closed
    Stripe (asked)   a refund succeeded, failed or was canceled · a charge was refunded
                     (also from Stripe's dashboard) · a dispute opened, changed or closed
    reconciliation   re-reads refunds still pending and disputes still open

Each event locks the purchase first (then its refund, then its request), so the events of
one purchase are applied one at a time, and ends in `_settle`, which makes the purchase's
status and credits agree with its money as it stands now. `_settle` looks at the state,
not at the event, and every Stripe event is first looked up at Stripe; so events that come
twice, out of order or late leave the same books.

    money:   paid ─► refund scheduled ─► pending ─► succeeded (part or all refunded)
              │          │ undo            └─► failed ─► retried (a new attempt)
              │          └─► canceled (undo; or the bank already gave the money back)
              └─► dispute open ─► won or inquiry closed (the money stays with us)
                                └─► lost (the money went back through the bank)
    credits: spendable · clawed back (for a refund) · held (while a dispute is open or lost)

Invariants, checked by `problems()` (run by `flask ledger-check`):
- refunds succeeded plus disputes lost never exceed what was paid;
- a purchase under an open or lost dispute, or refunded in full, has no spendable credits;
- no refund is sent while a dispute on its payment is open;
- a failed refund gives credits back only while the purchase's money is still with us.
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.exc import IntegrityError

from portal import audit, policy
from portal.accounts.models import User
from portal.billing.gateway import gateway
from portal.billing.models import (
    OPEN_DISPUTE_STATUSES,
    Dispute,
    DisputeStatus,
    Purchase,
    PurchaseStatus,
    Refund,
    RefundStatus,
)
from portal.db import db, locked, transactional
from portal.errors import Conflict, NotFound, PaymentProviderError, ValidationError
from portal.ledger import services as ledger
from portal.ledger.models import CreditLot, EntryKind, LedgerEntry
from portal.money import format_cents
from portal.notifications.services import notify_staff, queue_email
from portal.ops.counters import REFUNDS
from portal.refunds.models import OPEN_STATUSES as OPEN_REQUEST_STATUSES
from portal.refunds.models import RefundRequest, RequestStatus, add_event
from portal.timeutil import utcnow

log = logging.getLogger(__name__)

# Which status may follow which for a refund; `_move` refuses everything else.
REFUND_TRANSITIONS: dict[RefundStatus, set[RefundStatus]] = {
    # Sent by the worker once the undo window closes; canceled by an undo, or because
    # the customer's bank already returned the payment (a dispute lost).
    RefundStatus.SCHEDULED: {RefundStatus.PENDING, RefundStatus.CANCELED},
    RefundStatus.PENDING: {
        RefundStatus.REQUIRES_ACTION,
        RefundStatus.SUCCEEDED,
        RefundStatus.FAILED,
        RefundStatus.CANCELED,
    },
    RefundStatus.REQUIRES_ACTION: {
        RefundStatus.SUCCEEDED,
        RefundStatus.FAILED,
        RefundStatus.CANCELED,
    },
    # Stripe reports a refund failed even after it succeeded when the card's account
    # turns out to be closed.
    RefundStatus.SUCCEEDED: {RefundStatus.FAILED},
    # Staff try a failed refund again: a new attempt with a new idempotency key.
    RefundStatus.FAILED: {RefundStatus.SCHEDULED},
    RefundStatus.CANCELED: set(),
}

# An approval waits this long before its money leaves, so that it can be taken back.
UNDO_WINDOW = timedelta(minutes=10)

# A refund that Stripe still calls pending after this long is looked up again.
RECHECK_PENDING_AFTER = timedelta(minutes=10)

INQUIRY_STATUSES = (
    DisputeStatus.WARNING_NEEDS_RESPONSE,
    DisputeStatus.WARNING_UNDER_REVIEW,
    DisputeStatus.WARNING_CLOSED,
)


def _move(refund: Refund, status: RefundStatus) -> None:
    if status not in REFUND_TRANSITIONS[refund.status]:
        raise Conflict(f"A {refund.status.value} refund cannot become {status.value}.")
    refund.status = status


# -- locks ----------------------------------------------------------------------


def lock_purchase(purchase_id: int) -> Purchase | None:
    return locked(Purchase, Purchase.id == purchase_id)


def _lock_refund(refund_id: int, skip_locked: bool = False) -> Refund | None:
    return locked(Refund, Refund.id == refund_id, skip_locked=skip_locked)


def _purchase_id_of_refund(refund_id: int) -> int | None:
    return db.session.scalar(select(Refund.purchase_id).where(Refund.id == refund_id))


def _lock_purchase_and_refund(
    refund_id: int, skip_locked: bool = False
) -> tuple[Purchase | None, Refund | None]:
    """Lock a refund's purchase, then the refund: the order every event here keeps."""
    purchase_id = _purchase_id_of_refund(refund_id)
    if purchase_id is None:
        return None, None
    purchase = lock_purchase(purchase_id)
    return purchase, _lock_refund(refund_id, skip_locked=skip_locked)


def _customer_email(purchase: Purchase) -> str:
    return db.session.scalar(select(User.email).where(User.id == purchase.user_id))


# -- the state of a purchase's money -----------------------------------------------------


@dataclass(frozen=True)
class MoneyState:
    """Where a purchase's money is, as the portal knows it."""

    paid_cents: int
    # Stripe's amount_refunded on the charge: refunds pending or succeeded, any origin.
    refunded_cents: int
    # The portal's own refunds scheduled, pending or succeeded.
    committed_cents: int
    lost_cents: int
    dispute_open: bool

    @property
    def with_us(self) -> bool:
        """No dispute is open or lost: the payment is ours to refund."""
        return not self.dispute_open and self.lost_cents == 0

    @property
    def refundable_cents(self) -> int:
        gone = max(self.refunded_cents, self.committed_cents) + self.lost_cents
        return max(self.paid_cents - gone, 0)


def _disputes(purchase_id: int) -> list[Dispute]:
    return list(
        db.session.scalars(
            select(Dispute).where(Dispute.purchase_id == purchase_id).order_by(Dispute.id)
        )
    )


def money_state(purchase: Purchase) -> MoneyState:
    disputes = _disputes(purchase.id)
    return MoneyState(
        paid_cents=purchase.amount_cents if purchase.paid_at else 0,
        refunded_cents=purchase.refunded_cents,
        committed_cents=purchase.committed_refund_cents,
        lost_cents=sum(dispute.amount_cents for dispute in disputes if dispute.is_lost),
        dispute_open=any(dispute.is_open for dispute in disputes),
    )


def _share_of_credits(purchase: Purchase, amount_cents: int) -> int:
    """The credits `amount_cents` of the purchase's price pays for, rounded up: refunding
    part of a credit's price removes that credit."""
    return -(-amount_cents * purchase.credits // purchase.amount_cents)


# -- settling: credits and status follow the money ---------------------------------------


def _settle(purchase: Purchase, refunded_is_fresh: bool = False) -> None:
    """Make the purchase's status and credits agree with its money as it stands now.

    Disputes no longer open and not lost give back what they held; an open or lost
    dispute holds whatever is left unused. When the caller has just read the charge's
    refunded amount from Stripe (`refunded_is_fresh`), refunds made outside the portal
    also remove their share of the unused credits; elsewhere that amount may be a step
    behind a refund whose status just changed, and the next charge event settles it.
    Safe to run after every event and any number of times.
    """
    disputes = _disputes(purchase.id)
    holding = [dispute for dispute in disputes if dispute.is_open or dispute.is_lost]
    for dispute in disputes:
        if dispute not in holding:
            _release_holds(dispute)
    if purchase.credited_at is not None:
        if refunded_is_fresh:
            _match_outside_refunds(purchase)
        if holding:
            _hold_unused(purchase, holding[-1])
    purchase.status = _status(purchase, disputed=bool(holding))


def _status(purchase: Purchase, disputed: bool) -> PurchaseStatus:
    if disputed:
        return PurchaseStatus.DISPUTED
    fully_refunded = purchase.refunded_cents >= purchase.amount_cents
    if purchase.credited_at is None:
        if fully_refunded:
            # Refunded before it was ever credited: it must never be credited now.
            return PurchaseStatus.REFUNDED
        # A dispute won before crediting leaves the payment creditable again.
        return (
            PurchaseStatus.PAID if purchase.status == PurchaseStatus.DISPUTED else (purchase.status)
        )
    if fully_refunded:
        return PurchaseStatus.REFUNDED
    return PurchaseStatus.PARTIALLY_REFUNDED if purchase.refunded_cents else PurchaseStatus.CREDITED


def _holds_of(dispute: Dispute) -> list[LedgerEntry]:
    return list(
        db.session.scalars(
            select(LedgerEntry)
            .where(
                LedgerEntry.purchase_id == dispute.purchase_id,
                LedgerEntry.kind == EntryKind.DISPUTE_HOLD,
                LedgerEntry.idempotency_key.startswith(
                    f"dispute:{dispute.stripe_dispute_id}:hold", autoescape=True
                ),
            )
            .order_by(LedgerEntry.id)
        )
    )


def _hold_unused(purchase: Purchase, dispute: Dispute) -> LedgerEntry | None:
    # The account lock first: holds are numbered, and each customer's credits move one
    # at a time under that lock, whoever holds the purchase's.
    ledger.lock_account(purchase.user_id)
    hold_key, _ = dispute.hold_keys(len(_holds_of(dispute)) + 1)
    return ledger.hold_for_dispute(purchase, hold_key)


def hold_returned_credits(entry: LedgerEntry) -> None:
    """Hold again what `entry` gave back to the lots of purchases under an open or lost
    dispute (a job charged before the dispute, failed after it).

    Runs in the caller's transaction under the customer's account lock, which every hold
    also takes, so a dispute settling at the same moment holds these credits or sees them
    held: the purchase row is not locked here (its lock comes before the account's).
    """
    purchase_ids = {
        allocation.lot.purchase_id
        for allocation in entry.allocations
        if allocation.credits > 0 and allocation.lot.purchase_id is not None
    }
    for purchase_id in sorted(purchase_ids):
        holding = [
            dispute for dispute in _disputes(purchase_id) if dispute.is_open or dispute.is_lost
        ]
        if holding:
            _hold_unused(db.session.get(Purchase, purchase_id), holding[-1])


def _release_holds(dispute: Dispute) -> None:
    for number, hold in enumerate(_holds_of(dispute), start=1):
        _, release_key = dispute.hold_keys(number)
        ledger.restore(hold, release_key, memo=f"dispute {dispute.status.value}")


def _match_outside_refunds(purchase: Purchase) -> None:
    """Keep the credits removed for refunds made outside the portal in step with them.

    Money refunded through Stripe's dashboard removes the matching share of unused
    credits; if such a refund later fails, the credits come back.
    """
    # The portal's own refunds sent or on their way (Stripe's charge may report one before
    # its answer reaches us) are not outside refunds.
    at_stripe = db.session.scalar(
        select(func.coalesce(func.sum(Refund.amount_cents), 0)).where(
            Refund.purchase_id == purchase.id,
            Refund.refund_request_id.is_not(None),
            Refund.status.in_(
                [RefundStatus.PENDING, RefundStatus.REQUIRES_ACTION, RefundStatus.SUCCEEDED]
            ),
        )
    )
    outside_cents = max(purchase.refunded_cents - at_stripe, 0)
    due = _share_of_credits(purchase, outside_cents)
    count, net = db.session.execute(
        select(func.count(), func.coalesce(func.sum(LedgerEntry.credits), 0)).where(
            LedgerEntry.purchase_id == purchase.id,
            LedgerEntry.kind.in_([EntryKind.REFUND_CLAW_BACK, EntryKind.CLAW_BACK_REVERSAL]),
            LedgerEntry.refund_id.is_(None),
        )
    ).one()
    removed = -net
    key = f"purchase:{purchase.id}:outside-refund:{count + 1}"
    if due > removed:
        credits = min(due - removed, ledger.unused_credits(purchase))
        if credits > 0:
            ledger.claw_back(purchase, credits, key, memo="refunded through Stripe")
    elif due < removed:
        ledger.give_back(purchase, removed - due, key, memo="refund through Stripe failed")


def settle_after_crediting(purchase: Purchase) -> None:
    """Bring a purchase credited late (after a refund or a dispute) into line at once."""
    _settle(purchase, refunded_is_fresh=True)


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
    credits = min(ledger.unused_credits(purchase), _share_of_credits(purchase, amount_cents))
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
    purchase, refund = _lock_purchase_and_refund(refund_id)
    if refund is None or refund.refund_request_id is None:
        raise NotFound("no such refund")
    if refund.status != RefundStatus.SCHEDULED or refund.scheduled_for <= now:
        raise Conflict("This refund has already been sent; it can no longer be undone.")
    _release(purchase, refund, RefundStatus.CANCELED, "approval undone", suffix="undo")
    _settle(purchase)
    return refund


def retry(refund_id: int, memo: str, now: datetime) -> Refund:
    """Try a failed refund again as a new attempt (Stripe's refusal is final for the old
    key), sent at once. The caller moves the request and commits.

    :raises NotFound: no such refund of a request.
    :raises Conflict: the refund has not failed, or the payment is now disputed.
    :raises ValidationError: the amount no longer fits what is left to refund.
    """
    purchase, refund = _lock_purchase_and_refund(refund_id)
    if refund is None or refund.refund_request_id is None:
        raise NotFound("no such refund")
    if refund.status != RefundStatus.FAILED:
        raise Conflict("Only a failed refund can be tried again.")
    if not money_state(purchase).with_us:
        raise Conflict(
            "The payment is disputed with the customer's bank; the bank's decision settles it."
        )
    _move(refund, RefundStatus.SCHEDULED)
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
    credits = min(ledger.unused_credits(purchase), _share_of_credits(purchase, refund.amount_cents))
    if credits:
        ledger.claw_back(purchase, credits, refund.claw_back_key, refund_id=refund.id, memo=memo)
    return refund


def _release(
    purchase: Purchase, refund: Refund, status: RefundStatus, why: str, suffix: str
) -> None:
    """End a refund that moved no money: free its amount and give back its claw-back."""
    _move(refund, status)
    purchase.committed_refund_cents -= refund.amount_cents
    taken = db.session.scalar(
        select(LedgerEntry).where(LedgerEntry.idempotency_key == refund.claw_back_key)
    )
    if taken is not None:
        ledger.restore(taken, f"{refund.claw_back_key}:{suffix}", memo=why)


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
    purchase, refund = _lock_purchase_and_refund(refund_id, skip_locked=True)
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
        _cancel_for_lost_dispute(purchase, refund)
        db.session.commit()
        return refund
    if first_send:
        _move(refund, RefundStatus.PENDING)
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
    queue_email(
        _customer_email(purchase),
        f"{request.reference}: {subject}",
        f"{body}\n\nOpen {request.reference} in the portal under Refunds to see the details.",
    )


def refund_answered(refund_id: int, answer: dict) -> Refund | None:
    """Store Stripe's refund id on our record, then act on a final status."""
    if _store_answer(refund_id, answer) is None:
        return None
    return _apply_refund_status(refund_id, answer.get("status"), answer.get("failure_reason"))


@transactional
def _store_answer(refund_id: int, answer: dict) -> Refund | None:
    purchase, refund = _lock_purchase_and_refund(refund_id)
    if refund is not None:
        # Stripe's answer names the refund of this attempt (a retry is a new Stripe refund).
        refund.stripe_refund_id = answer.get("id") or refund.stripe_refund_id
        _settle(purchase)
    return refund


def _apply_refund_status(refund_id: int, status, failure_reason) -> Refund | None:
    if status == RefundStatus.SUCCEEDED:
        return refund_succeeded(refund_id)
    if status in (RefundStatus.FAILED, RefundStatus.CANCELED):
        return refund_failed(refund_id, failure_reason or status)
    return db.session.get(Refund, refund_id)


@transactional
def refund_succeeded(refund_id: int) -> Refund | None:
    """Mark a refund settled and tell the customer (once)."""
    purchase, refund = _lock_purchase_and_refund(refund_id)
    if refund is None or RefundStatus.SUCCEEDED not in REFUND_TRANSITIONS[refund.status]:
        return refund
    _move(refund, RefundStatus.SUCCEEDED)
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
        _customer_email(purchase),
        f"Your refund of {amount} was sent",
        f"We refunded {amount} to the card or account you paid with. It usually shows "
        f"within {days} business days.",
    )
    _settle(purchase)
    return refund


@transactional
def refund_failed(refund_id: int, why: str) -> Refund | None:
    """Record a refund that did not go through: free its amount, return the request to
    review, and give the credits back if the purchase's money is still with us (under a
    dispute they stay held until the bank decides)."""
    purchase, refund = _lock_purchase_and_refund(refund_id)
    if refund is None or RefundStatus.FAILED not in REFUND_TRANSITIONS[refund.status]:
        return refund
    with_us = money_state(purchase).with_us
    _release(purchase, refund, RefundStatus.FAILED, "refund did not go through", "reversal")
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
        f"The refund of {amount} did not go through ({why}). {credits_word}; our team will "
        "follow up.",
    )
    audit.record("refund.failed", "refund", refund.id, after={"reason": why[:200]})
    queue_email(
        _customer_email(purchase),
        f"Your refund of {amount} did not go through",
        f"The refund could not be completed. {credits_word}. Our team will contact you "
        "about another way.",
    )
    notify_staff(f"Refund {refund.id} failed", f"Refund {refund.id} of {amount} failed: {why}")
    _settle(purchase)
    return refund


def _cancel_for_lost_dispute(purchase: Purchase, refund: Refund) -> None:
    """The bank returned the payment to the customer: the scheduled refund must not go."""
    _release(purchase, refund, RefundStatus.CANCELED, "payment returned by the bank", "dispute")
    refund.failure_reason = "The customer's bank returned the payment through a dispute."
    _reopen_request(refund)
    _request_event(
        refund,
        "refund_canceled",
        "Your bank returned the payment to you through a dispute, so no refund was sent.",
    )
    audit.record("refund.canceled", "refund", refund.id, after={"reason": "dispute lost"})
    _settle(purchase)


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


# -- refunds reported by Stripe (also those made in Stripe's dashboard) ------------------


def _purchase_id_of(stripe_object: dict) -> int | None:
    metadata = stripe_object.get("metadata") or {}
    candidate = metadata.get("purchase_id") if isinstance(metadata, dict) else None
    if isinstance(candidate, str) and candidate.isdigit():
        return int(candidate)
    return None


def _purchase_for_payment(payment_intent: str | None) -> Purchase | None:
    """The purchase a PaymentIntent paid for, locked; None if it is none of ours."""
    if not isinstance(payment_intent, str) or not payment_intent:
        return None
    found = db.session.scalar(
        select(Purchase.id).where(Purchase.stripe_payment_intent_id == payment_intent)
    )
    if found is None:
        found = _unrecorded_purchase_of(payment_intent)
    purchase = lock_purchase(found) if found is not None else None
    if purchase is not None and purchase.stripe_payment_intent_id not in (None, payment_intent):
        log.warning("payment %s names purchase %s, paid by another", payment_intent, found)
        return None
    return purchase


def _unrecorded_purchase_of(payment_intent: str) -> int | None:
    """News about a payment before its fulfilment recorded it: the intent's metadata names
    the purchase, and that purchase's Checkout Session must confirm it was paid with this
    very intent (Stripe is asked before any lock is taken)."""
    named = _purchase_id_of(gateway().retrieve_payment_intent(payment_intent))
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
    purchase = _purchase_for_payment(payment_intent)
    if purchase is None:
        return None
    before = purchase.refunded_cents
    purchase.stripe_payment_intent_id = purchase.stripe_payment_intent_id or payment_intent
    purchase.refunded_cents = min(int(charge.get("amount_refunded") or 0), purchase.amount_cents)
    _settle(purchase, refunded_is_fresh=True)
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
        return _apply_refund_status(row.id, refund.get("status"), refund.get("failure_reason"))
    return row


@transactional
def _store_refund(refund: dict) -> tuple[Refund | None, bool]:
    """Our row for a Stripe refund, found or made; and whether it is one of the portal's
    own (a refund of a request) whose status the caller still has to apply."""
    stripe_id = refund.get("id")
    intent = refund.get("payment_intent")
    if not isinstance(stripe_id, str) or not isinstance(intent, str) or not intent:
        return None, False
    purchase = _purchase_for_payment(intent)
    if purchase is None:
        return None, False
    metadata = refund.get("metadata") or {}
    ours, attempt = metadata.get("refund_id"), metadata.get("attempt")
    row = locked(Refund, Refund.stripe_refund_id == stripe_id)
    if row is None and isinstance(ours, str) and ours.isdigit():
        candidate = _lock_refund(int(ours))
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


# -- disputes ----------------------------------------------------------------------------


@transactional
def dispute_changed(stripe_dispute_id: str) -> Purchase | None:
    """A dispute event: ask Stripe how the dispute stands and apply that, whatever the
    event said and whenever it arrived."""
    found = gateway().retrieve_dispute(stripe_dispute_id)
    try:
        status = DisputeStatus(found.get("status"))
    except ValueError:
        log.warning("dispute %s has a status we do not know", stripe_dispute_id)
        return None
    # The charge's refunded amount first (its own events may have been lost), so that
    # settling below works from Stripe's figures.
    sync_refunds(found.get("payment_intent"))
    purchase = _purchase_for_payment(found.get("payment_intent"))
    if purchase is None:
        return None
    dispute = db.session.scalar(
        select(Dispute).where(Dispute.stripe_dispute_id == stripe_dispute_id)
    )
    before = dispute.status if dispute is not None else None
    if dispute is None:
        dispute = Dispute(
            purchase_id=purchase.id,
            stripe_dispute_id=stripe_dispute_id,
            amount_cents=max(int(found.get("amount") or 0), 0),
            currency=found.get("currency") or purchase.currency,
            reason=str(found.get("reason") or "")[:64],
            status=status,
        )
        db.session.add(dispute)
    elif dispute.purchase_id != purchase.id:
        log.warning("dispute %s moved to another payment", stripe_dispute_id)
        return None
    dispute.status = status
    if not dispute.is_open and dispute.closed_at is None:
        dispute.closed_at = utcnow()
    db.session.flush()
    held_before = _held_credits(purchase)
    if dispute.is_lost:
        for refund in _scheduled_refunds(purchase):
            _cancel_for_lost_dispute(purchase, refund)
    # The refunded amount was just read from Stripe, and no refund of ours moved since.
    _settle(purchase, refunded_is_fresh=True)
    if before != status:
        _report_dispute(purchase, dispute, before, _held_credits(purchase) - held_before)
    return purchase


def _scheduled_refunds(purchase: Purchase) -> list[Refund]:
    return list(
        db.session.scalars(
            select(Refund)
            .where(Refund.purchase_id == purchase.id, Refund.status == RefundStatus.SCHEDULED)
            .with_for_update()
        )
    )


def _held_credits(purchase: Purchase) -> int:
    return -db.session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.credits), 0)).where(
            LedgerEntry.purchase_id == purchase.id,
            LedgerEntry.kind.in_([EntryKind.DISPUTE_HOLD, EntryKind.DISPUTE_RELEASE]),
        )
    )


def _report_dispute(
    purchase: Purchase, dispute: Dispute, before: DisputeStatus | None, newly_held: int
) -> None:
    stripe_id = dispute.stripe_dispute_id
    audit.record(
        "purchase.dispute_changed",
        "purchase",
        purchase.id,
        before={"dispute": stripe_id, "status": before.value if before else None},
        after={"status": dispute.status.value, "credits_held": max(newly_held, 0)},
    )
    if before is None and dispute.is_open:
        notify_staff(
            f"Dispute opened on purchase {purchase.id}",
            f"Stripe dispute {stripe_id} ({dispute.reason or 'no reason given'}) was opened "
            f"for {format_cents(dispute.amount_cents, dispute.currency)}. "
            f"{max(newly_held, 0)} unused credits are on hold. No refund is sent while it "
            "is open.",
        )
    elif not dispute.is_open and (before is None or before in OPEN_DISPUTE_STATUSES):
        outcome = {
            DisputeStatus.WON: "won",
            DisputeStatus.LOST: "lost",
            DisputeStatus.WARNING_CLOSED: "inquiry closed",
        }[dispute.status]
        what = (
            "The payment went back to the customer through the bank; its credits stay "
            "removed and its scheduled refunds were canceled."
            if dispute.is_lost
            else "The payment stays with us; held credits are back in the customer's balance."
        )
        notify_staff(
            f"Dispute closed on purchase {purchase.id}: {outcome}",
            f"Stripe dispute {stripe_id} closed as {outcome}. {what}",
        )


# -- reconciliation ----------------------------------------------------------------------


def refunds_to_recheck(now: datetime) -> list[str]:
    """Stripe ids of refunds still pending a while after they were sent: their final
    webhook may have been lost."""
    return list(
        db.session.scalars(
            select(Refund.stripe_refund_id)
            .where(
                Refund.status.in_([RefundStatus.PENDING, RefundStatus.REQUIRES_ACTION]),
                Refund.stripe_refund_id.is_not(None),
                or_(Refund.sent_at.is_(None), Refund.sent_at <= now - RECHECK_PENDING_AFTER),
            )
            .order_by(Refund.id)
        )
    )


def open_disputes() -> list[str]:
    return list(
        db.session.scalars(
            select(Dispute.stripe_dispute_id)
            .where(Dispute.status.in_(OPEN_DISPUTE_STATUSES))
            .order_by(Dispute.id)
        )
    )


# -- invariants --------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    user_id: int
    email: str
    problem: str


def problems() -> list[Problem]:
    """Check the invariants of money going back for every purchase; return what is wrong."""
    found: list[Problem] = []
    succeeded = (
        select(Refund.purchase_id, func.sum(Refund.amount_cents).label("cents"))
        .where(Refund.status == RefundStatus.SUCCEEDED)
        .group_by(Refund.purchase_id)
        .subquery()
    )
    lost = (
        select(Dispute.purchase_id, func.sum(Dispute.amount_cents).label("cents"))
        .where(Dispute.status == DisputeStatus.LOST)
        .group_by(Dispute.purchase_id)
        .subquery()
    )
    # Stripe's own count of refunds (pending ones too) never above the payment either.
    returned = func.coalesce(succeeded.c.cents, 0) + func.coalesce(lost.c.cents, 0)
    for purchase_id, user_id, email, cents, paid in db.session.execute(
        select(Purchase.id, Purchase.user_id, User.email, returned, Purchase.amount_cents)
        .join(User, User.id == Purchase.user_id)
        .outerjoin(succeeded, succeeded.c.purchase_id == Purchase.id)
        .outerjoin(lost, lost.c.purchase_id == Purchase.id)
        .where(returned > Purchase.amount_cents)
    ):
        found.append(
            Problem(
                user_id,
                email,
                f"purchase {purchase_id}: {format_cents(cents)} went back, "
                f"more than the {format_cents(paid)} paid",
            )
        )

    money_gone = or_(
        exists().where(
            Dispute.purchase_id == Purchase.id,
            or_(Dispute.status.in_(OPEN_DISPUTE_STATUSES), Dispute.status == DisputeStatus.LOST),
        ),
        Purchase.refunded_cents >= Purchase.amount_cents,
    )
    for purchase_id, user_id, email, spendable in db.session.execute(
        select(Purchase.id, Purchase.user_id, User.email, CreditLot.credits_remaining)
        .join(User, User.id == Purchase.user_id)
        .join(CreditLot, CreditLot.purchase_id == Purchase.id)
        .where(money_gone, CreditLot.credits_remaining > 0)
    ):
        found.append(
            Problem(
                user_id,
                email,
                f"purchase {purchase_id}: {spendable} credits spendable though its money is "
                "disputed or back with the customer",
            )
        )

    # Inquiries (warning_*) leave the payment refundable; a chargeback does not.
    chargeback_open_at_send = and_(
        Dispute.purchase_id == Refund.purchase_id,
        Dispute.status.not_in(INQUIRY_STATUSES),
        Dispute.opened_at <= Refund.sent_at,
        or_(Dispute.closed_at.is_(None), Dispute.closed_at > Refund.sent_at),
    )
    for refund_id, user_id, email in db.session.execute(
        select(Refund.id, Purchase.user_id, User.email)
        .join(Purchase, Purchase.id == Refund.purchase_id)
        .join(User, User.id == Purchase.user_id)
        .where(
            Refund.refund_request_id.is_not(None),
            Refund.sent_at.is_not(None),
            exists().where(chargeback_open_at_send),
        )
    ):
        found.append(Problem(user_id, email, f"refund {refund_id} was sent during a dispute"))
    return found
