"""The state of a purchase's money and the one place that makes its credits and status
follow it (`settle`); the refund status table; locks in their order."""

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select

from portal.billing.models import (
    Dispute,
    DisputeStatus,
    Purchase,
    PurchaseStatus,
    Refund,
    RefundStatus,
)
from portal.db import db, locked
from portal.errors import Conflict
from portal.ledger import services as ledger
from portal.ledger.models import EntryKind, LedgerEntry

# Which status may follow which for a refund; `move` refuses everything else.
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


def move(refund: Refund, status: RefundStatus) -> None:
    if status not in REFUND_TRANSITIONS[refund.status]:
        raise Conflict(f"A {refund.status.value} refund cannot become {status.value}.")
    refund.status = status


# -- locks ----------------------------------------------------------------------


def lock_purchase(purchase_id: int) -> Purchase | None:
    return locked(Purchase, Purchase.id == purchase_id)


def lock_refund(refund_id: int, skip_locked: bool = False) -> Refund | None:
    return locked(Refund, Refund.id == refund_id, skip_locked=skip_locked)


def _purchase_id_of_refund(refund_id: int) -> int | None:
    return db.session.scalar(select(Refund.purchase_id).where(Refund.id == refund_id))


def lock_purchase_and_refund(
    refund_id: int, skip_locked: bool = False
) -> tuple[Purchase | None, Refund | None]:
    """Lock a refund's purchase, then the refund: the order every event here keeps."""
    purchase_id = _purchase_id_of_refund(refund_id)
    if purchase_id is None:
        return None, None
    purchase = lock_purchase(purchase_id)
    return purchase, lock_refund(refund_id, skip_locked=skip_locked)


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


def share_of_credits(purchase: Purchase, amount_cents: int) -> int:
    """The credits `amount_cents` of the purchase's price pays for, rounded up: refunding
    part of a credit's price removes that credit."""
    return -(-amount_cents * purchase.credits // purchase.amount_cents)


# -- settling: credits and status follow the money ---------------------------------------


def settle(purchase: Purchase, refunded_is_fresh: bool = False) -> None:
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
    due = share_of_credits(purchase, outside_cents)
    count, net = db.session.execute(
        select(func.count(), func.coalesce(func.sum(LedgerEntry.credits), 0)).where(
            LedgerEntry.purchase_id == purchase.id,
            LedgerEntry.kind.in_([EntryKind.REFUND_CLAW_BACK, EntryKind.CLAW_BACK_REVERSAL]),
            LedgerEntry.refund_id.is_(None),
        )
    ).one()
    removed = -net
    key = purchase.outside_refund_key(count + 1)
    if due > removed:
        credits = min(due - removed, ledger.unused_credits(purchase))
        if credits > 0:
            ledger.claw_back(purchase, credits, key, memo="refunded through Stripe")
    elif due < removed:
        ledger.give_back(purchase, removed - due, key, memo="refund through Stripe failed")


def release(
    purchase: Purchase, refund: Refund, status: RefundStatus, why: str, suffix: str
) -> None:
    """End a refund that moved no money: free its amount and give back its claw-back."""
    move(refund, status)
    purchase.committed_refund_cents -= refund.amount_cents
    taken = db.session.scalar(
        select(LedgerEntry).where(LedgerEntry.idempotency_key == refund.claw_back_key)
    )
    if taken is not None:
        ledger.restore(taken, f"{refund.claw_back_key}:{suffix}", memo=why)
