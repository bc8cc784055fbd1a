"""Exactly-once crediting under real concurrency, on PostgreSQL and on SQLite."""

import json

import pytest

from portal.accounts.models import User
from portal.billing import fulfilment
from portal.billing.models import PurchaseStatus
from portal.db import db
from portal.ledger import services as ledger
from portal.ledger.models import EntryKind
from tests.billing.helpers import (
    balance,
    entries,
    lot_count,
    open_checkout,
    pay_in_store,
    purchase,
    signature,
    stripe_event_rows,
    the_event,
)
from tests.concurrency import run_together
from tests.factories import make_user

THREADS = 20


@pytest.fixture
def threaded_app(make_app):
    """An app with a connection for every thread; it has its own sandbox store."""
    return make_app(
        SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 30, "max_overflow": 0, "pool_pre_ping": True},
        SANDBOX_WEBHOOKS="off",
    )


def paid_session(threaded_app, user_id: int) -> tuple[int, str, dict]:
    """Open and pay a Pro checkout at `threaded_app`'s own sandbox; return (purchase id,
    session id, its checkout.session.completed event)."""
    with threaded_app.app_context():
        purchase_id, session_id = open_checkout(db.session.get(User, user_id), "pro")
        pay_in_store(session_id)
        event = the_event("checkout.session.completed", id=session_id)
    return purchase_id, session_id, event


def test_twenty_simultaneous_deliveries_of_one_completed_event_credit_once(threaded_app):
    user_id = make_user().id
    purchase_id, _, event = paid_session(threaded_app, user_id)
    payload = json.dumps(event).encode()
    header = signature(payload)

    def post(_index: int):
        response = threaded_app.test_client().post(
            "/webhooks/stripe",
            data=payload,
            headers={"Stripe-Signature": header, "Content-Type": "application/json"},
        )
        return response.status_code, response.get_json()

    outcomes = run_together(threaded_app, THREADS, post)

    assert not [outcome for outcome in outcomes if isinstance(outcome, Exception)], outcomes
    assert [status for status, _ in outcomes] == [200] * THREADS, outcomes
    assert sum(body.get("outcome") == "credited" for _, body in outcomes) == 1, outcomes
    assert balance(user_id) == 300
    assert len(entries(user_id, EntryKind.PURCHASE_CREDIT)) == 1
    assert lot_count(user_id) == 1
    assert purchase(purchase_id).status == PurchaseStatus.CREDITED
    [row] = stripe_event_rows(event["id"])
    assert row.processed_at is not None
    assert ledger.check_books() == []


def test_twenty_simultaneous_fulfilments_of_one_session_credit_once(threaded_app):
    user_id = make_user().id
    purchase_id, session_id, _ = paid_session(threaded_app, user_id)

    outcomes = run_together(
        threaded_app, THREADS, lambda _index: fulfilment.fulfil_checkout(session_id)
    )

    assert outcomes.count(fulfilment.Fulfilment.CREDITED) == 1, outcomes
    assert outcomes.count(fulfilment.Fulfilment.ALREADY_CREDITED) == THREADS - 1, outcomes
    assert balance(user_id) == 300
    assert len(entries(user_id, EntryKind.PURCHASE_CREDIT)) == 1
    assert lot_count(user_id) == 1
    assert purchase(purchase_id).status == PurchaseStatus.CREDITED
    assert ledger.check_books() == []


def test_two_first_checkouts_at_once_make_one_stripe_customer(threaded_app):
    """Both ask Stripe with the account's own idempotency key and get one customer; the
    conditional update stores it once."""
    from portal.billing.checkout import stripe_customer

    with threaded_app.app_context():
        user_id = make_user().id
    outcomes = run_together(
        threaded_app, 2, lambda _: stripe_customer(db.session.get(User, user_id))
    )
    with threaded_app.app_context():
        made = list(threaded_app.extensions["stripe_sandbox"].customers)
        stored = db.session.get(User, user_id).stripe_customer_id
    assert len(made) == 1
    assert outcomes == [made[0], made[0]]
    assert stored == made[0]
