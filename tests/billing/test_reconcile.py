"""`flask reconcile`: paid Checkout Sessions whose webhook never arrived get their credits."""

from datetime import timedelta

from portal.billing import fulfilment
from portal.billing import reconcile as reconciliation
from portal.billing.models import PurchaseStatus
from portal.ledger import services as ledger
from portal.ledger.models import EntryKind
from portal.sandbox.store import DELAYED_METHOD
from portal.timeutil import utcnow
from tests.billing.helpers import (
    balance,
    entries,
    lot_count,
    open_checkout,
    pay_in_store,
    purchase,
    sandbox,
    settle_delayed,
)


def reconcile(app, *args: str):
    result = app.test_cli_runner().invoke(args=["reconcile", *args])
    assert result.exit_code == 0, result.output
    return result.output


def line_for(output: str, session_id: str) -> str:
    [line] = [line for line in output.splitlines() if line.startswith(session_id)]
    return line


def test_reconcile_credits_a_paid_session_whose_webhook_never_arrived(app, user, webhooks_off):
    purchase_id, session_id = open_checkout(user, "pro")
    pay_in_store(session_id)
    assert balance(user.id) == 0

    output = reconcile(app)

    assert line_for(output, session_id) == f"{session_id}  purchase {purchase_id}  credited"
    assert "that had been missed" in output
    assert balance(user.id) == 300
    assert len(entries(user.id, EntryKind.PURCHASE_CREDIT)) == 1
    assert lot_count(user.id) == 1
    assert purchase(purchase_id).status == PurchaseStatus.CREDITED
    assert ledger.check_books() == []


def test_reconcile_run_twice_credits_once(app, user, webhooks_off):
    purchase_id, session_id = open_checkout(user, "basic")
    pay_in_store(session_id)
    reconcile(app)

    output = reconcile(app)

    assert session_id not in output
    assert "credited 0 that had been missed" in output
    assert balance(user.id) == 120
    assert len(entries(user.id)) == 1
    assert lot_count(user.id) == 1


def test_reconcile_leaves_open_and_unsettled_sessions_alone(app, user, webhooks_off):
    _, open_session = open_checkout(user, "pro")
    delayed_id, delayed_session = open_checkout(user, "starter")
    pay_in_store(delayed_session, DELAYED_METHOD)

    output = reconcile(app)

    assert open_session not in output
    assert line_for(output, delayed_session).endswith("processing")
    assert balance(user.id) == 0
    settle_delayed(delayed_session, succeeded=True)
    assert line_for(reconcile(app), delayed_session).endswith("credited")
    assert balance(user.id) == 50
    assert purchase(delayed_id).status == PurchaseStatus.CREDITED


def test_reconcile_since_the_future_finds_nothing(app, user, webhooks_off):
    _, session_id = open_checkout(user, "pro")
    pay_in_store(session_id)
    tomorrow = (utcnow() + timedelta(days=1)).strftime("%Y-%m-%d")

    output = reconcile(app, "--since", tomorrow)

    assert "Checked 0 completed session(s)" in output
    assert "credited 0 that had been missed" in output
    assert balance(user.id) == 0


def test_reconcile_service_reports_each_completed_session(user, webhooks_off):
    purchase_id, session_id = open_checkout(user, "premium")
    pay_in_store(session_id)

    results = reconciliation.reconcile(utcnow() - timedelta(minutes=5))

    [ours] = [result for result in results if result.session_id == session_id]
    assert ours == reconciliation.ReconcileResult(
        session_id, purchase_id, fulfilment.Fulfilment.CREDITED
    )
    assert balance(user.id) == 1_000


def test_reconcile_while_stripe_is_down_fails_loudly_and_credits_nothing(app, user, webhooks_off):
    _, session_id = open_checkout(user, "pro")
    pay_in_store(session_id)
    store = sandbox()
    with store.lock:
        store.failures_to_inject = 10

    result = app.test_cli_runner().invoke(args=["reconcile"])

    assert result.exit_code == 1
    assert "Stripe could not be reached" in result.output
    assert balance(user.id) == 0
