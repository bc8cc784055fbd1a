"""Disputes: every event is a reason to ask Stripe how the dispute stands, and to apply it."""

import logging

from sqlalchemy import func, select

from portal import audit
from portal.billing.gateway import gateway
from portal.billing.models import (
    OPEN_DISPUTE_STATUSES,
    Dispute,
    DisputeStatus,
    Purchase,
    Refund,
    RefundStatus,
)
from portal.billing.money_back.reported import purchase_for_payment, sync_refunds
from portal.billing.money_back.sending import cancel_for_lost_dispute
from portal.billing.money_back.state import settle
from portal.db import db, transactional
from portal.ledger.models import EntryKind, LedgerEntry
from portal.money import format_cents
from portal.notifications.services import notify_staff
from portal.timeutil import utcnow

log = logging.getLogger(__name__)


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
    purchase = purchase_for_payment(found.get("payment_intent"))
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
            cancel_for_lost_dispute(purchase, refund)
    # The refunded amount was just read from Stripe, and no refund of ours moved since.
    settle(purchase, refunded_is_fresh=True)
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
