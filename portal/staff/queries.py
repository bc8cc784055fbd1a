"""What the staff pages read: the queue, its counts, and everything about one request."""

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, func, or_, select, tuple_
from sqlalchemy.orm import aliased

from portal.accounts.models import Role, User
from portal.billing.models import Purchase, Refund
from portal.db import MAX_ID
from portal.extensions import db
from portal.jobs.models import Job
from portal.ledger.models import LedgerEntry
from portal.ledger.services import unused_credits
from portal.refunds.eligibility import RequestReason, Verdict
from portal.refunds.models import OPEN_STATUSES, RefundRequest, RefundRequestEvent, RequestStatus
from portal.staff.models import AuditLogEntry, Incident

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
        .join(User, User.id == RefundRequest.user_id)
        .join(Purchase, Purchase.id == RefundRequest.purchase_id)
        .outerjoin(Assignee, Assignee.id == RefundRequest.assignee_id)
        .where(RefundRequest.status.in_(filters.statuses))
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
        query = query.where(
            RefundRequest.due_at < now, RefundRequest.status != RequestStatus.WAITING_ON_CUSTOMER
        )
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


def parse_age_cursor(text: str | None) -> int | None:
    if not text or not text.isascii() or not text.isdigit() or len(text) > 10:
        return None
    number = int(text)
    return number if 0 < number <= MAX_ID else None


def status_counts() -> dict[RequestStatus, int]:
    """How many requests are in each status (one grouped query)."""
    return dict(
        db.session.execute(
            select(RefundRequest.status, func.count()).group_by(RefundRequest.status)
        ).all()
    )


def overdue_count(now: datetime) -> int:
    return db.session.scalar(
        select(func.count())
        .select_from(RefundRequest)
        .where(
            RefundRequest.status.in_((RequestStatus.OPEN, RequestStatus.IN_REVIEW)),
            RefundRequest.due_at < now,
        )
    )


def staff_members() -> list[User]:
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
    staff: list[User]
    changed_rules: set[str] = field(default_factory=set)


def request_detail(request_id: int) -> RequestDetail | None:
    """Everything a staff member needs to decide a request, without leaving the page."""
    request = db.session.get(RefundRequest, request_id)
    if request is None:
        return None
    customer = db.session.get(User, request.user_id)
    purchase = db.session.get(Purchase, request.purchase_id)
    around = purchase.created_at - timedelta(days=1)
    entries = db.session.execute(
        select(
            LedgerEntry.id,
            LedgerEntry.created_at,
            LedgerEntry.kind,
            LedgerEntry.credits,
            LedgerEntry.balance_after,
            LedgerEntry.memo,
            LedgerEntry.purchase_id,
            LedgerEntry.job_id,
        )
        .where(LedgerEntry.user_id == customer.id, LedgerEntry.created_at >= around)
        .order_by(LedgerEntry.created_at, LedgerEntry.id)
        .limit(30)
    ).all()
    jobs = list(
        db.session.scalars(
            select(Job)
            .where(Job.user_id == customer.id, Job.created_at >= around)
            .order_by(Job.id)
            .limit(20)
        )
    )
    incident_end = request.created_at
    incidents = list(
        db.session.scalars(
            select(Incident)
            .where(
                Incident.started_at < incident_end,
                or_(Incident.ended_at.is_(None), Incident.ended_at > around),
            )
            .order_by(Incident.started_at)
        )
    )
    return RequestDetail(
        request=request,
        customer=customer,
        purchase=purchase,
        unused=unused_credits(purchase),
        refunds=list(
            db.session.scalars(
                select(Refund).where(Refund.purchase_id == purchase.id).order_by(Refund.id)
            )
        ),
        entries=entries,
        jobs=jobs,
        other_requests=list(
            db.session.scalars(
                select(RefundRequest)
                .where(and_(RefundRequest.user_id == customer.id, RefundRequest.id != request.id))
                .order_by(RefundRequest.id.desc())
                .limit(10)
            )
        ),
        incidents=incidents,
        timeline=list(
            db.session.scalars(
                select(RefundRequestEvent)
                .where(RefundRequestEvent.request_id == request.id)
                .order_by(RefundRequestEvent.id)
            )
        ),
        staff=staff_members(),
    )


def changed_rules(stored: dict, current) -> set[str]:
    """Codes of the rules whose outcome or sentence differs between filing and now."""
    before = {rule["code"]: (rule["outcome"], rule["explanation"]) for rule in stored["rules"]}
    return {
        rule.code
        for rule in current.rules
        if before.get(rule.code) != (rule.outcome.value, rule.explanation)
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


def incidents_since(since: datetime) -> list[Incident]:
    """Incidents that started, or were still going on, since `since`, newest first."""
    return list(
        db.session.scalars(
            select(Incident)
            .where(
                or_(
                    Incident.started_at >= since,
                    Incident.ended_at.is_(None),
                    Incident.ended_at >= since,
                )
            )
            .order_by(Incident.started_at.desc())
        )
    )
