"""Charging credits for processing jobs and settling how they ended."""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Boolean, Integer, String, bindparam, column, insert, select, text
from sqlalchemy.exc import IntegrityError

from portal.billing.money_back import state
from portal.db import db, locked, transactional
from portal.errors import (
    AccountTerminated,
    Conflict,
    InsufficientCredits,
    NotFound,
    PortalError,
)
from portal.jobs.models import FailureReason, Job, JobStatus
from portal.ledger import alerts
from portal.ledger import services as ledger
from portal.ledger.models import EntryKind, LedgerEntry
from portal.ledger.services import LockedAccount
from portal.pagination import Page, keyset_page
from portal.timeutil import utcnow

JOBS = Job.__table__
# A job's columns beside the account's in one row (see `_lock_platform_customer`).
JOB_COLUMNS = [column.label(f"job_{column.key}") for column in JOBS.c]
# Built once (see ledger.services): charging a job runs them every time.
_LOCK_CUSTOMER_WITH_JOB = (
    select(*LockedAccount.columns(), *JOB_COLUMNS)
    .select_from(ledger.USERS.outerjoin(JOBS, JOBS.c.external_id == bindparam("external_id")))
    .where(ledger.USERS.c.email == bindparam("email"))
    .with_for_update(of=ledger.USERS)
)
_LOCK_CUSTOMERS = (
    select(*LockedAccount.columns())
    .where(ledger.USERS.c.email.in_(bindparam("emails", expanding=True)))
    .order_by(ledger.USERS.c.id)
    .with_for_update()
)
_JOBS_BY_EXTERNAL_IDS = select(*JOB_COLUMNS).where(
    JOBS.c.external_id.in_(bindparam("ids", expanding=True))
)
# The ids come back in the order the jobs were given.
_INSERT_JOBS = insert(JOBS).returning(JOBS.c.id, sort_by_parameter_order=True)
# PostgreSQL's `charge_job` (see `_charge_in_one_call`): its columns named, so that they
# are read by name and typed as the job's; a SELECT that writes (see portal.db).
_CHARGE_JOB_COLUMNS = [
    column("outcome", String),
    column("balance_after", Integer),
    column("low_balance_threshold", Integer),
    column("alert_due", Boolean),
    *(column(f"job_{job_column.key}", job_column.type) for job_column in JOBS.c),
]
_CHARGE_JOB = (
    text(
        f"SELECT {', '.join(each.name for each in _CHARGE_JOB_COLUMNS)} "  # noqa: S608  # nosec B608  (our own names)
        "FROM charge_job(:email, :external_id, :operation, :credits, :at)"
    )
    .columns(*_CHARGE_JOB_COLUMNS)
    .execution_options(writes=True)
)


@dataclass(frozen=True)
class JobRequest:
    """One job the platform asks to charge."""

    external_id: str
    customer_email: str
    operation: str
    credits: int

    @property
    def email(self) -> str:
        """The customer's address as accounts store it: trimmed, in lower case."""
        return self.customer_email.strip().lower()


@dataclass(frozen=True)
class Charged:
    """What became of one job the platform asked to charge: charged now (`created`) or
    earlier, with its customer's balance and alert just after it; or the refusal (in a
    batch, where one refusal must not stop the other jobs)."""

    job: Job | None = None
    created: bool = False
    balance_after: int | None = None
    low_balance_threshold: int | None = None
    refusal: PortalError | None = None


def _same_request(job: Job, account: LockedAccount, operation: str, credits: int) -> bool:
    return job.user_id == account.id and job.operation == operation and job.credits == credits


def _job_from(row) -> Job | None:
    """The job in a row of `JOB_COLUMNS`, as an object no session holds, or None."""
    values = {column.key: getattr(row, f"job_{column.key}") for column in JOBS.c}
    return Job(**values) if values["id"] is not None else None


def _jobs_by_external_id(external_ids: list[str]) -> dict[str, Job]:
    rows = db.session.execute(_JOBS_BY_EXTERNAL_IDS, {"ids": external_ids})
    return {job.external_id: job for job in map(_job_from, rows)}


def charge_job(
    external_id: str,
    customer_email: str,
    operation: str,
    credits: int,
    at: datetime | None = None,
) -> tuple[Job, bool]:
    """Start a job and charge its credits; return (job, created).

    Repeating a call with the same `external_id` returns the job it created, charging
    nothing more.

    :raises NotFound: no customer has this e-mail (staff and closed accounts are none).
    :raises AccountTerminated: the customer's account is terminated.
    :raises InsufficientCredits: the balance does not cover the job.
    :raises Conflict: the external id was used for a different job.
    """
    outcome = charge(JobRequest(external_id, customer_email, operation, credits), at)
    return db.session.get(Job, outcome.job.id), outcome.created


