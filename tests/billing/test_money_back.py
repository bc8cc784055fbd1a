"""Money going back where events meet: the issue's six reproductions, each as a history.

Every test runs on SQLite and, in CI, on PostgreSQL. Stripe is the in-process sandbox;
webhooks are delivered by hand (`webhooks_off`) so that each history controls the order.
"""

from datetime import timedelta

import pytest
from sqlalchemy import select

from portal.billing import reconcile
from portal.billing.models import Dispute, DisputeStatus, Purchase, PurchaseStatus, RefundStatus
from portal.billing.money_back import checks, sending
from portal.db import db
from portal.errors import Conflict, InsufficientCredits
from portal.jobs import services as jobs
from portal.ledger import services as ledger
from portal.notifications.models import OutboxEmail
from portal.refunds.models import RefundRequest, RequestStatus
from portal.sandbox.store import CARD_DISPUTED, CARD_REFUND_FAILS, DELAYED_METHOD
from portal.timeutil import utcnow
from tests.billing.helpers import (
    balance,
    close_dispute_in_store,
    deliver,
    dispute_in_store,
    events_for,
    pay_on_page,
    plain,
    purchase_lot,
    settle_delayed,
    the_event,
)
from tests.factories import csrf_token, login_as, make_staff, make_user
from tests.staff.helpers import (
    AFTER_UNDO_WINDOW,
    approve_now,
    file,
    paid_purchase,
    refunds_at_stripe,
    settle_at_stripe,
    spend,
    the_refund,
)


@pytest.fixture
def staff(app):
    return make_staff()


@pytest.fixture
def customer(app):
    return make_user()


def books_are_clean() -> bool:
    problems = ledger.check_books() + checks.problems()
    assert problems == [], problems
    return True


def deliver_all(client, event_type: str, **match) -> None:
    for event in events_for(event_type, **match):
        deliver(client, event)


def session_of(purchase: Purchase) -> str:
    return purchase.stripe_checkout_session_id


def emails_to(address: str) -> list[OutboxEmail]:
    return list(
        db.session.scalars(
            select(OutboxEmail).where(OutboxEmail.to_address == address).order_by(OutboxEmail.id)
        )
    )


# -- 1. a dispute after a refund was approved, and a refund that fails under a dispute ---


def _basic_approved_for_five_dollars(customer, staff, now):
    """Basic (120 credits, $10) on a card whose refunds fail, 20 credits spent, $5.00
    approved: 60 credits clawed back, 40 left."""
    purchase = paid_purchase(customer, package="basic", card=CARD_REFUND_FAILS)
    spend(customer, 20, "job-before-refund")
    request = file(customer, purchase)
    approve_now(request, staff, 500, justification="", now=now)
    assert balance(customer.id) == 40
    return purchase, request


def test_no_refund_is_sent_while_a_dispute_is_open_and_a_lost_one_cancels_it(
    client, customer, staff, webhooks_off
):
    purchase, request = _basic_approved_for_five_dollars(customer, staff, utcnow())
    dispute = dispute_in_store(session_of(purchase))
    deliver(client, the_event("charge.dispute.created", id=dispute["id"]))
    assert balance(customer.id) == 0  # the 40 unused credits are held

    later = utcnow() + AFTER_UNDO_WINDOW
    assert sending.send_due_refunds(later) == 0
    assert refunds_at_stripe(purchase.stripe_payment_intent_id) == []

    close_dispute_in_store(dispute["id"], won=False)
    deliver(client, the_event("charge.dispute.closed", id=dispute["id"]))

    refund = the_refund(request.id)
    assert refund.status == RefundStatus.CANCELED
    assert sending.send_due_refunds(later) == 0
    assert refunds_at_stripe(purchase.stripe_payment_intent_id) == []
    assert balance(customer.id) == 0
    with pytest.raises(InsufficientCredits):
        jobs.charge_job("job-after-chargeback", customer.email, "upscale", 1)
    db.session.rollback()
    assert db.session.get(RefundRequest, request.id).status == RequestStatus.IN_REVIEW
    assert books_are_clean()


