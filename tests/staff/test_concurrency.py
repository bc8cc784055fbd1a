"""Two staff members deciding at once, and two workers sending at once (PostgreSQL locks)."""

import threading
from datetime import timedelta

import pytest

from portal.accounts.models import User
from portal.billing import services as billing
from portal.billing.models import Purchase, Refund, RefundStatus
from portal.errors import Conflict
from portal.extensions import db
from portal.ledger.models import EntryKind
from portal.refunds.models import RefundRequest, RequestStatus
from portal.staff import services as staff_services
from portal.timeutil import utcnow
from tests.factories import make_staff, make_user
from tests.staff.helpers import (
    AFTER_UNDO_WINDOW,
    balance,
    count,
    entries,
    file,
    ledger_check_passes,
    paid_purchase,
    refunds_at_stripe,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
def threaded_app(make_app):
    """An app with a connection for every thread, and its own sandbox (nothing in the
    background: webhooks are only recorded)."""
    return make_app(
        SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 6, "max_overflow": 0, "pool_pre_ping": True},
        SANDBOX_WEBHOOKS="off",
    )


def run_together(app, works) -> list:
    """Run each of `works` in its own thread, released at once; return results or errors."""
    barrier = threading.Barrier(len(works))
    outcomes: list = [None] * len(works)

    def run(index: int) -> None:
        with app.app_context():
            try:
                barrier.wait(timeout=30)
                outcomes[index] = works[index]()
            except Exception as error:
                outcomes[index] = error
            finally:
                db.session.remove()

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(works))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    db.session.expire_all()
    return outcomes


def test_two_staff_approving_at_once_make_one_refund_and_one_stripe_refund(threaded_app):
    customer_id = make_user().id
    first_id, second_id = make_staff().id, make_staff().id
    with threaded_app.app_context():
        customer = db.session.get(User, customer_id)
        purchase = paid_purchase(customer)
        request = file(customer, purchase)
        request_id, purchase_id = request.id, purchase.id
        intent = purchase.stripe_payment_intent_id
    now = utcnow()

    def approve_as(staff_id: int):
        def work():
            member = db.session.get(User, staff_id)
            actor = staff_services.Actor(member, "127.0.0.1")
            return staff_services.approve(request_id, actor, 2000, "", now).id

        return work

    outcomes = run_together(threaded_app, [approve_as(first_id), approve_as(second_id)])

    succeeded = [outcome for outcome in outcomes if isinstance(outcome, int)]
    refused = [outcome for outcome in outcomes if isinstance(outcome, Conflict)]
    assert len(succeeded) == 1, outcomes
    assert len(refused) == 1, outcomes
    assert count(Refund, Refund.refund_request_id == request_id) == 1
    assert len(entries(customer_id, EntryKind.REFUND_CLAW_BACK)) == 1
    assert balance(customer_id) == 0
    assert db.session.get(Purchase, purchase_id).committed_refund_cents == 2000
    assert db.session.get(RefundRequest, request_id).status == RequestStatus.APPROVED

    later = now + AFTER_UNDO_WINDOW
    with threaded_app.app_context():
        sent = run_together(
            threaded_app,
            [lambda: billing.send_due_refunds(later), lambda: billing.send_due_refunds(later)],
        )
        assert not [outcome for outcome in sent if isinstance(outcome, Exception)], sent
        assert billing.send_due_refunds(later + timedelta(minutes=5)) == 0
        [at_stripe] = refunds_at_stripe(intent)
        assert at_stripe["amount"] == 2000
        refund = db.session.get(Refund, succeeded[0])
        assert refund.stripe_refund_id == at_stripe["id"]
        assert refund.status == RefundStatus.PENDING
        assert ledger_check_passes(threaded_app)
