"""Reconciliation's lists (refunds still pending, disputes still open) and the invariants
that `flask ledger-check` verifies."""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, exists, func, or_, select

from portal.accounts.models import User
from portal.billing.models import (
    OPEN_DISPUTE_STATUSES,
    Dispute,
    DisputeStatus,
    Purchase,
    Refund,
    RefundStatus,
)
from portal.billing.money_back.state import INQUIRY_STATUSES, RECHECK_PENDING_AFTER
from portal.db import db
from portal.ledger.models import CreditLot
from portal.money import format_cents

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
    return _more_back_than_paid() + _spendable_credits_whose_money_went() + _sent_in_a_dispute()


def _more_back_than_paid() -> list[Problem]:
    """Refunds succeeded plus disputes lost, against what was paid."""
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
    returned = func.coalesce(succeeded.c.cents, 0) + func.coalesce(lost.c.cents, 0)
    rows = db.session.execute(
        select(Purchase.id, Purchase.user_id, User.email, returned, Purchase.amount_cents)
        .join(User, User.id == Purchase.user_id)
        .outerjoin(succeeded, succeeded.c.purchase_id == Purchase.id)
        .outerjoin(lost, lost.c.purchase_id == Purchase.id)
        .where(returned > Purchase.amount_cents)
    )
    return [
        Problem(
            user_id,
            email,
            f"purchase {purchase_id}: {format_cents(cents)} went back, "
            f"more than the {format_cents(paid)} paid",
        )
        for purchase_id, user_id, email, cents, paid in rows
    ]


def _spendable_credits_whose_money_went() -> list[Problem]:
    """Credits still spendable of a purchase under an open or lost dispute, or refunded
    in full."""
    money_gone = or_(
        exists().where(
            Dispute.purchase_id == Purchase.id,
            or_(Dispute.status.in_(OPEN_DISPUTE_STATUSES), Dispute.status == DisputeStatus.LOST),
        ),
        Purchase.refunded_cents >= Purchase.amount_cents,
    )
    rows = db.session.execute(
        select(Purchase.id, Purchase.user_id, User.email, CreditLot.credits_remaining)
        .join(User, User.id == Purchase.user_id)
        .join(CreditLot, CreditLot.purchase_id == Purchase.id)
        .where(money_gone, CreditLot.credits_remaining > 0)
    )
    return [
        Problem(
            user_id,
            email,
            f"purchase {purchase_id}: {spendable} credits spendable though its money is "
            "disputed or back with the customer",
        )
        for purchase_id, user_id, email, spendable in rows
    ]


def _sent_in_a_dispute() -> list[Problem]:
    """Refunds of ours sent while a chargeback on their payment was open (inquiries leave
    the payment refundable)."""
    chargeback_open_at_send = and_(
        Dispute.purchase_id == Refund.purchase_id,
        Dispute.status.not_in(INQUIRY_STATUSES),
        Dispute.opened_at <= Refund.sent_at,
        or_(Dispute.closed_at.is_(None), Dispute.closed_at > Refund.sent_at),
    )
    rows = db.session.execute(
        select(Refund.id, Purchase.user_id, User.email)
        .join(Purchase, Purchase.id == Refund.purchase_id)
        .join(User, User.id == Purchase.user_id)
        .where(
            Refund.refund_request_id.is_not(None),
            Refund.sent_at.is_not(None),
            exists().where(chargeback_open_at_send),
        )
    )
    return [
        Problem(user_id, email, f"refund {refund_id} was sent during a dispute")
        for refund_id, user_id, email in rows
    ]