def test_a_refund_failing_under_an_open_dispute_keeps_its_credits_held(
    client, customer, staff, webhooks_off
):
    """Reproduction 1: the failed refund gave 60 credits back to a disputed purchase, and
    after the dispute was lost the customer spent them."""
    purchase, request = _basic_approved_for_five_dollars(
        customer, staff, utcnow() - AFTER_UNDO_WINDOW
    )
    assert sending.send_due_refunds(utcnow()) == 1
    [at_stripe] = refunds_at_stripe(purchase.stripe_payment_intent_id)
    deliver_all(client, "charge.refunded")
    dispute = dispute_in_store(session_of(purchase))
    deliver(client, the_event("charge.dispute.created", id=dispute["id"]))
    assert balance(customer.id) == 0

    settle_at_stripe(at_stripe["id"])  # the bank refuses the refund
    deliver(client, the_event("refund.failed", id=at_stripe["id"]))

    assert the_refund(request.id).status == RefundStatus.FAILED
    assert balance(customer.id) == 0
    assert purchase_lot(purchase.id).credits_remaining == 0
    assert books_are_clean()

    close_dispute_in_store(dispute["id"], won=False)
    deliver(client, the_event("charge.dispute.closed", id=dispute["id"]))
    with pytest.raises(InsufficientCredits):
        jobs.charge_job("job-after-chargeback", customer.email, "upscale", 1)
    db.session.rollback()
    assert balance(customer.id) == 0
    assert books_are_clean()


def test_a_refund_failing_under_a_dispute_that_is_then_won_gives_the_credits_back(
    client, customer, staff, webhooks_off
):
    purchase, request = _basic_approved_for_five_dollars(
        customer, staff, utcnow() - AFTER_UNDO_WINDOW
    )
    sending.send_due_refunds(utcnow())
    [at_stripe] = refunds_at_stripe(purchase.stripe_payment_intent_id)
    dispute = dispute_in_store(session_of(purchase))
    deliver(client, the_event("charge.dispute.created", id=dispute["id"]))
    settle_at_stripe(at_stripe["id"])
    deliver(client, the_event("refund.failed", id=at_stripe["id"]))

    close_dispute_in_store(dispute["id"], won=True)
    deliver(client, the_event("charge.dispute.closed", id=dispute["id"]))

    # The money stayed with us and no refund went through: all 100 unused are back.
    assert balance(customer.id) == 100
    assert db.session.get(Purchase, purchase.id).status == PurchaseStatus.CREDITED
    assert books_are_clean()


def test_staff_cannot_approve_or_retry_while_the_payment_is_disputed(
    client, customer, staff, webhooks_off
):
    purchase = paid_purchase(customer)
    request = file(customer, purchase)
    dispute = dispute_in_store(session_of(purchase))
    deliver(client, the_event("charge.dispute.created", id=dispute["id"]))

    with pytest.raises(Conflict, match="disputed"):
        approve_now(request, staff, 1000)

    assert db.session.get(RefundRequest, request.id).status == RequestStatus.OPEN
    assert books_are_clean()


def test_the_disputed_test_card_pays_and_then_opens_a_dispute(client, customer, webhooks_off):
    purchase = paid_purchase(customer, card=CARD_DISPUTED)
    deliver_all(client, "charge.dispute.created", payment_intent=purchase.stripe_payment_intent_id)

    [row] = db.session.scalars(select(Dispute)).all()
    assert (row.purchase_id, row.status, row.reason) == (
        purchase.id,
        DisputeStatus.NEEDS_RESPONSE,
        "fraudulent",
    )
    assert balance(customer.id) == 0
    assert books_are_clean()


def test_an_inquiry_closed_holds_then_releases_the_credits(client, customer, webhooks_off):
    make_staff()
    purchase = paid_purchase(customer)
    dispute = dispute_in_store(session_of(purchase), inquiry=True)
    deliver(client, the_event("charge.dispute.created", id=dispute["id"]))
    assert balance(customer.id) == 0

    close_dispute_in_store(dispute["id"], won=False)
    deliver(client, the_event("charge.dispute.closed", id=dispute["id"]))

    assert db.session.scalars(select(Dispute)).one().status == DisputeStatus.WARNING_CLOSED
    assert balance(customer.id) == 300
    assert books_are_clean()


