"""Charging many jobs in one call: each job answered as `POST /jobs` would answer it,
idempotent by its own external id, one refusal never stopping the others; and two
platforms sending the same batch at once charge every job once, on both databases."""

import pytest
from sqlalchemy import func, select

from portal.db import db
from portal.jobs.models import Job
from portal.ledger import services as ledger
from portal.ledger.models import EntryKind, LedgerEntry
from tests.concurrency import run_together
from tests.factories import make_purchase, make_user

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(autouse=True)
def _service_token(app, monkeypatch):
    monkeypatch.setitem(app.config, "PORTAL_SERVICE_TOKEN", TOKEN)


@pytest.fixture
def buyers():
    """Two customers with a Starter package each (50 credits)."""
    first = make_user(email="first@example.com")
    second = make_user(email="second@example.com")
    make_purchase(first, package="starter")
    make_purchase(second, package="starter")
    return first, second


def job(external_id: str, email: str = "first@example.com", credits: int = 5, **more) -> dict:
    return {
        "external_id": external_id,
        "customer_email": email,
        "operation": "upscale",
        "credits": credits,
        **more,
    }


def post_batch(client, jobs, **kwargs):
    response = client.post("/api/v1/jobs:batch", json={"jobs": jobs}, headers=AUTH, **kwargs)
    assert response.status_code < 500, response.get_data(as_text=True)
    return response


def balance(user) -> int:
    db.session.expire_all()
    return ledger.lock_account(user.id).credits_balance


def charges() -> int:
    return db.session.scalar(
        select(func.count())
        .select_from(LedgerEntry)
        .where(LedgerEntry.kind == EntryKind.JOB_CHARGE)
    )


def test_a_batch_charges_each_job_and_answers_each_in_order(client, buyers):
    first, second = buyers
    response = post_batch(
        client,
        [
            job("a-1", credits=10),
            job("b-1", "second@example.com", credits=20),
            job("a-2", credits=15),
        ],
    )

    assert response.status_code == 200
    results = response.get_json()["results"]
    assert [result["status"] for result in results] == [201, 201, 201]
    assert [result["job"]["external_id"] for result in results] == ["a-1", "b-1", "a-2"]
    # Each answer gives the balance just after its own job.
    assert [result["job"]["balance_after"] for result in results] == [40, 30, 25]
    assert balance(first) == 25
    assert balance(second) == 30
    assert results[0]["job"]["status"] == "running"
    assert {"low_balance_threshold", "balance_below_threshold"} <= set(results[0]["job"])


def test_sending_a_batch_again_charges_nothing_more(client, buyers):
    first, _ = buyers
    jobs = [job("a-1", credits=10), job("a-2", credits=15)]
    created = post_batch(client, jobs).get_json()["results"]
    again = post_batch(client, jobs).get_json()["results"]

    assert [result["status"] for result in again] == [200, 200]
    assert [r["job"]["id"] for r in again] == [r["job"]["id"] for r in created]
    assert balance(first) == 25
    assert charges() == 2


def test_a_job_asked_twice_in_one_batch_is_charged_once(client, buyers):
    first, _ = buyers
    results = post_batch(
        client,
        [
            job("twice", credits=10),
            job("between", credits=5),
            job("twice", credits=10),  # the same job: answered, not charged again
            job("twice", credits=11),  # the same external id for another job
        ],
    ).get_json()["results"]

    assert [result["status"] for result in results] == [201, 201, 200, 409]
    assert results[2]["job"]["id"] == results[0]["job"]["id"]
    assert [results[i]["job"]["balance_after"] for i in (0, 1, 2)] == [40, 35, 35]
    assert balance(first) == 35
    assert charges() == 2


def test_a_refused_job_does_not_stop_the_others(client, buyers):
    first, second = buyers
    post_batch(client, [job("taken", "second@example.com", credits=1)])

    results = post_batch(
        client,
        [
            job("ok-1", credits=30),
            job("too-big", credits=30),  # 20 left after ok-1
            job("nobody", "nobody@example.com"),
            job("taken", credits=1),  # second@'s job id
            job("bad", credits=0),
            "not a job",
            job("ok-2", credits=20),
        ],
    ).get_json()["results"]

    assert [result["status"] for result in results] == [201, 402, 404, 409, 400, 400, 201]
    assert results[1]["error"] == "insufficient_credits" and results[1]["balance"] == 20
    assert results[2]["error"] == "not_found"
    assert results[3]["error"] == "conflict"
    assert (results[4]["error"], results[4]["field"]) == ("invalid_request", "jobs[4].credits")
    assert results[5]["field"] == "jobs[5]"
    assert balance(first) == 0
    assert db.session.scalar(select(func.count()).select_from(Job)) == 3


