import itertools

import pytest
from sqlalchemy import func, select

from portal.accounts.models import User
from portal.db import db
from portal.errors import InsufficientCredits
from portal.jobs import services as jobs
from portal.jobs.models import FailureReason, Job, JobStatus
from portal.ledger import alerts
from portal.ledger import services as ledger
from portal.ledger.models import EntryKind, LedgerEntry
from portal.notifications.models import OutboxEmail
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


def alert_emails_to(email: str) -> list[OutboxEmail]:
    return list(
        db.session.scalars(
            select(OutboxEmail).where(
                OutboxEmail.to_address == email, OutboxEmail.subject.contains("below")
            )
        )
    )


def test_twenty_charges_crossing_the_threshold_at_once_send_one_alert(threaded_app):
    user = customer_with(100)
    alerts.set_alert(user.id, 90)
    user_id, email = user.id, user.email

    def post(index: int):
        body = {
            "external_id": f"crossing-{index}",
            "customer_email": email,
            "operation": "upscale",
            "credits": 3,
        }
        response = threaded_app.test_client().post(
            "/api/v1/jobs", json=body, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        return response.status_code, response.get_json()

    outcomes = run_together(threaded_app, 20, post)

    assert not [outcome for outcome in outcomes if isinstance(outcome, Exception)], outcomes
    assert [status for status, _ in outcomes] == [201] * 20, outcomes
    # Each answer gives the balance as it stood once its call was done (later charges may
    # already be in it) and whether that is below 90; the last charge to commit sees 40.
    answers = [(doc["balance_after"], doc["balance_below_threshold"]) for _, doc in outcomes]
    assert all(below == (balance < 90) for balance, below in answers), answers
    assert {balance for balance, _ in answers} <= set(range(40, 100, 3)), answers
    assert min(balance for balance, _ in answers) == 40
    [alert] = alert_emails_to(email)
    # The charge that crossed is the one that took the balance from 91 to 88.
    assert "Your balance is 88 credits, below the 90 credits" in alert.body_text
    assert balance_of(user_id) == 40
    assert db.session.get(User, user_id).low_balance_alert_armed is False
    assert ledger.check_books() == []


def test_a_purchase_racing_charges_re_arms_at_most_once_per_fall(threaded_app):
    # Ten charges and a grant that can lift the balance back above the threshold, all at
    # once: however they interleave, the balance starts at 60 and ends at 40, so it fell
    # below 50 once or (re-armed by the grant in between) twice. Each fall the ledger's
    # entries show is one e-mail.
    user = customer_with(60)
    alerts.set_alert(user.id, 50)
    user_id, email = user.id, user.email

    def work(index: int):
        if index == 10:
            return ledger_grant(user_id, 30)
        return jobs.charge_job(f"mixed-{index}", email, "upscale", 5)

    outcomes = run_together(threaded_app, 11, work)

    assert not [outcome for outcome in outcomes if isinstance(outcome, Exception)], outcomes
    balances = [60] + list(
        db.session.scalars(
            select(LedgerEntry.balance_after)
            .where(LedgerEntry.user_id == user_id)
            .order_by(LedgerEntry.id)
            .offset(1)
        )
    )
    falls = sum(1 for before, after in itertools.pairwise(balances) if before >= 50 > after)
    assert falls in (1, 2), balances
    assert len(alert_emails_to(email)) == falls
    assert balance_of(user_id) == 40
    assert db.session.get(User, user_id).low_balance_alert_armed is False
    assert ledger.check_books() == []


def ledger_grant(user_id: int, credits: int):
    ledger.grant(user_id, credits, f"grant:{user_id}:top-up", "top-up")
    db.session.commit()