def _lock_platform_customer(
    customer_email: str, external_id: str
) -> tuple[LockedAccount | None, Job | None]:
    """The account with this e-mail (as `JobRequest.email` gives it), locked: every balance
    change of theirs waits; and the job already charged under `external_id`, if any, read
    in the same statement.
    Whether the platform may charge that account is `_plan`'s to say.

    On PostgreSQL a call that waited for the lock may not see the job its twin (same
    external id) committed meanwhile: its insert then breaks the unique key, and
    `charge` answers from the committed job (see there).
    """
    parameters = {"email": customer_email, "external_id": external_id}
    row = db.session.execute(_LOCK_CUSTOMER_WITH_JOB, parameters).first()
    if row is None:
        return None, None
    return LockedAccount.from_row(row), _job_from(row)


def _new_job_values(account: LockedAccount, request: JobRequest, created_at: datetime) -> dict:
    """Every column of a job just started, as inserted (and as answered: nothing is read
    back)."""
    return {
        "user_id": account.id,
        "external_id": request.external_id,
        "operation": request.operation,
        "credits": request.credits,
        "status": JobStatus.RUNNING,
        "failure_reason": None,
        "failure_detail": None,
        "credits_restored": False,
        "created_at": created_at,
        "finished_at": None,
    }


def charge(request: JobRequest, at: datetime | None = None) -> Charged:
    """Charge one job; what became of it, with its customer's balance and alert just
    after it, as the charging transaction left them (the answer needs no second query).
    Repeating a call with the same external id answers with the job it created, charging
    nothing more.

    :raises NotFound: no customer the platform may name has this e-mail.
    :raises AccountTerminated: the customer's account is terminated.
    :raises InsufficientCredits: the balance does not cover the job.
    :raises Conflict: the external id was used for a different job.
    """
    # PostgreSQL charges one job in one call of its own function (see there).
    charge_one = _charge_in_one_call if db.engine.dialect.name == "postgresql" else _charge_one
    try:
        return charge_one(request, at)
    except IntegrityError:
        # The external id was taken between our look-up and insert: by a twin of this
        # call that committed while we waited for the lock, or by another customer's job.
        db.session.rollback()
        if request.external_id not in _jobs_by_external_id([request.external_id]):
            raise
        return charge_one(request, at)


@transactional
def _charge_one(request: JobRequest, at: datetime | None) -> Charged:
    account, existing = _lock_platform_customer(request.email, request.external_id)
    available = {account.id: account.credits_balance} if account is not None else {}
    answer = _plan(request, account, existing, available)
    if isinstance(answer, _Planned):
        _write([answer], at)
    return _answer(answer)


def _refusal(outcome: str, balance: int = 0, credits: int = 0) -> PortalError:
    """The refusal of a job, by the name `charge_job` gives it; `_plan` raises the same."""
    if outcome == "insufficient":
        return InsufficientCredits(balance, credits)
    error, message = _REFUSALS[outcome]
    return error(message)


_REFUSALS = {
    "not_found": (NotFound, "no customer with this e-mail"),
    "terminated": (AccountTerminated, "the customer's account is terminated"),
    "conflict": (Conflict, "external_id was already used for a different job"),
}


@transactional
def _charge_in_one_call(request: JobRequest, at: datetime | None) -> Charged:
    """`_charge_one` on PostgreSQL: the same decisions and rows, in one call of the
    database function `charge_job` (migration 5b9e3d7c1a24), because one job is charged
    before every image job and eight statements cost the portal several times what
    PostgreSQL spends on the whole charge. tests/jobs/test_charge_in_one_call.py holds the
    two to the same answers and rows. The function only says when the low-balance e-mail
    is due; it is queued here, in the same transaction.
    """
    email = request.email
    parameters = {
        "email": email,
        "external_id": request.external_id,
        "operation": request.operation,
        "credits": request.credits,
        "at": at or utcnow(),
    }
    row = db.session.execute(_CHARGE_JOB, parameters).one()
    if row.outcome not in ("charged", "repeat"):
        raise _refusal(row.outcome, row.balance_after, request.credits)
    if row.alert_due:
        alerts.queue_alert(email, row.balance_after, row.low_balance_threshold)
    return Charged(
        job=_job_from(row),
        created=row.outcome == "charged",
        balance_after=row.balance_after,
        low_balance_threshold=row.low_balance_threshold,
    )


