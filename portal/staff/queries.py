"""What the staff pages read: the queue, its counts, and everything about one request."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam, func, or_, select, tuple_, union_all
from sqlalchemy.orm import aliased, joinedload, load_only

from portal.accounts.models import Role, User
from portal.audit import AuditLogEntry
from portal.billing.models import Purchase, Refund
from portal.db import MAX_ID, db
from portal.incidents.models import Incident
from portal.jobs.models import Job
from portal.ledger.models import CreditLot, LedgerEntry
from portal.ledger.queries import ENTRY_COLUMNS
from portal.refunds.eligibility import Precheck, RequestReason, Verdict, precheck
from portal.refunds.models import OPEN_STATUSES, RefundRequest, RefundRequestEvent, RequestStatus
from portal.refunds.snapshot import job_restored_at_column, snapshot_of, used_up_at_column
from portal.staff.services import asked_for_money_back

QUEUE_PAGE_SIZE = 50
Assignee = aliased(User)


@dataclass(frozen=True)
class QueueFilter:
    statuses: tuple[RequestStatus, ...] = OPEN_STATUSES
    verdict: Verdict | None = None
    reason: RequestReason | None = None
    assignee: str = "anyone"  # "me", "nobody" or "anyone"
    overdue: bool = False
    sort: str = "due"  # "due" (soonest first) or "age" (oldest first)


QUEUE_ROW_COLUMNS = (
    RefundRequest.id,
    RefundRequest.reason,
    RefundRequest.verdict,
    RefundRequest.recommended_cents,
    RefundRequest.status,
    RefundRequest.created_at,
    RefundRequest.due_at,
)


@dataclass(frozen=True)
class QueuePage:
    rows: list
    next_cursor: str | None


def encode_cursor(row) -> str:
    request = row[0]
    return f"{int(request.due_at.timestamp() * 1_000_000)}-{request.id}"


def decode_cursor(text: str | None) -> tuple[datetime, int] | None:
    """Read a queue cursor; None for anything malformed."""
    if not text or text.count("-") != 1:
        return None
    micros, _, request_id = text.partition("-")
    if (
        not (
            micros.isascii() and micros.isdigit() and request_id.isascii() and request_id.isdigit()
        )
        or len(micros) > 18
    ):
        return None
    if not 0 < int(request_id) <= MAX_ID:
        return None
    try:
        due = datetime.fromtimestamp(int(micros) / 1_000_000, UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return due, int(request_id)


def queue_page(
    filters: QueueFilter,
    staff_id: int,
    now: datetime,
    cursor: str | None,
    size: int = QUEUE_PAGE_SIZE,
) -> QueuePage:
    """One page of the queue, in one query, found by keyset (never OFFSET)."""
    query = (
        select(
            RefundRequest, User.email, Purchase.package_code, Purchase.amount_cents, Assignee.email
        )
        # Only what a queue row shows: the stored pre-check (JSON) and the customer's
        # text are the bulk of a request and belong to its own page.
        .options(load_only(*QUEUE_ROW_COLUMNS, raiseload=True))
        .join(User, User.id == RefundRequest.user_id)
        .join(Purchase, Purchase.id == RefundRequest.purchase_id)
        .outerjoin(Assignee, Assignee.id == RefundRequest.assignee_id)
        .where(_status_in(filters.statuses))
    )
    if filters.verdict is not None:
        query = query.where(RefundRequest.verdict == filters.verdict)
    if filters.reason is not None:
        query = query.where(RefundRequest.reason == filters.reason)
    if filters.assignee == "me":
        query = query.where(RefundRequest.assignee_id == staff_id)
    elif filters.assignee == "nobody":
        query = query.where(RefundRequest.assignee_id.is_(None))
    if filters.overdue:
        query = query.where(RefundRequest.overdue(now))
    if filters.sort == "age":
        position = parse_age_cursor(cursor)
        if position is not None:
            query = query.where(RefundRequest.id > position)
        query = query.order_by(RefundRequest.id)
    else:
        position = decode_cursor(cursor)
        if position is not None:
            query = query.where(tuple_(RefundRequest.due_at, RefundRequest.id) > tuple_(*position))
        query = query.order_by(RefundRequest.due_at, RefundRequest.id)
    rows = db.session.execute(query.limit(size + 1)).all()
    more = len(rows) > size
    rows = rows[:size]
    if not more or not rows:
        return QueuePage(rows, None)
    last = rows[-1]
    return QueuePage(rows, str(last[0].id) if filters.sort == "age" else encode_cursor(last))


def _status_in(statuses):
    """`status IN (...)` written out, so the planner can match the open-requests indexes.

    Those indexes are partial (`OPEN_CONDITION`); with the statuses sent as parameters a
    prepared statement's generic plan could not prove that it may use them.
    """
    return RefundRequest.status.in_(
        bindparam("statuses", list(statuses), unique=True, expanding=True, literal_execute=True)
    )


def parse_age_cursor(text: str | None) -> int | None:
    if not text or not text.isascii() or not text.isdigit() or len(text) > 10:
        return None
    number = int(text)
    return number if 0 < number <= MAX_ID else None


# Decided requests are counted over a recent window only: all-time totals grow with the
# data set and tell a staff member nothing about today's work.
DECIDED_WINDOW = timedelta(days=7)
DECIDED_STATUSES = (RequestStatus.APPROVED, RequestStatus.DENIED)


def status_counts(now: datetime) -> dict[RequestStatus, int]:
    """Open requests by status, and the requests decided in the last `DECIDED_WINDOW`."""
    still_open = (
        select(RefundRequest.status, func.count())
        .where(_status_in(OPEN_STATUSES))
        .group_by(RefundRequest.status)
    )
    decided = (
        select(RefundRequest.status, func.count())
        .where(
            RefundRequest.decided_at >= now - DECIDED_WINDOW,
            _status_in(DECIDED_STATUSES),
        )
        .group_by(RefundRequest.status)
    )
    return dict(db.session.execute(union_all(still_open, decided)).all())


def staff_members() -> list[tuple[int, str]]:
    """(id, e-mail) of every staff member, by e-mail.

    Read on every page that lists them: a process-wide cache of this list was measured
    with `make bench` (staff queue and request detail, cache on and off) and made no
    difference beyond run-to-run noise, so the list is simply read.
    """
    return [
        (member_id, email)
        for member_id, email in db.session.execute(
            select(User.id, User.email).where(User.role == Role.STAFF).order_by(User.email)
        )
    ]


def team() -> list[User]:
    """Every staff member, by e-mail, with their authenticator's state (the Team page)."""
    return list(
        db.session.scalars(select(User).where(User.role == Role.STAFF).order_by(User.email))
    )


