"""Auto-recharge under real concurrency, on PostgreSQL and on SQLite: charges crossing the
threshold together start one recharge, however many workers take the request up, and
the monthly cap holds through rounds of racing charges and workers."""

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, update

from portal.billing import auto_recharge
from portal.billing.models import Purchase, PurchaseOrigin, PurchaseStatus
from portal.db import db
from tests.billing.helpers import recharges_of
from tests.billing.test_auto_recharge_start import customer_with
from tests.concurrency import run_together

TOKEN = "test-token"
THREADS = 20
NOW = datetime(2026, 12, 15, 18, 0, tzinfo=UTC)


@pytest.fixture
def threaded_app(make_app):
    """An app whose pool holds a connection for every thread."""
    return make_app(
        SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 30, "max_overflow": 0, "pool_pre_ping": True},
        PORTAL_SERVICE_TOKEN=TOKEN,
        SANDBOX_WEBHOOKS="off",
    )


def spend(app, email: str, external_id: str, credits: int = 3):
    body = {
        "external_id": external_id,
        "customer_email": email,
        "operation": "upscale",
        "credits": credits,
    }
    response = app.test_client().post(
        "/api/v1/jobs", json=body, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    return response.status_code


def test_twenty_charges_crossing_the_threshold_at_once_start_one_recharge(threaded_app):
    with threaded_app.app_context():
        user = customer_with(100, threshold=90)
        user_id, email = user.id, user.email

    outcomes = run_together(
        threaded_app, THREADS, lambda index: spend(threaded_app, email, f"crossing-{index}")
    )
    assert outcomes == [201] * THREADS, outcomes

    # Several workers take the one request up at once: one of them starts the recharge.
    started = run_together(threaded_app, 4, lambda index: auto_recharge._start(user_id, NOW))
    assert not [outcome for outcome in started if isinstance(outcome, Exception)], started
    assert len([purchase_id for purchase_id in started if purchase_id is not None]) == 1
    with threaded_app.app_context():
        assert len(recharges_of(user_id)) == 1


def test_charges_and_workers_racing_start_one_recharge(threaded_app):
    """Each thread charges a job and then runs the worker's start, so requests are raised
    while others are taken up: still one recharge in flight."""
    with threaded_app.app_context():
        user = customer_with(100, threshold=90)
        user_id, email = user.id, user.email

    def charge_then_start(index: int):
        status = spend(threaded_app, email, f"racing-{index}")
        return status, auto_recharge._start(user_id, NOW)

    outcomes = run_together(threaded_app, THREADS, charge_then_start)
    assert not [outcome for outcome in outcomes if isinstance(outcome, Exception)], outcomes
    assert [status for status, _ in outcomes] == [201] * THREADS
    assert len([started for _, started in outcomes if started is not None]) == 1
    with threaded_app.app_context():
        assert len(recharges_of(user_id)) == 1


def test_the_monthly_cap_holds_through_rounds_of_racing_charges_and_workers(threaded_app):
    """$60 a month allows three $20 recharges. Each round, twenty charges and workers
    race; then the recharge in flight is paid (as Stripe's answer would settle it), which
    frees the way for the next. After eight rounds, three were started, never a fourth."""
    with threaded_app.app_context():
        user = customer_with(10_000, threshold=9_990, cap_cents=6_000)
        user_id, email = user.id, user.email

    for round_number in range(8):

        def charge_then_start(index: int, round_number=round_number):
            status = spend(threaded_app, email, f"round-{round_number}-{index}", credits=1)
            return status, auto_recharge._start(user_id, NOW)

        outcomes = run_together(threaded_app, THREADS, charge_then_start)
        assert not [outcome for outcome in outcomes if isinstance(outcome, Exception)]
        with threaded_app.app_context():
            db.session.execute(
                update(Purchase)
                .where(
                    Purchase.user_id == user_id,
                    Purchase.origin == PurchaseOrigin.AUTO_RECHARGE,
                    Purchase.status == PurchaseStatus.PENDING,
                )
                .values(status=PurchaseStatus.CREDITED)
            )
            db.session.commit()

    with threaded_app.app_context():
        assert len(recharges_of(user_id)) == 3
        spent = db.session.scalar(
            select(func.sum(Purchase.amount_cents)).where(Purchase.user_id == user_id)
        )
        assert spent == 6_000
