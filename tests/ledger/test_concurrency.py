import pytest
from sqlalchemy import func, select

from portal.accounts.models import User
from portal.db import db
from portal.errors import InsufficientCredits
from portal.jobs import services as jobs
from portal.jobs.models import FailureReason, Job, JobStatus
from portal.ledger import services as ledger
from portal.ledger.models import EntryKind, LedgerEntry
from tests.concurrency import run_together
from tests.factories import make_user

TOKEN = "test-token"


@pytest.fixture
def threaded_app(make_app):
    """An app whose pool holds a connection for every thread."""
    return make_app(
        SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 60, "max_overflow": 0, "pool_pre_ping": True},
        PORTAL_SERVICE_TOKEN=TOKEN,
    )


def customer_with(credits: int) -> User:
    user = make_user()
    ledger.grant(user.id, credits, f"grant:{user.id}:setup", "setup")
    db.session.commit()
    return user


def balance_of(user_id: int) -> int:
    return db.session.scalar(select(User.credits_balance).where(User.id == user_id))


def entries(kind: EntryKind) -> int:
    return db.session.scalar(
        select(func.count()).select_from(LedgerEntry).where(LedgerEntry.kind == kind)
    )


def test_fifty_one_credit_jobs_against_ten_credits_charge_exactly_ten(threaded_app):
    user = customer_with(10)
    user_id, email = user.id, user.email

    def charge(index: int):
        job, created = jobs.charge_job(f"burst-{index}", email, "upscale", 1)
        return job.id, created

    outcomes = run_together(threaded_app, 50, charge)

    charged = [outcome for outcome in outcomes if isinstance(outcome, tuple)]
    refused = [outcome for outcome in outcomes if isinstance(outcome, InsufficientCredits)]
    assert len(charged) == 10, outcomes
    assert len(refused) == 40, outcomes
    assert all(created for _, created in charged)
    assert len({job_id for job_id, _ in charged}) == 10
    assert balance_of(user_id) == 0
    assert entries(EntryKind.JOB_CHARGE) == 10
    assert db.session.scalar(select(func.count()).select_from(Job)) == 10
    assert ledger.check_books() == []


def test_one_failure_reported_twenty_times_at_once_restores_once(threaded_app):
    user = customer_with(10)
    user_id = user.id
    job, _ = jobs.charge_job("flaky-job", user.email, "upscale", 4)
    job_id = job.id
    assert balance_of(user_id) == 6

    def fail(_index: int):
        failed = jobs.fail_job(job_id, FailureReason.PLATFORM_ERROR, "GPU node lost")
        return failed.status, failed.credits_restored

    outcomes = run_together(threaded_app, 20, fail)

    assert outcomes == [(JobStatus.FAILED, True)] * 20
    assert entries(EntryKind.JOB_REFUND) == 1
    assert balance_of(user_id) == 10
    assert db.session.get(Job, job_id).credits_restored
    assert ledger.check_books() == []


def test_twenty_identical_posts_at_once_create_one_job_and_one_charge(threaded_app):
    user = customer_with(50)
    user_id = user.id
    body = {
        "external_id": "platform-42",
        "customer_email": user.email,
        "operation": "upscale",
        "credits": 7,
    }

    def post(_index: int):
        response = threaded_app.test_client().post(
            "/api/v1/jobs", json=body, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        return response.status_code, response.get_json()

    outcomes = run_together(threaded_app, 20, post)

    assert not [outcome for outcome in outcomes if isinstance(outcome, Exception)], outcomes
    statuses = sorted(status for status, _ in outcomes)
    assert statuses == [200] * 19 + [201], outcomes
    assert len({document["id"] for _, document in outcomes}) == 1
    assert {document["balance_after"] for _, document in outcomes} == {43}
    assert db.session.scalar(select(func.count()).select_from(Job)) == 1
    assert entries(EntryKind.JOB_CHARGE) == 1
    assert balance_of(user_id) == 43
    assert ledger.check_books() == []