@dataclass
class RequestDetail:
    request: RefundRequest
    customer: User
    purchase: Purchase
    unused: int
    refunds: list[Refund]
    entries: list
    jobs: list[Job]
    other_requests: list[RefundRequest]
    incidents: list[Incident]
    timeline: list[RefundRequestEvent]
    staff: list[tuple[int, str]]
    # The pre-check run again on today's data, beside the one stored at filing.
    current: Precheck


def request_detail(request_id: int, now: datetime) -> RequestDetail | None:
    """Everything a staff member needs to decide a request, without leaving the page.

    One query brings the request with what hangs on it (customer, purchase and its credit
    lot and refunds, the job, the timeline, the attachments); the lists around the
    purchase follow, one query each. The pre-check is run again from the same rows.
    """
    found = _request_with_what_hangs_on_it(request_id)
    if found is None:
        return None
    request, customer, purchase, unused, used_up_at, job, job_restored_at = found
    around = purchase.created_at - timedelta(days=1)
    # One read serves the page's list and the pre-check, whose period may reach further.
    incidents = _incidents_between(
        min(around, purchase.credited_at or around), max(request.created_at, used_up_at or now)
    )
    snapshot = snapshot_of(
        customer,
        purchase,
        request.reason,
        unused=unused or 0,
        used_up_at=used_up_at,
        incidents=incidents,
        now=now,
        job=job,
        job_restored_at=job_restored_at,
        money_back_instead=asked_for_money_back(request),
    )
    return RequestDetail(
        request=request,
        customer=customer,
        purchase=purchase,
        unused=unused or 0,
        refunds=sorted(purchase.refunds, key=lambda refund: refund.id),
        entries=_entries_since(customer.id, around),
        jobs=_jobs_since(customer.id, around),
        other_requests=_other_requests(customer.id, request.id),
        incidents=[
            incident
            for incident in incidents
            if incident.started_at < request.created_at
            and (incident.ended_at is None or incident.ended_at > around)
        ],
        timeline=request.events,
        staff=staff_members(),
        current=precheck(snapshot, now),
    )


