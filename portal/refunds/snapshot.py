"""The pre-check's snapshot: what eligibility reads about a customer and one purchase.

One builder, `snapshot_of`, serves both readers. Filing reads the facts with
`snapshot_for`; the staff request page reads them in its own query, with the request,
and hands them over. Either way the same rules pick the incidents and the nearby
purchases (with what is left of their credits), so the customer's pre-check and the one
staff see again agree.
"""

from datetime import datetime

from sqlalchemy import case, func, or_, select

from portal.accounts.models import User
from portal.billing.models import Purchase
from portal.db import db
from portal.incidents.models import Incident
from portal.jobs.models import Job
from portal.ledger.models import CreditLot, EntryKind, LedgerEntry, LotAllocation
from portal.refunds import eligibility
from portal.refunds.eligibility import RequestReason


def used_up_at_column():
    """When the lot's last credit was spent: its latest charge, once nothing is left.

    A column expression on `CreditLot`, so that a page can read it with the lot.
    """
    last_charge = (
        select(func.max(LedgerEntry.created_at))
        .join(LotAllocation, LotAllocation.ledger_entry_id == LedgerEntry.id)
        .where(LotAllocation.lot_id == CreditLot.id, LotAllocation.credits < 0)
        .correlate(CreditLot)
        .scalar_subquery()
    )
    # The charges are only looked at for a lot that is empty.
    return case((CreditLot.credits_remaining == 0, last_charge))


def job_restored_at_column():
    """When a job's credits were given back; a column expression on `Job`."""
    return (
        select(func.min(LedgerEntry.created_at))
        .where(LedgerEntry.job_id == Job.id, LedgerEntry.kind == EntryKind.JOB_REFUND)
        .correlate(Job)
        .scalar_subquery()
    )


def held_period(
    purchase: Purchase, used_up_at: datetime | None, now: datetime | None
) -> tuple[datetime, datetime | None] | None:
    """From when until when the customer held this purchase's credits (None: not yet).

    The end is when the last credit was spent, else `now`; None means still open.
    """
    if purchase.credited_at is None:
        return None
    return purchase.credited_at, used_up_at or now


def _overlaps(incident: Incident, period: tuple[datetime, datetime | None]) -> bool:
    start, end = period
    return (incident.ended_at is None or incident.ended_at > start) and (
        end is None or incident.started_at < end
    )


def incidents_during(period: tuple[datetime, datetime | None]) -> list[Incident]:
    """The incidents that overlap `period`: `_overlaps` as SQL."""
    start, end = period
    query = select(Incident).where(or_(Incident.ended_at.is_(None), Incident.ended_at > start))
    if end is not None:
        query = query.where(Incident.started_at < end)
    return list(db.session.scalars(query.order_by(Incident.started_at)))


def purchases_paid_near(purchase: Purchase) -> tuple[eligibility.PurchaseFacts, ...]:
    """The customer's other purchases paid within the duplicate window of this one.

    Each comes with what is left of its credits: a second payment whose credits were used
    is a purchase made on purpose, not a duplicate charge.
    """
    if purchase.paid_at is None:
        return ()
    window = eligibility.duplicate_window()
    return tuple(
        _purchase_facts(other, unused or 0)
        for other, unused in db.session.execute(
            select(Purchase, CreditLot.credits_remaining)
            .outerjoin(CreditLot, CreditLot.purchase_id == Purchase.id)
            .where(
                Purchase.user_id == purchase.user_id,
                Purchase.id != purchase.id,
                Purchase.paid_at.between(purchase.paid_at - window, purchase.paid_at + window),
            )
            .order_by(Purchase.paid_at, Purchase.id)
        )
    )


def snapshot_of(
    user: User,
    purchase: Purchase,
    reason: RequestReason,
    *,
    unused: int,
    used_up_at: datetime | None,
    incidents: list[Incident],
    now: datetime | None,
    job: Job | None = None,
    job_restored_at: datetime | None = None,
    money_back_instead: bool = False,
) -> eligibility.Snapshot:
    """The pre-check's snapshot from facts already read.

    `incidents` may hold more than the ones that matter: only those that overlap the
    time the customer held this purchase's credits are kept.
    """
    period = held_period(purchase, used_up_at, now)
    return eligibility.Snapshot(
        reason=reason,
        purchase=_purchase_facts(purchase, unused),
        unused_credits=unused,
        used_up_at=used_up_at,
        other_purchases=purchases_paid_near(purchase),
        job=_job_facts(job, job_restored_at) if job is not None else None,
        incidents=tuple(
            eligibility.IncidentFacts(incident.title, incident.started_at, incident.ended_at)
            for incident in incidents
            if period is not None and _overlaps(incident, period)
        ),
        account_terminated=user.is_terminated,
        money_back_instead=money_back_instead,
    )


def snapshot_for(
    user: User,
    purchase: Purchase,
    reason: RequestReason,
    job: Job | None = None,
    money_back_instead: bool = False,
    now: datetime | None = None,
) -> eligibility.Snapshot:
    """Read everything the pre-check needs about this customer and purchase."""
    unused, used_up_at = db.session.execute(
        select(CreditLot.credits_remaining, used_up_at_column()).where(
            CreditLot.purchase_id == purchase.id
        )
    ).one_or_none() or (0, None)
    period = held_period(purchase, used_up_at, now)
    restored_at = None
    if job is not None:
        restored_at = db.session.scalar(
            select(job_restored_at_column()).select_from(Job).where(Job.id == job.id)
        )
    return snapshot_of(
        user,
        purchase,
        reason,
        unused=unused,
        used_up_at=used_up_at,
        incidents=incidents_during(period) if period is not None else [],
        now=now,
        job=job,
        job_restored_at=restored_at,
        money_back_instead=money_back_instead,
    )


def _purchase_facts(purchase: Purchase, unused: int) -> eligibility.PurchaseFacts:
    return eligibility.PurchaseFacts(
        id=purchase.id,
        package_code=purchase.package_code,
        credits=purchase.credits,
        amount_cents=purchase.amount_cents,
        currency=purchase.currency,
        paid_at=purchase.paid_at,
        credited_at=purchase.credited_at,
        refunded_cents=purchase.refunded_cents,
        unused_credits=unused,
        payment_method_fingerprint=purchase.payment_method_fingerprint,
    )


def job_facts(job: Job) -> eligibility.JobFacts:
    """The pre-check's facts about one job, read on their own."""
    restored_at = db.session.scalar(
        select(job_restored_at_column()).select_from(Job).where(Job.id == job.id)
    )
    return _job_facts(job, restored_at)


def _job_facts(job: Job, restored_at: datetime | None) -> eligibility.JobFacts:
    return eligibility.JobFacts(
        id=job.id,
        operation=job.operation,
        credits=job.credits,
        status=job.status.value,
        failure_reason=job.failure_reason.value if job.failure_reason else None,
        credits_restored=job.credits_restored,
        restored_at=restored_at,
    )