# -- 4. a refund or a dispute whose last webhook is lost ----------------------------------


def test_a_refund_whose_final_webhook_is_lost_is_settled_by_reconciliation(
    customer, staff, webhooks_off
):
    purchase = paid_purchase(customer)
    request = file(customer, purchase)
    approve_now(request, staff, 2000, now=utcnow() - AFTER_UNDO_WINDOW)
    sending.send_due_refunds(utcnow())
    [at_stripe] = refunds_at_stripe(purchase.stripe_payment_intent_id)
    settle_at_stripe(at_stripe["id"])  # succeeded at Stripe; its webhook never arrives
    assert the_refund(request.id).status == RefundStatus.PENDING

    reconcile.reconcile_money_back(utcnow(), utcnow())
    assert the_refund(request.id).status == RefundStatus.PENDING  # too early to call it lost
    later = utcnow() + timedelta(minutes=11)
    checked = reconcile.reconcile_money_back(later, utcnow())

    assert checked.refunds == 1
    assert the_refund(request.id).status == RefundStatus.SUCCEEDED
    assert any("was sent" in mail.subject for mail in emails_to(customer.email))
    assert books_are_clean()


def test_a_dispute_whose_webhooks_are_all_lost_is_found_by_reconciliation(customer, webhooks_off):
    started = utcnow() - timedelta(seconds=1)
    make_staff()
    purchase = paid_purchase(customer)
    dispute = dispute_in_store(session_of(purchase))
    close_dispute_in_store(dispute["id"], won=False)

    # Disputes opened since the start of this test (the sandbox outlives each test).
    reconcile.reconcile_money_back(utcnow(), started)

    assert db.session.scalars(select(Dispute)).one().status == DisputeStatus.LOST
    assert balance(customer.id) == 0
    assert books_are_clean()


def test_flask_reconcile_re_reads_refunds_and_disputes(app, customer, webhooks_off):
    make_staff()
    purchase = paid_purchase(customer)
    dispute_in_store(session_of(purchase))

    result = app.test_cli_runner().invoke(args=["reconcile"])

    assert result.exit_code == 0, result.output
    assert "Re-read 0 pending refund(s) and " in result.output
    db.session.expire_all()
    assert balance(customer.id) == 0


# -- 5. cancelling a checkout whose bank debit is still processing ------------------------


def test_cancel_on_a_processing_bank_debit_says_it_cannot_be_cancelled(
    client, customer, webhooks_off
):
    login_as(client, customer)
    from tests.billing.helpers import buy

    session_id = buy(client, "pro")
    assert pay_on_page(client, session_id, DELAYED_METHOD).status_code == 303
    purchase = db.session.scalars(select(Purchase)).one()

    response = client.post(
        f"/purchases/{purchase.id}/cancel",
        data={"csrf_token": csrf_token(client, "/purchases")},
        follow_redirects=True,
    )

    page = plain(response)
    assert "still processing it, so it can no longer be cancelled" in page
    assert "Nothing was charged" not in page
    settle_delayed(session_id, succeeded=True)
    deliver(client, the_event("checkout.session.async_payment_succeeded", id=session_id))
    assert db.session.get(Purchase, purchase.id).status == PurchaseStatus.CREDITED
    assert balance(customer.id) == 300


# -- 6. the approval e-mail follows the money, not the click ------------------------------


def test_an_approval_undone_inside_the_window_sends_the_customer_nothing(
    customer, staff, webhooks_off
):
    from portal.staff import services as staff_services

    purchase = paid_purchase(customer, package="premium")
    request = file(customer, purchase)
    now = utcnow()
    first = approve_now(request, staff, 3625, justification="goodwill", now=now)
    staff_services.undo_approval(first.id, staff_services.Actor(staff), now)
    second = approve_now(request, staff, 2000, justification="", now=now)

    assert not [mail for mail in emails_to(customer.email) if "approved" in mail.subject]
    sending.send_due_refunds(second.scheduled_for)

    [approved] = [mail for mail in emails_to(customer.email) if "approved" in mail.subject]
    assert "$20.00" in approved.body_text
    assert "$36.25" not in approved.body_text
    assert books_are_clean()