def _request_with_what_hangs_on_it(request_id: int):
    return (
        db.session.execute(
            select(
                RefundRequest,
                User,
                Purchase,
                CreditLot.credits_remaining,
                used_up_at_column(),
                Job,
                job_restored_at_column(),
            )
            .join(User, User.id == RefundRequest.user_id)
            .join(Purchase, Purchase.id == RefundRequest.purchase_id)
            .outerjoin(CreditLot, CreditLot.purchase_id == Purchase.id)
            .outerjoin(Job, Job.id == RefundRequest.job_id)
            .where(RefundRequest.id == request_id)
            .options(
                joinedload(RefundRequest.events),
                joinedload(RefundRequest.attachments),
                joinedload(Purchase.refunds),
            )
        )
        .unique()
        .one_or_none()
    )


def _entries_since(customer_id: int, since: datetime) -> list:
    return db.session.execute(
        select(*ENTRY_COLUMNS)
        .where(LedgerEntry.user_id == customer_id, LedgerEntry.created_at >= since)
        .order_by(LedgerEntry.created_at, LedgerEntry.id)
        .limit(30)
    ).all()


def _jobs_since(customer_id: int, since: datetime) -> list[Job]:
    return list(
        db.session.scalars(
            select(Job)
            .where(Job.user_id == customer_id, Job.created_at >= since)
            # In creation order, which the (user, created) index hands over ready-sorted.
            .order_by(Job.created_at, Job.id)
            .limit(20)
        )
    )


def _incidents_between(start: datetime, end: datetime) -> list[Incident]:
    return list(
        db.session.scalars(
            select(Incident)
            .where(
                Incident.started_at < end,
                or_(Incident.ended_at.is_(None), Incident.ended_at > start),
            )
            .order_by(Incident.started_at)
        )
    )


def _other_requests(customer_id: int, request_id: int) -> list[RefundRequest]:
    return list(
        db.session.scalars(
            select(RefundRequest)
            .where(RefundRequest.user_id == customer_id, RefundRequest.id != request_id)
            .order_by(RefundRequest.id.desc())
            .limit(10)
        )
    )


def rules_then(stored: dict, current) -> dict[str, dict]:
    """The stored rules, by code, whose outcome or sentence differs between filing and now.

    The page shows today's pre-check once and, under a rule that changed, what it said
    when the customer filed.
    """
    before = {rule["code"]: rule for rule in stored["rules"]}
    return {
        rule.code: before[rule.code]
        for rule in current.rules
        if rule.code in before
        and (before[rule.code]["outcome"], before[rule.code]["explanation"])
        != (rule.outcome.value, rule.explanation)
    }


@dataclass(frozen=True)
class AuditFilter:
    action: str | None = None
    actor_id: int | None = None
    target_type: str | None = None
    start: datetime | None = None
    end: datetime | None = None


def _audit_query(filters: AuditFilter):
    query = select(AuditLogEntry, User.email).outerjoin(User, User.id == AuditLogEntry.actor_id)
    if filters.action:
        query = query.where(AuditLogEntry.action == filters.action)
    if filters.actor_id:
        query = query.where(AuditLogEntry.actor_id == filters.actor_id)
    if filters.target_type:
        query = query.where(AuditLogEntry.target_type == filters.target_type)
    if filters.start:
        query = query.where(AuditLogEntry.created_at >= filters.start)
    if filters.end:
        query = query.where(AuditLogEntry.created_at < filters.end)
    return query


def audit_page(filters: AuditFilter, before: int | None, size: int = 100) -> list:
    query = _audit_query(filters)
    if before:
        query = query.where(AuditLogEntry.id < before)
    return db.session.execute(query.order_by(AuditLogEntry.id.desc()).limit(size)).all()


def audit_for_export(filters: AuditFilter):
    query = _audit_query(filters).order_by(AuditLogEntry.id.desc())
    yield from db.session.execute(query.execution_options(stream_results=True, yield_per=1000))


def audit_actions() -> list[str]:
    return list(
        db.session.scalars(select(AuditLogEntry.action).distinct().order_by(AuditLogEntry.action))
    )