# -- many jobs at once, and what one job shares with them -----------------------------


def charge_jobs(requests: list[JobRequest], at: datetime | None = None) -> list[Charged]:
    """Charge many jobs; return what became of each, in the order asked.

    Each job is charged as `charge_job` would, idempotently by its external id; one
    refused (no such customer, too few credits, an external id used for another job)
    does not stop the others. All of them are charged in one transaction: every
    customer named is locked in one statement, in the order of their ids (so two
    batches naming the same customers lock them in the same order and cannot deadlock;
    a single charge locks one), and the jobs, entries and balances are written a
    statement for all at once, not one for each.
    """
    try:
        return _charge_batch(requests, at)
    except IntegrityError:
        # Another call took one of these external ids meanwhile: charge them one by one,
        # so that only that job is refused.
        db.session.rollback()
        return [_charge_alone(request, at) for request in requests]


@dataclass
class _Planned:
    """A job of the batch to be charged: its request, its customer, and the job once
    inserted."""

    request: JobRequest
    account: LockedAccount
    balance_after: int
    job: Job | None = None


@transactional
def _charge_batch(requests: list[JobRequest], at: datetime | None) -> list[Charged]:
    emails = sorted({request.email for request in requests})
    accounts = {
        row.email: LockedAccount.from_row(row)
        for row in db.session.execute(_LOCK_CUSTOMERS, {"emails": emails})
    }
    earlier: dict[str, Job | _Planned] = dict(
        _jobs_by_external_id([request.external_id for request in requests])
    )
    # Decided in order, before anything is written, with each customer's balance as the
    # jobs before this one leave it.
    available = {account.id: account.credits_balance for account in accounts.values()}
    answers: list[Charged | _Planned | _Repeat] = []
    for request in requests:
        account = accounts.get(request.email)
        try:
            answers.append(_plan(request, account, earlier.get(request.external_id), available))
        except (NotFound, AccountTerminated, Conflict, InsufficientCredits) as refusal:
            answers.append(Charged(refusal=refusal))
            continue
        if isinstance(answers[-1], _Planned):
            earlier[request.external_id] = answers[-1]

    _write([answer for answer in answers if isinstance(answer, _Planned)], at)
    return [_answer(answer) for answer in answers]


def _write(planned: list[_Planned], at: datetime | None) -> None:
    """Insert the planned jobs and charge them, a statement for all of each kind of row."""
    if not planned:
        return
    created_at = at or utcnow()
    rows = [_new_job_values(item.account, item.request, created_at) for item in planned]
    job_ids = db.session.execute(_INSERT_JOBS, rows).scalars()
    for item, values, job_id in zip(planned, rows, job_ids, strict=True):
        item.job = Job(id=job_id, **values)
    ledger.spend_many(
        [
            ledger.Spend(
                item.account,
                item.request.credits,
                item.job.charge_key,
                item.job.id,
                item.request.operation,
            )
            for item in planned
        ],
        at,
    )


def _plan(
    request: JobRequest,
    account: LockedAccount | None,
    earlier: Job | _Planned | None,
    available: dict[int, int],
) -> Charged | _Planned:
    """What to do with one job, decided before anything is written: answer with the job
    charged earlier under its external id, charge it (`available` is the balance the jobs
    before it leave), or refuse it (raised).

    :raises NotFound: no customer the platform may name has this e-mail.
    :raises AccountTerminated: the customer's account is terminated.
    :raises Conflict: the external id was used for a different job.
    :raises InsufficientCredits: the balance does not cover the job.
    """
    if account is None or not account.known_to_the_platform:
        raise _refusal("not_found")
    if account.is_terminated:
        raise _refusal("terminated")
    if isinstance(earlier, _Planned):  # the same external id earlier in this batch
        asked = (account.id, request.operation, request.credits)
        if asked != (earlier.account.id, earlier.request.operation, earlier.request.credits):
            raise _refusal("conflict")
        return _Repeat(earlier, balance_after=available[account.id])
    if earlier is not None:
        if not _same_request(earlier, account, request.operation, request.credits):
            raise _refusal("conflict")
        return Charged(
            job=earlier,
            created=False,
            balance_after=available[account.id],
            low_balance_threshold=account.low_balance_threshold,
        )
    if available[account.id] < request.credits:
        raise _refusal("insufficient", available[account.id], request.credits)
    available[account.id] -= request.credits
    return _Planned(request, account, balance_after=available[account.id])


