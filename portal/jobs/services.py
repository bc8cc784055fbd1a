"""Charging credits for processing jobs and settling how they ended."""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from portal.accounts.models import User
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
from portal.ledger import services as ledger
from portal.ledger.models import EntryKind, LedgerEntry
from portal.pagination import Page, keyset_page
from portal.timeutil import utcnow


def _same_request(job: Job, user: User, operation: str, credits: int) -> bool:
    return job.user_id == user.id and job.operation == operation and job.credits == credits


def _job_by_external_id(external_id: str) -> Job | None:
    return db.session.scalar(select(Job).where(Job.external_id == external_id))


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
    try:
        return _charge_once(external_id, customer_email, operation, credits, at)
    except IntegrityError:
        # Calls for one customer wait for each other on the customer's lock, so the
        # job that took this external id between our look-up and insert is another
        # customer's.
        if _job_by_external_id(external_id) is None:
            raise
        raise Conflict("external_id was already used for a different job") from None


@transactional
def _charge_once(
    external_id: str, customer_email: str, operation: str, credits: int, at: datetime | None
) -> tuple[Job, bool]:
    user = _lock_platform_customer(customer_email)
    return _charge_locked(user, external_id, operation, credits, at)


def _lock_platform_customer(customer_email: str) -> User:
    """The customer the platform names, locked: every balance change of theirs waits.

    :raises NotFound: no customer the platform may name has this e-mail.
    :raises AccountTerminated: the customer's account is terminated.
    """
    user = ledger.lock_customer(customer_email.strip().lower())
    if user is None or not user.known_to_the_platform:
        raise NotFound("no customer with this e-mail")
    if user.is_terminated:
        raise AccountTerminated("the customer's account is terminated")
    return user


def _charge_locked(
    user: User, external_id: str, operation: str, credits: int, at: datetime | None
) -> tuple[Job, bool]:
    """Charge one job of the locked customer, or find it charged already. Every refusal
    is raised before anything is written, so a batch can go on with its other jobs.

    :raises Conflict: the external id was used for a different job.
    :raises InsufficientCredits: the balance does not cover the job.
    """
    existing = _job_by_external_id(external_id)
    if existing is not None:
        if not _same_request(existing, user, operation, credits):
            raise Conflict("external_id was already used for a different job")
        return existing, False
    if user.credits_balance < credits:
        raise InsufficientCredits(user.credits_balance, credits)
    job = Job(
        user_id=user.id,
        external_id=external_id,
        operation=operation,
        credits=credits,
        created_at=at or utcnow(),
    )
    db.session.add(job)
    db.session.flush()
    ledger.spend(
        user.id, credits, job.charge_key, job_id=job.id, memo=operation, at=at, locked_account=user
    )
    return job, True


# -- many jobs at once ------------------------------------------------------------------


@dataclass(frozen=True)
class JobRequest:
    """One job the platform asks to charge."""

    external_id: str
    customer_email: str
    operation: str
    credits: int


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


def charge(request: JobRequest, at: datetime | None = None) -> Charged:
    """Charge one job as `charge_job` does; what became of it, with its customer's balance
    and alert just after it, read before the commit (the answer needs no second query).

    :raises NotFound: no customer the platform may name has this e-mail.
    :raises AccountTerminated: the customer's account is terminated.
    :raises InsufficientCredits: the balance does not cover the job.
    :raises Conflict: the external id was used for a different job.
    """
    try:
        return _charge_one(request, at)
    except IntegrityError:
        db.session.rollback()
        outcome = _charge_alone(request, at)
        if outcome.refusal is not None:
            raise outcome.refusal from None
        return outcome


@transactional
def _charge_one(request: JobRequest, at: datetime | None) -> Charged:
    user = _lock_platform_customer(request.customer_email)
    return _charged(user, request, at)


def _charged(user: User, request: JobRequest, at: datetime | None) -> Charged:
    """Charge one job of the locked `user` (see `_charge_locked`), as a `Charged`."""
    job, created = _charge_locked(user, request.external_id, request.operation, request.credits, at)
    return Charged(
        job=_detached_copy(job),
        created=created,
        balance_after=user.credits_balance,
        low_balance_threshold=user.low_balance_threshold,
    )


def charge_jobs(requests: list[JobRequest], at: datetime | None = None) -> list[Charged]:
    """Charge many jobs; return what became of each, in the order asked.

    Each job is charged as `charge_job` would, idempotently by its external id; one
    refused (no such customer, too few credits, an external id used for another job)
    does not stop the others. The jobs of one customer are charged in one transaction,
    under one lock of their account, in the order given; customers one after another,
    so no two accounts are ever locked together.
    """
    outcomes: list[Charged | None] = [None] * len(requests)
    by_customer: dict[str, list[int]] = {}
    for index, request in enumerate(requests):
        by_customer.setdefault(request.customer_email.strip().lower(), []).append(index)
    for email, indexes in by_customer.items():
        try:
            charged = _charge_customers_jobs(email, [requests[i] for i in indexes], at)
        except IntegrityError:
            # Another customer's job took one of these external ids meanwhile: charge
            # them one by one, so that only that job is refused.
            db.session.rollback()
            charged = [_charge_alone(requests[i], at) for i in indexes]
        for index, outcome in zip(indexes, charged, strict=True):
            outcomes[index] = outcome
    return outcomes


@transactional
def _charge_customers_jobs(
    email: str, requests: list[JobRequest], at: datetime | None
) -> list[Charged]:
    try:
        user = _lock_platform_customer(email)
    except (NotFound, AccountTerminated) as refusal:
        return [Charged(refusal=refusal) for _ in requests]
    charged = []
    for request in requests:
        try:
            charged.append(_charged(user, request, at))
        except (Conflict, InsufficientCredits) as refusal:
            charged.append(Charged(refusal=refusal))
    return charged


def _charge_alone(request: JobRequest, at: datetime | None) -> Charged:
    """Charge one job in a transaction of its own (after a batch's was refused)."""
    try:
        job, created = charge_job(
            request.external_id, request.customer_email, request.operation, request.credits, at
        )
    except (NotFound, AccountTerminated, Conflict, InsufficientCredits) as refusal:
        return Charged(refusal=refusal)
    account = db.session.get(User, job.user_id)
    return Charged(
        job=job,
        created=created,
        balance_after=account.credits_balance,
        low_balance_threshold=account.low_balance_threshold,
    )


def _detached_copy(job: Job) -> Job:
    """The job's values as they are now, in an object the commit will not expire: a batch
    answers from these instead of reading each job back."""
    return Job(**{column.key: getattr(job, column.key) for column in Job.__table__.columns})


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