def test_a_terminated_customers_jobs_are_refused_and_others_charged(client, buyers):
    from portal.accounts.services import terminate_account

    first, _ = buyers
    terminate_account(first, "breach of the terms")
    db.session.commit()
    results = post_batch(
        client, [job("a-1"), job("b-1", "second@example.com"), job("a-2")]
    ).get_json()["results"]
    assert [result["status"] for result in results] == [403, 201, 403]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        pytest.param({"jobs": []}, "jobs", id="empty"),
        pytest.param({"jobs": "a-1"}, "jobs", id="not-a-list"),
        pytest.param({}, "jobs", id="missing"),
        pytest.param([job("a-1")], "body", id="a-bare-list"),
        pytest.param({"jobs": [job(f"j-{n}", credits=1) for n in range(101)]}, "jobs", id="101"),
    ],
)
def test_a_batch_that_cannot_be_read_is_refused_whole(client, buyers, body, problem):
    response = client.post("/api/v1/jobs:batch", json=body, headers=AUTH)
    assert response.status_code == 400
    assert response.get_json()["field"] == problem
    assert charges() == 0


def test_a_batch_needs_the_platforms_token(client, buyers):
    response = client.post("/api/v1/jobs:batch", json={"jobs": [job("a-1")]})
    assert response.status_code == 401
    assert charges() == 0


# -- at the same time ---------------------------------------------------------------


@pytest.fixture
def threaded_app(make_app):
    return make_app(
        SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 12, "max_overflow": 0, "pool_pre_ping": True},
        PORTAL_SERVICE_TOKEN=TOKEN,
    )


def test_the_same_batch_sent_twice_at_once_charges_every_job_once(threaded_app):
    with threaded_app.app_context():
        first = make_user(email="first@example.com")
        second = make_user(email="second@example.com")
        make_purchase(first, package="pro")
        make_purchase(second, package="pro")
        first_id, second_id = first.id, second.id
    jobs = [
        job(f"same-{n}", "first@example.com" if n % 2 else "second@example.com", 3)
        for n in range(40)
    ]

    def send(_index: int):
        response = threaded_app.test_client().post(
            "/api/v1/jobs:batch", json={"jobs": jobs}, headers=AUTH
        )
        return response.status_code, [r["status"] for r in response.get_json()["results"]]

    outcomes = run_together(threaded_app, 6, send)

    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    assert all(status == 200 for status, _ in outcomes)
    statuses = [answers for _, answers in outcomes]
    # Every job was created by exactly one of the six calls, and found by the others.
    for position in range(40):
        assert sorted(answers[position] for answers in statuses) == [200] * 5 + [201]
    with threaded_app.app_context():
        assert balance_of(first_id) == 300 - 20 * 3
        assert balance_of(second_id) == 300 - 20 * 3
        assert ledger.check_books() == []


def test_one_external_id_in_two_customers_batches_at_once_goes_to_one(threaded_app):
    """Two batches, for different customers, race for the same external id: one gets the
    job, the other a 409 for it, and both batches' other jobs are charged."""
    with threaded_app.app_context():
        for email in ("first@example.com", "second@example.com"):
            make_purchase(make_user(email=email), package="pro")

    def send(index: int):
        email = ("first@example.com", "second@example.com")[index]
        jobs = [job("contested", email, 2), job(f"own-{index}", email, 2)]
        response = threaded_app.test_client().post(
            "/api/v1/jobs:batch", json={"jobs": jobs}, headers=AUTH
        )
        return [r["status"] for r in response.get_json()["results"]]

    outcomes = run_together(threaded_app, 2, send)

    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    assert sorted(answers[0] for answers in outcomes) == [201, 409]
    assert [answers[1] for answers in outcomes] == [201, 201]


def balance_of(user_id: int) -> int:
    db.session.expire_all()
    return ledger.lock_account(user_id).credits_balance


def test_a_job_taken_between_look_up_and_insert_is_refused_alone(client, buyers, monkeypatch):
    """What the race above does on PostgreSQL, made certain: another customer's job takes
    the external id after this batch looked it up. The database refuses the insert; the
    batch's jobs are then charged one by one, and only that one is refused."""
    from portal.jobs import services

    post_batch(client, [job("contested", "second@example.com", credits=1)])
    real_look_up = services._jobs_by_external_id
    missed = {"contested"}

    def look_up_missing_the_other_insert(external_ids):
        found = real_look_up(external_ids)
        for external_id in missed & set(found):
            missed.discard(external_id)
            del found[external_id]
        return found

    monkeypatch.setattr(services, "_jobs_by_external_id", look_up_missing_the_other_insert)
    results = post_batch(
        client, [job("mine-1", credits=5), job("contested", credits=1), job("mine-2", credits=5)]
    ).get_json()["results"]

    assert [result["status"] for result in results] == [201, 409, 201]
    assert [r["job"]["balance_after"] for r in (results[0], results[2])] == [45, 40]
    assert charges() == 3