@dataclass
class _Repeat:
    """A job asked twice in one batch: the second answer, made once the first is charged."""

    first: _Planned
    balance_after: int


def _answer(answer: Charged | _Planned | _Repeat) -> Charged:
    if isinstance(answer, Charged):
        return answer
    planned = answer.first if isinstance(answer, _Repeat) else answer
    return Charged(
        job=planned.job,
        created=answer is planned,
        balance_after=answer.balance_after,
        low_balance_threshold=planned.account.low_balance_threshold,
    )


def _charge_alone(request: JobRequest, at: datetime | None) -> Charged:
    """Charge one job in a transaction of its own (after a batch's was refused)."""
    try:
        return charge(request, at)
    except (NotFound, AccountTerminated, Conflict, InsufficientCredits) as refusal:
        return Charged(refusal=refusal)


def _locked_job(job_id: int) -> Job:
    job = locked(Job, Job.id == job_id)
    if job is None:
        raise NotFound("no job with this id")
    return job


@transactional
def complete_job(job_id: int, at: datetime | None = None) -> Job:
    """Mark a running job succeeded; completing it again changes nothing.

    :raises NotFound: no such job.
    :raises Conflict: the job already failed.
    """
    job = _locked_job(job_id)
    if job.status == JobStatus.FAILED:
        raise Conflict("the job already failed")
    if job.status == JobStatus.RUNNING:
        job.status = JobStatus.SUCCEEDED
        job.finished_at = at or utcnow()
    return job


@transactional
def fail_job(job_id: int, reason: FailureReason, detail: str, at: datetime | None = None) -> Job:
    """Mark a running job failed; a platform error gives its credits back (once).

    Under the refund policy only failures caused by the platform are refunded; a job
    that failed on invalid input keeps its charge.

    :raises NotFound: no such job.
    :raises Conflict: the job succeeded, or failed for another reason.
    """
    job = _locked_job(job_id)
    if job.status == JobStatus.SUCCEEDED or (
        job.status == JobStatus.FAILED and job.failure_reason != reason
    ):
        raise Conflict(f"the job already {job.status.value}")
    if job.status == JobStatus.RUNNING:
        job.status = JobStatus.FAILED
        job.failure_reason = reason
        job.failure_detail = detail
        job.finished_at = at or utcnow()
    if reason == FailureReason.PLATFORM_ERROR and not job.credits_restored:
        restore_job_credits(job, at=at)
    return job


def restore_job_credits(job: Job, at: datetime | None = None) -> LedgerEntry:
    """Give a failed job's charge back to the lots it came from, in the caller's transaction."""
    charge = db.session.scalar(
        select(LedgerEntry).where(
            LedgerEntry.job_id == job.id, LedgerEntry.kind == EntryKind.JOB_CHARGE
        )
    )
    entry = ledger.restore(charge, job.restore_key, memo=job.operation, at=at)
    # Credits that return to a purchase whose payment is disputed go on hold with the rest.
    state.hold_returned_credits(entry)
    job.credits_restored = True
    return entry


def job_for_customer(user_id: int, job_id: int) -> Job:
    """Return the customer's job.

    :raises NotFound: no such job, or it belongs to someone else.
    """
    job = db.session.get(Job, job_id)
    if job is None or job.user_id != user_id:
        raise NotFound("no such job")
    return job


def _jobs_query(user_id: int):
    return select(Job).where(Job.user_id == user_id)


def jobs_page(user_id: int, size: int, before: int | None, after: int | None) -> Page:
    """Return one page of the customer's jobs, newest first."""
    return keyset_page(_jobs_query(user_id), Job.id, size, before, after, row_id=lambda r: r[0].id)


def latest_jobs(user_id: int, limit: int = 5) -> list[Job]:
    return list(db.session.scalars(_jobs_query(user_id).order_by(Job.id.desc()).limit(limit)))


@transactional
def restore_failed_job(job_id: int) -> Job:
    """Return a platform-failed job's credits if that has not happened yet (idempotent).

    :raises NotFound: no such job.
    :raises Conflict: the job did not fail on the platform's side.
    """
    job = _locked_job(job_id)
    if job.status != JobStatus.FAILED or job.failure_reason != FailureReason.PLATFORM_ERROR:
        raise Conflict("only a job that failed on the platform's side is refunded")
    if not job.credits_restored:
        restore_job_credits(job)
    return job
