"""Two staff members deciding at once, and two workers sending at once (on both databases)."""

from datetime import timedelta

import pytest

from portal.accounts.models import User
from portal.billing import fulfilment
from portal.billing.models import Purchase, PurchaseStatus, Refund, RefundStatus
from portal.billing.money_back import sending
from portal.db import db
from portal.errors import Conflict
from portal.ledger.models import EntryKind
from portal.refunds.models import RefundRequest, RequestStatus
from portal.staff import services as staff_services
from portal.timeutil import utcnow
from tests.concurrency import run_together
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


@pytest.fixture
def threaded_app(make_app):
    """An app with a connection for every thread, and its own sandbox (nothing in the
    background: webhooks are only recorded)."""
    return make_app(
        SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 6, "max_overflow": 0, "pool_pre_ping": True},
        SANDBOX_WEBHOOKS="off",
    )


def paid_and_filed(threaded_app, customer_id: int) -> tuple[int, int, str]:
    """A Pro purchase paid at `threaded_app`'s sandbox and a request for it; return
    (purchase id, request id, PaymentIntent id)."""
    with threaded_app.app_context():
        customer = db.session.get(User, customer_id)
        purchase = paid_purchase(customer)
        request = file(customer, purchase)
        return purchase.id, request.id, purchase.stripe_payment_intent_id


def test_two_staff_approving_at_once_make_one_refund_and_one_stripe_refund(threaded_app):
    customer_id = make_user().id
    first_id, second_id = make_staff().id, make_staff().id
    purchase_id, request_id, intent = paid_and_filed(threaded_app, customer_id)
    now = utcnow()

    deciders = [first_id, second_id]

    def approve(index: int):
        member = db.session.get(User, deciders[index])
        actor = staff_services.Actor(member, "127.0.0.1")
        return staff_services.approve(request_id, actor, 2000, "", now).id

    outcomes = run_together(threaded_app, 2, approve)

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
        sent = run_together(threaded_app, 2, lambda _index: sending.send_due_refunds(later))
        assert not [outcome for outcome in sent if isinstance(outcome, Exception)], sent
        assert sending.send_due_refunds(later + timedelta(minutes=5)) == 0
        [at_stripe] = refunds_at_stripe(intent)
        assert at_stripe["amount"] == 2000
        refund = db.session.get(Refund, succeeded[0])
        assert refund.stripe_refund_id == at_stripe["id"]
        assert refund.status == RefundStatus.PENDING
        assert ledger_check_passes(threaded_app)


def test_an_approval_racing_a_dispute_webhook_sends_no_refund_while_it_is_open(threaded_app):
    customer_id, staff_id = make_user().id, make_staff().id
    purchase_id, request_id, intent = paid_and_filed(threaded_app, customer_id)
    with threaded_app.app_context():
        store = threaded_app.extensions["stripe_sandbox"]
        with store.lock:
            dispute_id = store.open_dispute(store.payment_intents[intent]["latest_charge"])["id"]
    now = utcnow()

    def approve_or_dispute(index: int):
        if index == 0:
            actor = staff_services.Actor(db.session.get(User, staff_id), "127.0.0.1")
            return staff_services.approve(request_id, actor, 2000, "", now).id
        return fulfilment.dispute_changed(dispute_id).id

    outcomes = run_together(threaded_app, 2, approve_or_dispute)

    assert not [o for o in outcomes if isinstance(o, Exception) and not isinstance(o, Conflict)]
    with threaded_app.app_context():
        # Whichever came first, the dispute is open and holds every unused credit, and the
        # worker sends nothing while it is open.
        assert balance(customer_id) == 0
        assert sending.send_due_refunds(now + AFTER_UNDO_WINDOW) == 0
        assert refunds_at_stripe(intent) == []
        assert db.session.get(Purchase, purchase_id).status == PurchaseStatus.DISPUTED
        assert ledger_check_passes(threaded_app)


def test_the_worker_sending_while_staff_press_undo_does_exactly_one(threaded_app):
    customer_id, staff_id = make_user().id, make_staff().id
    _, request_id, intent = paid_and_filed(threaded_app, customer_id)
    with threaded_app.app_context():
        actor = staff_services.Actor(db.session.get(User, staff_id), "127.0.0.1")
        refund_id = staff_services.approve(request_id, actor, 2000, "", utcnow()).id
        due = db.session.get(Refund, refund_id).scheduled_for

    def undo_or_send(index: int):
        if index == 0:
            # The last instant of the undo window, as the worker's clock passes it.
            member = staff_services.Actor(db.session.get(User, staff_id), "127.0.0.1")
            staff_services.undo_approval(refund_id, member, due - timedelta(milliseconds=1))
            return "undone"
        return sending.send_due_refunds(due)

    outcomes = run_together(threaded_app, 2, undo_or_send)

    with threaded_app.app_context():
        refund = db.session.get(Refund, refund_id)
        if outcomes[0] == "undone":
            assert outcomes[1] == 0, outcomes
            assert refund.status == RefundStatus.CANCELED
            assert refunds_at_stripe(intent) == []
            assert balance(customer_id) == 300
            assert db.session.get(RefundRequest, request_id).status == RequestStatus.IN_REVIEW
        else:
            assert isinstance(outcomes[0], Conflict), outcomes
            assert outcomes[1] == 1, outcomes
            assert refund.status == RefundStatus.PENDING
            [at_stripe] = refunds_at_stripe(intent)
            assert at_stripe["id"] == refund.stripe_refund_id
            assert balance(customer_id) == 0
        assert ledger_check_passes(threaded_app)
