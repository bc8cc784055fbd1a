"""Staff decisions on refund requests, the money they move and what everyone sees.

Every money test buys and pays at the in-process Stripe sandbox, files the request
through the refunds service, acts as staff through the pages or the staff services,
runs the worker with an explicit clock, and ends with the ledger check.
"""

import contextvars
import re
from datetime import timedelta

import pytest
from sqlalchemy.exc import IntegrityError

from portal.accounts.models import User
from portal.billing.models import Purchase, PurchaseStatus, RefundStatus
from portal.billing.money_back import sending
from portal.db import db
from portal.errors import Conflict, ValidationError
from portal.incidents import services as incidents
from portal.ledger.models import EntryKind
from portal.refunds import services as refunds
from portal.refunds.eligibility import RequestReason
from portal.refunds.models import RefundRequest, RequestStatus
from portal.sandbox.store import CARD_REFUND_FAILS
from portal.staff import services as staff_services
from portal.timeutil import utcnow
from tests.billing.helpers import deliver, fake_event
from tests.factories import csrf_token, make_purchase
from tests.staff.helpers import (
    AFTER_UNDO_WINDOW,
    RefundCallSpy,
    act,
    act_on_refund,
    actor,
    approve_now,
    audit_rows,
    balance,
    charge_of,
    consume_charge_at_stripe,
    detail_path,
    emails_to,
    entries,
    events,
    file,
    flashes,
    fresh,
    inject_failures,
    ledger_check_passes,
    paid_purchase,
    refundable_request,
    refunds_at_stripe,
    refunds_for,
    sandbox,
    settle_at_stripe,
    spend,
    state_snapshot,
    text,
    the_refund,
)


def default_amount(page) -> str:
    """The amount the approve form offers (today's recommendation)."""
    tag = re.search(r'<input[^>]*name="amount"[^>]*>', page.get_data(as_text=True)).group(0)
    return re.search(r'value="([^"]*)"', tag).group(1)


def customer_page(client, request_id: int) -> str:
    response = client.get(f"/refunds/{request_id}")
    assert response.status_code == 200
    return text(response)


def sent(request_id: int, now) -> dict:
    """Run the worker at `now`; return the one refund it made at the sandbox."""
    sending.send_due_refunds(now)
    refund = the_refund(request_id)
    intent = fresh(Purchase, refund.purchase_id).stripe_payment_intent_id
    [at_stripe] = [r for r in refunds_at_stripe(intent) if r["id"] == refund.stripe_refund_id]
    return at_stripe


# -- the request page ---------------------------------------------------------------------


def test_the_request_page_shows_everything_needed_to_decide(app, staff_client, staff, customer):
    earlier = file(customer, make_purchase(customer, "starter"))
    staff_services.deny(earlier.id, actor(staff), "window", "", utcnow())
    purchase = paid_purchase(customer)
    spend(customer, 20, "job-before-filing")
    incidents.record_incident(
        actor(staff), "Render farm offline", utcnow() - timedelta(hours=3), None, ""
    )
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    request = refunds.file_request(
        customer,
        purchase,
        RequestReason.SERVICE_UNAVAILABLE,
        "Nothing rendered all afternoon.",
        "ch_123",
        None,
        False,
        [refunds.Upload("screen.png", png)],
        utcnow(),
    )

    page = text(staff_client.get(detail_path(request.id)))

    assert "Nothing rendered all afternoon." in page
    assert "Transaction ids: ch_123" in page
    assert "screen.png (image/png" in page
    assert purchase.stripe_checkout_session_id in page
    assert purchase.stripe_payment_intent_id in page
    assert "Unused now 300 credits" in page  # the job spent the older Starter credits
    assert "Credits bought (Pro package) +300" in page
    assert "Job charged" in page and "-20" in page
    assert "upscale 20" in page  # the job, in the jobs table
    assert earlier.reference in page
    assert "Render farm offline" in page
    assert "Filed — Request filed: service unavailable." in page
    assert "When filed and now:" in page


def test_the_request_page_says_which_payment_is_the_duplicate_then_and_now(
    app, staff_client, customer
):
    paid = utcnow() - timedelta(days=1)
    first = make_purchase(customer, "pro", paid_at=paid)
    later = make_purchase(customer, "pro", paid_at=paid + timedelta(minutes=3))
    request = file(customer, first, reason=RequestReason.CHARGED_TWICE)
    named = f"The duplicate is the later payment, not this one: purchase {later.id},"
    assert named in text(staff_client.get(detail_path(request.id)))

    # Using the later payment's credits makes it a purchase the customer meant to make:
    # the check run again today reads what is left of it.
    spend(customer, 350, "after-filing")
    page = text(staff_client.get(detail_path(request.id)))
    assert named in page  # as filed
    assert (
        f"You paid for the same Pro package again 3 minutes later (purchase {later.id}) "
        "and used its credits: a second purchase, not a duplicate charge." in page
    )


def test_the_request_page_says_an_outage_must_last_more_than_48_hours(
    app, staff_client, staff, customer
):
    purchase = make_purchase(customer, "pro", paid_at=utcnow() - timedelta(days=5))
    incidents.record_incident(
        actor(staff),
        "Render farm offline",
        purchase.paid_at + timedelta(hours=2),
        purchase.paid_at + timedelta(hours=50),
        "",
    )
    request = file(customer, purchase, reason=RequestReason.SERVICE_UNAVAILABLE)
    page = text(staff_client.get(detail_path(request.id)))
    # Nothing changed since filing: the pre-check is shown once, for both.
    assert "When filed and now: Needs a closer look" in page
    assert page.count("Downtime of more than 48 consecutive hours") == 1
    assert (
        "\u201cRender farm offline\u201d overlapped the time you held unused credits from "
        "this purchase by 48 hours; the policy needs more than 48 consecutive hours." in page
    )


# -- approving --------------------------------------------------------------------------


def test_approving_the_default_amount_schedules_the_refund_and_claws_back_credits(
    app, staff_client, staff, customer
):
    purchase, request = refundable_request(customer)
    assert balance(customer.id) == 300
    page = staff_client.get(detail_path(request.id))
    assert default_amount(page) == "20.00"
    started = utcnow()

    act(staff_client, request.id, "approve", amount=default_amount(page), justification="")

    assert "Approved. The refund is scheduled" in flashes(staff_client, request.id)
    refund = the_refund(request.id)
    assert refund.amount_cents == 2000
    assert refund.status == RefundStatus.SCHEDULED
    assert refund.reason == "requested_by_customer"
    assert refund.created_by_id == staff.id
    assert refund.idempotency_key == refund.attempt_key
    assert started + timedelta(minutes=10) <= refund.scheduled_for
    assert refund.scheduled_for <= utcnow() + timedelta(minutes=10)
    assert fresh(Purchase, purchase.id).committed_refund_cents == 2000
    assert balance(customer.id) == 0
    [claw_back] = entries(customer.id, EntryKind.REFUND_CLAW_BACK)
    assert (claw_back.credits, claw_back.refund_id) == (-300, refund.id)
    request = fresh(RefundRequest, request.id)
    assert request.status == RequestStatus.APPROVED
    assert request.decided_by_id == staff.id
    assert request.decided_at is not None
    kinds = [event.kind for event in events(request.id)]
    assert kinds[-2:] == ["decision", "refund_scheduled"]
    assert "Approved: $20.00 back to your original payment method" in events(request.id)[-2].body
    [logged] = audit_rows("refund_request.approved", request.id)
    assert logged.actor_id == staff.id
    assert logged.ip_address == "127.0.0.1"
    assert logged.after == {"amount_cents": 2000, "credits_removed": 300, "refund_id": refund.id}
    # Nothing leaves before the undo window has passed, and nothing is promised yet.
    assert refunds_at_stripe(purchase.stripe_payment_intent_id) == []
    assert not any("refund approved" in email.subject for email in emails_to(customer.email))
    sending.send_due_refunds(refund.scheduled_for)
    [approved] = [e for e in emails_to(customer.email) if "refund approved" in e.subject]
    assert "$20.00" in approved.body_text
    assert ledger_check_passes(app)


def test_approving_twice_is_refused_and_makes_one_refund(app, staff_client, staff, customer):
    _, request = refundable_request(customer)

    act(staff_client, request.id, "approve", amount="20.00")
    act(staff_client, request.id, "approve", amount="20.00")

    assert "This request was already decided." in flashes(staff_client, request.id)
    with pytest.raises(Conflict):
        approve_now(request, staff, 2000)
    assert len(refunds_for(request.id)) == 1
    assert len(entries(customer.id, EntryKind.REFUND_CLAW_BACK)) == 1
    assert len(audit_rows("refund_request.approved", request.id)) == 1
    assert balance(customer.id) == 0
    assert ledger_check_passes(app)


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        ("20.01", "Refund between $0.01 and $20.00."),
        ("1000", "Refund between $0.01 and $20.00."),
        ("0", None),
        ("-5", None),
        ("abc", "Write an amount like 5.86."),
    ],
)
def test_an_amount_over_what_is_left_is_refused_and_nothing_changes(
    app, staff_client, customer, amount, message
):
    _, request = refundable_request(customer)
    before = state_snapshot()

    act(staff_client, request.id, "approve", amount=amount, justification="Because.")

    page = flashes(staff_client, request.id)
    if message:
        assert message in page
    assert state_snapshot() == before
    assert fresh(RefundRequest, request.id).status == RequestStatus.OPEN
    assert ledger_check_passes(app)


def test_never_more_than_paid_minus_already_refunded(app, staff, customer):
    purchase, first = refundable_request(customer)
    refund = approve_now(first, staff, 500)
    at_stripe = sent(first.id, utcnow() + AFTER_UNDO_WINDOW)
    settle_at_stripe(at_stripe["id"])
    assert fresh(Purchase, purchase.id).refunded_cents == 500
    assert balance(customer.id) == 225  # 75 credits went with the $5.00
    second = file(customer, fresh(Purchase, purchase.id))

    with pytest.raises(ValidationError, match=r"between \$0.01 and \$15.00"):
        approve_now(second, staff, 1501, justification="Everything.")
    assert refunds_for(second.id) == []

    approve_now(second, staff, 1500)
    assert fresh(Purchase, purchase.id).committed_refund_cents == 2000
    assert balance(customer.id) == 0
    assert fresh(type(refund), refund.id).status == RefundStatus.SUCCEEDED
    assert ledger_check_passes(app)


def test_the_database_refuses_committing_more_than_was_paid(app, customer):
    purchase = make_purchase(customer)
    purchase.committed_refund_cents = purchase.amount_cents + 1
    with pytest.raises(IntegrityError):
        db.session.commit()
    db.session.rollback()


def test_more_than_the_unused_credits_value_needs_a_written_justification(
    app, staff_client, staff, customer
):
    purchase = paid_purchase(customer)
    spend(customer, 100, "before-filing")
    request = file(customer, purchase)
    assert request.recommended_cents == 1333  # 200 unused credits of 300 for $20.00
    before = state_snapshot()

    act(staff_client, request.id, "approve", amount="20.00", justification="  ")

    assert "needs a written justification" in flashes(staff_client, request.id)
    assert state_snapshot() == before

    act(staff_client, request.id, "approve", amount="20.00", justification="Platform outage.")

    refund = the_refund(request.id)
    assert refund.amount_cents == 2000
    request = fresh(RefundRequest, request.id)
    assert request.status == RequestStatus.APPROVED
    assert request.decision_reason == "Platform outage."
    assert balance(customer.id) == 0
    [claw_back] = entries(customer.id, EntryKind.REFUND_CLAW_BACK)
    assert claw_back.credits == -200
    assert ledger_check_passes(app)


def test_spending_between_filing_and_approval_changes_the_recommendation(
    app, staff_client, staff, customer
):
    purchase, request = refundable_request(customer)
    assert request.recommended_cents == 2000
    spend(customer, 120, "after-filing")

    page = staff_client.get(detail_path(request.id))
    shown = text(page)

    assert "Now: Needs a closer look recommended $12.00" in shown
    assert "When filed: Needs a closer look recommended $20.00" in shown
    # The pre-check is shown once; the rule that moved says what it said at filing.
    assert shown.count("Unused credits") == 1
    assert "When filed (met): 300 of the 300 credits are unused" in shown
    assert "Unused now 180 credits" in shown
    assert default_amount(page) == "12.00"

    act(staff_client, request.id, "approve", amount=default_amount(page))

    assert the_refund(request.id).amount_cents == 1200
    [claw_back] = entries(customer.id, EntryKind.REFUND_CLAW_BACK)
    assert claw_back.credits == -180
    assert balance(customer.id) == 0
    assert ledger_check_passes(app)


def test_credits_all_spent_before_approval_leave_nothing_to_claw_back(app, staff, customer):
    purchase, request = refundable_request(customer)
    spend(customer, 300, "everything")

    with pytest.raises(ValidationError, match="justification"):
        approve_now(request, staff, 500)
    approve_now(request, staff, 500, justification="The jobs produced nothing usable.")

    assert entries(customer.id, EntryKind.REFUND_CLAW_BACK) == []
    assert balance(customer.id) == 0
    assert the_refund(request.id).amount_cents == 500
    assert ledger_check_passes(app)


def test_a_customer_with_credits_from_another_purchase_keeps_them(app, staff, customer):
    paid_purchase(customer, "basic")  # 120 credits, bought first
    purchase, request = refundable_request(customer)
    spend(customer, 150, "mixed")  # all 120 of the older lot, then 30 of this one
    current = staff_services.recommendation_now(request, utcnow())
    assert current.recommended_cents == 1800  # 270 unused credits of 300 for $20.00

    approve_now(request, staff, current.recommended_cents)

    assert the_refund(request.id).amount_cents == 1800
    [claw_back] = entries(customer.id, EntryKind.REFUND_CLAW_BACK)
    assert claw_back.credits == -270
    assert balance(customer.id) == 0
    assert ledger_check_passes(app)


# -- undo -------------------------------------------------------------------------------


def test_undo_within_the_window_restores_the_credits_and_reopens(
    app, staff_client, staff, customer
):
    purchase, request = refundable_request(customer)
    act(staff_client, request.id, "approve", amount="20.00")
    refund = the_refund(request.id)
    assert "Undo (until" in text(staff_client.get(detail_path(request.id)))

    act_on_refund(staff_client, refund, "undo")

    assert "Approval undone; no money moved." in flashes(staff_client, request.id)
    assert fresh(type(refund), refund.id).status == RefundStatus.CANCELED
    assert fresh(Purchase, purchase.id).committed_refund_cents == 0
    assert balance(customer.id) == 300
    [reversal] = entries(customer.id, EntryKind.CLAW_BACK_REVERSAL)
    assert reversal.credits == 300
    request = fresh(RefundRequest, request.id)
    assert request.status == RequestStatus.IN_REVIEW
    assert request.decided_at is None
    assert events(request.id)[-1].kind == "decision_undone"
    assert len(audit_rows("refund_request.approval_undone", request.id)) == 1
    # The worker has nothing to send, now or later.
    assert sending.send_due_refunds(utcnow() + timedelta(hours=1)) == 0
    assert refunds_at_stripe(purchase.stripe_payment_intent_id) == []
    # And the request can be decided again.
    approve_now(request, staff, 1000)
    assert balance(customer.id) == 150
    assert ledger_check_passes(app)


def test_undo_after_the_window_is_refused(app, staff_client, staff, customer):
    _, request = refundable_request(customer)
    refund = approve_now(request, staff, 2000, now=utcnow() - AFTER_UNDO_WINDOW)
    before = state_snapshot()

    act_on_refund(staff_client, refund, "undo")

    assert "can no longer be undone" in flashes(staff_client, request.id)
    assert state_snapshot() == before
    assert balance(customer.id) == 0
    with pytest.raises(Conflict):
        staff_services.undo_approval(refund.id, actor(staff), utcnow())


def test_undo_of_a_sent_refund_is_refused(app, staff, customer):
    _, request = refundable_request(customer)
    now = utcnow()
    refund = approve_now(request, staff, 2000, now=now)
    sent(request.id, now + AFTER_UNDO_WINDOW)

    with pytest.raises(Conflict):
        staff_services.undo_approval(refund.id, actor(staff), now + timedelta(minutes=1))
    assert balance(customer.id) == 0
    assert ledger_check_passes(app)


# -- the worker and Stripe ----------------------------------------------------------------


def test_the_worker_sends_a_due_refund_exactly_once(app, staff, customer):
    purchase, request = refundable_request(customer)
    now = utcnow()
    refund = approve_now(request, staff, 2000, now=now)

    assert sending.send_due_refunds(now + timedelta(minutes=5)) == 0
    assert sending.send_due_refunds(now + AFTER_UNDO_WINDOW) == 1
    assert sending.send_due_refunds(now + AFTER_UNDO_WINDOW) == 0
    assert sending.send_due_refunds(now + timedelta(hours=2)) == 0

    [at_stripe] = refunds_at_stripe(purchase.stripe_payment_intent_id)
    assert at_stripe["amount"] == 2000
    assert at_stripe["reason"] == "requested_by_customer"
    assert at_stripe["metadata"]["refund_id"] == str(refund.id)
    refund = fresh(type(refund), refund.id)
    assert refund.status == RefundStatus.PENDING
    assert refund.stripe_refund_id == at_stripe["id"]
    with sandbox().lock:
        assert refund.idempotency_key in sandbox().idempotency
    assert ledger_check_passes(app)


def test_flask_worker_once_sends_due_refunds(app, staff, customer):
    purchase, request = refundable_request(customer)
    approve_now(request, staff, 2000, now=utcnow() - AFTER_UNDO_WINDOW)
    runner = app.test_cli_runner()

    first = runner.invoke(args=["worker", "--once"])
    second = runner.invoke(args=["worker", "--once"])

    assert first.exit_code == 0, first.output
    assert "'refunds': 1" in first.output
    assert "'refunds': 0" in second.output
    assert len(refunds_at_stripe(purchase.stripe_payment_intent_id)) == 1


def test_a_refund_another_worker_is_sending_is_not_sent_again(app, staff, customer, monkeypatch):
    """Worker B listed the refund as due a moment before worker A claimed it; while A
    waits for Stripe's answer, B reaches the refund and must leave it alone."""
    purchase, request = refundable_request(customer)
    now = utcnow()
    approve_now(request, staff, 2000, now=now)
    later = now + AFTER_UNDO_WINDOW
    [listed_by_b] = sending.due_refund_ids(later)
    b_outcome = []
    spy = RefundCallSpy(
        monkeypatch,
        during_first_call=lambda: in_another_transaction(
            app, lambda: b_outcome.append(sending.send_refund(listed_by_b, later))
        ),
    )

    sending.send_due_refunds(later)

    assert b_outcome == [None], "worker B sent the refund worker A was sending"
    assert len(spy.keys) == 1, "Stripe was asked twice"
    assert len(refunds_at_stripe(purchase.stripe_payment_intent_id)) == 1
    assert ledger_check_passes(app)


def test_a_settled_refund_succeeds_and_the_customer_sees_it(
    app, staff, customer, customer_client, staff_client
):
    purchase, request = refundable_request(customer)
    approve_now(request, staff, 2000, now=utcnow() - AFTER_UNDO_WINDOW)
    at_stripe = sent(request.id, utcnow())

    settle_at_stripe(at_stripe["id"])

    refund = the_refund(request.id)
    assert refund.status == RefundStatus.SUCCEEDED
    purchase = fresh(Purchase, purchase.id)
    assert purchase.refunded_cents == 2000
    assert purchase.status == PurchaseStatus.REFUNDED
    assert "$20.00 was refunded to your original payment method" in customer_page(
        customer_client, request.id
    )
    assert any("Your refund of $20.00 was sent" in e.subject for e in emails_to(customer.email))
    assert len(audit_rows("refund.succeeded", refund.id)) == 1
    assert "Succeeded" in text(staff_client.get(detail_path(request.id)))
    assert balance(customer.id) == 0
    # A second look by the card network changes nothing.
    settle_at_stripe(at_stripe["id"])
    assert len(events(request.id, "refund_settled")) == 1
    assert ledger_check_passes(app)


def test_a_refund_the_bank_refuses_restores_the_credits_and_reopens(
    app, staff, customer, customer_client, staff_client
):
    purchase, request = refundable_request(customer, card=CARD_REFUND_FAILS)
    approve_now(request, staff, 2000, now=utcnow() - AFTER_UNDO_WINDOW)
    at_stripe = sent(request.id, utcnow())
    assert balance(customer.id) == 0

    settle_at_stripe(at_stripe["id"])

    refund = the_refund(request.id)
    assert refund.status == RefundStatus.FAILED
    assert refund.failure_reason == "expired_or_canceled_card"
    assert balance(customer.id) == 300
    [reversal] = entries(customer.id, EntryKind.CLAW_BACK_REVERSAL)
    assert (reversal.credits, reversal.refund_id) == (300, refund.id)
    purchase = fresh(Purchase, purchase.id)
    assert purchase.committed_refund_cents == 0
    assert purchase.refunded_cents == 0
    assert fresh(RefundRequest, request.id).status == RequestStatus.IN_REVIEW
    staff_page = text(staff_client.get(detail_path(request.id)))
    assert "Failed: the card you paid with has expired or was cancelled" in staff_page
    assert "Stripe: expired_or_canceled_card" in staff_page
    assert "Try again" in staff_page
    # The customer reads plain words, never Stripe's code.
    shown = customer_page(customer_client, request.id)
    assert "did not go through: the card you paid with has expired or was cancelled." in shown
    assert "expired_or_canceled_card" not in shown
    [told] = [e for e in emails_to(customer.email) if "did not go through" in e.subject]
    assert "the card you paid with has expired or was cancelled" in told.body_text
    assert "expired_or_canceled_card" not in told.body_text
    assert any(f"Refund {refund.id} failed" in e.subject for e in emails_to(staff.email))
    assert ledger_check_passes(app)


def _failed_once(customer, staff, card=CARD_REFUND_FAILS):
    purchase, request = refundable_request(customer, card=card)
    approve_now(request, staff, 2000, now=utcnow() - AFTER_UNDO_WINDOW)
    settle_at_stripe(sent(request.id, utcnow())["id"])
    assert the_refund(request.id).status == RefundStatus.FAILED
    return purchase, request


def test_a_retry_is_sent_once_more_with_a_new_key_and_succeeds(
    app, staff_client, staff, customer, monkeypatch
):
    purchase, request = _failed_once(customer, staff)
    first = the_refund(request.id)
    first_key = first.idempotency_key
    charge = charge_of(purchase.stripe_payment_intent_id)
    with sandbox().lock:
        sandbox().refund_fails_for.discard(charge["id"])  # the bank accepts refunds again
    spy = RefundCallSpy(monkeypatch)

    act_on_refund(staff_client, first, "retry")

    assert "The refund will be sent again." in flashes(staff_client, request.id)
    refund = the_refund(request.id)
    assert refund.attempt == 2
    assert refund.status == RefundStatus.SCHEDULED
    assert refund.idempotency_key != first_key
    assert refund.idempotency_key.endswith("attempt-2")
    [retried] = audit_rows("refund.retried", request.id)
    assert (retried.actor_id, retried.after) == (staff.id, {"refund_id": refund.id, "attempt": 2})
    assert balance(customer.id) == 0
    assert fresh(RefundRequest, request.id).status == RequestStatus.APPROVED

    assert sending.send_due_refunds(utcnow()) == 1
    assert sending.send_due_refunds(utcnow() + timedelta(hours=1)) == 0
    assert spy.keys == [refund.idempotency_key]
    old, new = refunds_at_stripe(purchase.stripe_payment_intent_id)
    assert old["status"] == "failed"
    assert the_refund(request.id).stripe_refund_id == new["id"]

    settle_at_stripe(new["id"])

    assert the_refund(request.id).status == RefundStatus.SUCCEEDED
    assert charge_of(purchase.stripe_payment_intent_id)["amount_refunded"] == 2000
    assert fresh(Purchase, purchase.id).refunded_cents == 2000
    assert balance(customer.id) == 0
    # A succeeded refund cannot be retried: the money never goes out twice.
    act_on_refund(staff_client, refund, "retry")
    assert "Only a failed refund can be tried again." in flashes(staff_client, request.id)
    assert sending.send_due_refunds(utcnow() + timedelta(hours=2)) == 0
    assert len(refunds_at_stripe(purchase.stripe_payment_intent_id)) == 2
    assert ledger_check_passes(app)


def test_a_retry_on_the_same_failing_card_fails_again_cleanly(app, staff, customer):
    purchase, request = _failed_once(customer, staff)

    staff_services.retry_refund(the_refund(request.id).id, actor(staff), utcnow())
    assert balance(customer.id) == 0
    sending.send_due_refunds(utcnow())
    second = refunds_at_stripe(purchase.stripe_payment_intent_id)[-1]
    settle_at_stripe(second["id"])

    refund = the_refund(request.id)
    assert (refund.status, refund.attempt) == (RefundStatus.FAILED, 2)
    assert balance(customer.id) == 300
    assert len(entries(customer.id, EntryKind.CLAW_BACK_REVERSAL)) == 2
    assert charge_of(purchase.stripe_payment_intent_id)["amount_refunded"] == 0
    assert fresh(RefundRequest, request.id).status == RequestStatus.IN_REVIEW
    assert ledger_check_passes(app)


def test_a_retry_after_a_new_approval_cannot_refund_twice(app, staff, customer):
    purchase, request = _failed_once(customer, staff)
    failed = the_refund(request.id)
    approve_now(fresh(RefundRequest, request.id), staff, 2000)

    with pytest.raises(ValidationError):
        staff_services.retry_refund(failed.id, actor(staff), utcnow())
    db.session.rollback()

    assert fresh(Purchase, purchase.id).committed_refund_cents == 2000
    assert fresh(type(failed), failed.id).status == RefundStatus.FAILED
    assert len(refunds_for(request.id)) == 2
    assert balance(customer.id) == 0
    assert ledger_check_passes(app)


def test_a_late_event_about_the_failed_attempt_does_not_undo_the_retry(
    app, client, staff, customer
):
    purchase, request = _failed_once(customer, staff)
    charge = charge_of(purchase.stripe_payment_intent_id)
    with sandbox().lock:
        sandbox().refund_fails_for.discard(charge["id"])
    staff_services.retry_refund(the_refund(request.id).id, actor(staff), utcnow())
    sending.send_due_refunds(utcnow())
    old, new = refunds_at_stripe(purchase.stripe_payment_intent_id)
    assert the_refund(request.id).stripe_refund_id == new["id"]

    # Stripe reports a failure twice (refund.failed, then refund.updated); the second
    # report of the first attempt arrives after the retry went out.
    deliver(client, fake_event("refund.updated", old))

    refund = the_refund(request.id)
    assert refund.status == RefundStatus.PENDING, "the retry in flight was marked failed"
    assert refund.stripe_refund_id == new["id"]
    assert balance(customer.id) == 0
    settle_at_stripe(new["id"])
    assert the_refund(request.id).status == RefundStatus.SUCCEEDED
    assert balance(customer.id) == 0, "money refunded and credits given back"
    assert ledger_check_passes(app)


def test_after_a_retry_the_refund_names_the_new_stripe_refund(app, staff, customer, monkeypatch):
    purchase, request = _failed_once(customer, staff)
    monkeypatch.setitem(app.config, "SANDBOX_WEBHOOKS", "off")  # no webhook tells us
    with sandbox().lock:
        sandbox().refund_fails_for.discard(charge_of(purchase.stripe_payment_intent_id)["id"])
    staff_services.retry_refund(the_refund(request.id).id, actor(staff), utcnow())

    sending.send_due_refunds(utcnow())

    old, new = refunds_at_stripe(purchase.stripe_payment_intent_id)
    refund = the_refund(request.id)
    assert refund.status == RefundStatus.PENDING
    assert refund.stripe_refund_id == new["id"], "still names the failed first attempt"


def test_stripe_refusing_an_amount_over_the_charge_restores_the_credits(
    app, staff, customer, staff_client, monkeypatch
):
    purchase, request = refundable_request(customer)
    approve_now(request, staff, 2000, now=utcnow() - AFTER_UNDO_WINDOW)
    monkeypatch.setitem(app.config, "SANDBOX_WEBHOOKS", "off")
    outside = consume_charge_at_stripe(purchase.stripe_payment_intent_id, 1500)

    sending.send_due_refunds(utcnow())

    refund = the_refund(request.id)
    assert refund.status == RefundStatus.FAILED
    assert refund.stripe_refund_id is None
    assert "greater than unrefunded amount" in refund.failure_reason
    assert balance(customer.id) == 300
    assert len(entries(customer.id, EntryKind.CLAW_BACK_REVERSAL)) == 1
    assert fresh(Purchase, purchase.id).committed_refund_cents == 0
    assert fresh(RefundRequest, request.id).status == RequestStatus.IN_REVIEW
    assert "greater than unrefunded amount" in text(staff_client.get(detail_path(request.id)))
    assert [r["id"] for r in refunds_at_stripe(purchase.stripe_payment_intent_id)] == [
        outside["id"]
    ]
    assert ledger_check_passes(app)


def test_stripe_unreachable_leaves_the_refund_pending_and_a_later_run_uses_the_same_key(
    app, staff, customer, monkeypatch
):
    purchase, request = refundable_request(customer)
    now = utcnow()
    approve_now(request, staff, 2000, now=now)
    spy = RefundCallSpy(monkeypatch)
    inject_failures(10)

    sending.send_due_refunds(now + AFTER_UNDO_WINDOW)

    refund = the_refund(request.id)
    assert refund.status == RefundStatus.PENDING
    assert refund.stripe_refund_id is None
    assert refunds_at_stripe(purchase.stripe_payment_intent_id) == []
    assert fresh(RefundRequest, request.id).status == RequestStatus.APPROVED
    assert balance(customer.id) == 0
    # Not resent at once: the next try waits a minute.
    sending.send_due_refunds(now + AFTER_UNDO_WINDOW + timedelta(seconds=30))
    assert len(spy.keys) == 1

    inject_failures(0)  # Stripe is back
    sending.send_due_refunds(now + AFTER_UNDO_WINDOW + timedelta(minutes=2))
    sending.send_due_refunds(now + AFTER_UNDO_WINDOW + timedelta(minutes=4))

    assert spy.keys == [refund.idempotency_key, refund.idempotency_key]
    [at_stripe] = refunds_at_stripe(purchase.stripe_payment_intent_id)
    refund = the_refund(request.id)
    assert refund.stripe_refund_id == at_stripe["id"]
    assert refund.status == RefundStatus.PENDING
    assert ledger_check_passes(app)


def test_an_answer_lost_after_stripe_refunded_is_resent_with_the_same_key(
    app, staff, customer, monkeypatch
):
    monkeypatch.setitem(app.config, "SANDBOX_WEBHOOKS", "off")
    purchase, request = refundable_request(customer)
    now = utcnow()
    approve_now(request, staff, 2000, now=now)
    spy = RefundCallSpy(monkeypatch, lose_answer_times=1)

    sending.send_due_refunds(now + AFTER_UNDO_WINDOW)
    assert the_refund(request.id).stripe_refund_id is None
    sending.send_due_refunds(now + AFTER_UNDO_WINDOW + timedelta(minutes=2))

    [at_stripe] = refunds_at_stripe(purchase.stripe_payment_intent_id)
    refund = the_refund(request.id)
    assert spy.keys == [refund.idempotency_key] * 2
    assert refund.stripe_refund_id == at_stripe["id"]
    assert charge_of(purchase.stripe_payment_intent_id)["amount_refunded"] == 2000
    assert ledger_check_passes(app)


# -- other decisions --------------------------------------------------------------------


def test_deny_with_a_reason_the_customer_sees(app, staff_client, staff, customer, customer_client):
    _, request = refundable_request(customer)

    act(staff_client, request.id, "deny", reason="credits_used", message="Sorry about that.")

    assert "Denied; the customer has been told why." in flashes(staff_client, request.id)
    request = fresh(RefundRequest, request.id)
    assert request.status == RequestStatus.DENIED
    assert request.decided_by_id == staff.id
    reason = staff_services.DENIAL_REASONS["credits_used"]
    assert request.decision_reason == f"{reason} Sorry about that."
    page = customer_page(customer_client, request.id)
    assert reason in page and "Sorry about that." in page
    assert any(
        "our decision" in e.subject and reason in e.body_text for e in emails_to(customer.email)
    )
    assert len(audit_rows("refund_request.denied", request.id)) == 1
    assert balance(customer.id) == 300
    assert refunds_for(request.id) == []


def test_deny_needs_a_reason_the_customer_can_read(app, staff_client, customer):
    _, request = refundable_request(customer)
    before = state_snapshot()

    act(staff_client, request.id, "deny", reason="other", message="   ")
    assert "Write the reason the customer will read." in flashes(staff_client, request.id)
    act(staff_client, request.id, "deny", reason="made-up", message="No.")
    assert "Choose a reason for the denial." in flashes(staff_client, request.id)

    assert state_snapshot() == before


def test_asking_for_information_pauses_the_clock_until_the_customer_replies(
    app, staff_client, staff, customer, customer_client
):
    _, request = refundable_request(customer)
    due_before = request.due_at

    act(staff_client, request.id, "ask", body="Which card did you pay with?")

    request = fresh(RefundRequest, request.id)
    assert request.status == RequestStatus.WAITING_ON_CUSTOMER
    assert request.clock_paused_at is not None
    assert any("more information" in e.subject for e in emails_to(customer.email))
    assert events(request.id)[-1].kind == "information_requested"
    assert len(audit_rows("refund_request.information_requested", request.id)) == 1
    page = customer_page(customer_client, request.id)
    assert "Which card did you pay with?" in page
    assert "Send my answer" in page

    # Pretend the question was asked two days ago.
    paused_at = utcnow() - timedelta(days=2)
    request.clock_paused_at = paused_at
    db.session.commit()
    token = csrf_token(customer_client, f"/refunds/{request.id}")
    reply = customer_client.post(
        f"/refunds/{request.id}", data={"body": "The Visa ending 4242.", "csrf_token": token}
    )

    assert reply.status_code == 303
    request = fresh(RefundRequest, request.id)
    assert request.status == RequestStatus.IN_REVIEW
    assert request.clock_paused_at is None
    [answer] = events(request.id, "customer_message")
    assert request.due_at - due_before == answer.created_at - paused_at
    assert timedelta(days=2) <= request.due_at - due_before < timedelta(days=2, minutes=1)
    assert "The Visa ending 4242." in text(staff_client.get(detail_path(request.id)))


def in_another_transaction(app, work) -> None:
    """Run `work()` in its own app context and database session, as another request would,
    without refreshing what the test's session has already loaded."""

    def run():
        with app.app_context():
            work()

    contextvars.Context().run(run)


def test_a_reply_racing_a_denial_does_not_reopen_the_request(app, staff, customer):
    _, request = refundable_request(customer)
    staff_services.ask_for_information(request.id, actor(staff), "Which card?", utcnow())
    staff_id, request_id = staff.id, request.id
    # The customer's reply loads the request (as the view does) ...
    loaded = refunds.request_for_customer(customer.id, request.id)
    assert loaded.status == RequestStatus.WAITING_ON_CUSTOMER

    # ... while staff deny it in another transaction.
    def deny():
        member = db.session.get(User, staff_id)
        staff_services.deny(request_id, actor(member), "credits_used", "", utcnow())

    in_another_transaction(app, deny)

    with pytest.raises(Conflict):
        refunds.customer_reply(customer, loaded, "The Visa.", utcnow())
    db.session.rollback()
    assert fresh(RefundRequest, request_id).status == RequestStatus.DENIED


def test_credit_instead_for_a_purchase_whose_credits_never_arrived(
    app, staff_client, staff, customer
):
    purchase = make_purchase(customer, "pro", credited=False)
    request = file(customer, purchase)
    assert balance(customer.id) == 0
    assert "Add the 300 credits instead" in text(staff_client.get(detail_path(request.id)))

    act(staff_client, request.id, "credit")

    assert "The missing credits were added." in flashes(staff_client, request.id)
    assert balance(customer.id) == 300
    purchase = fresh(Purchase, purchase.id)
    assert purchase.status == PurchaseStatus.CREDITED
    assert purchase.credited_at is not None
    request = fresh(RefundRequest, request.id)
    assert request.status == RequestStatus.APPROVED
    assert refunds_for(request.id) == []
    assert any("credits added" in e.subject for e in emails_to(customer.email))
    assert len(audit_rows("refund_request.credited_instead", request.id)) == 1

    act(staff_client, request.id, "credit")
    assert balance(customer.id) == 300
    assert ledger_check_passes(app)


def test_credit_instead_is_refused_for_a_credited_purchase(app, staff_client, customer):
    _, request = refundable_request(customer)
    before = state_snapshot()

    act(staff_client, request.id, "credit")

    assert "can be settled with credits" in flashes(staff_client, request.id)
    assert state_snapshot() == before


def test_notes_are_internal_and_messages_reach_the_customer(
    app, staff_client, staff, customer, customer_client
):
    _, request = refundable_request(customer)
    emails_before = len(emails_to(customer.email))

    act(staff_client, request.id, "note", body="Customer is a reseller; check with finance.")
    act(staff_client, request.id, "message", body="We are looking at your purchase today.")

    staff_page = text(staff_client.get(detail_path(request.id)))
    assert (
        f"{staff.email} Internal note Internal — Customer is a reseller; check with finance."
        in staff_page
    )
    assert "We are looking at your purchase today." in staff_page
    page = customer_page(customer_client, request.id)
    assert "reseller" not in page
    assert "We are looking at your purchase today." in page
    new_emails = emails_to(customer.email)[emails_before:]
    assert len(new_emails) == 1
    assert "We are looking at your purchase today." in new_emails[0].body_text
    assert "reseller" not in " ".join(e.body_text for e in emails_to(customer.email))
    assert len(audit_rows("refund_request.noted", request.id)) == 1
    assert len(audit_rows("refund_request.messaged", request.id)) == 1


@pytest.mark.parametrize("body", ["", "   ", "\n\t \r\n"], ids=["empty", "spaces", "blank lines"])
@pytest.mark.parametrize("action", ["note", "message"])
def test_an_empty_note_or_message_is_refused(app, staff_client, customer, action, body):
    _, request = refundable_request(customer)
    before = state_snapshot()
    act(staff_client, request.id, action, body=body)
    assert "Write something first" in flashes(staff_client, request.id)
    assert state_snapshot() == before


def test_take_hand_over_and_release(app, staff_client, staff, other_staff, customer):
    _, request = refundable_request(customer)

    act(staff_client, request.id, "take")
    request = fresh(RefundRequest, request.id)
    assert request.assignee_id == staff.id
    assert request.status == RequestStatus.IN_REVIEW
    assert "It is yours." in flashes(staff_client, request.id)

    act(staff_client, request.id, "assign", assignee=str(other_staff.id))
    assert fresh(RefundRequest, request.id).assignee_id == other_staff.id

    before = state_snapshot()
    act(staff_client, request.id, "assign", assignee=str(customer.id))
    assert "Choose a staff member." in flashes(staff_client, request.id)
    act(staff_client, request.id, "assign", assignee="someone")
    assert state_snapshot() == before

    act(staff_client, request.id, "assign", assignee="nobody")
    request = fresh(RefundRequest, request.id)
    assert request.assignee_id is None
    assert request.status == RequestStatus.IN_REVIEW

    logged = audit_rows("refund_request.assigned", request.id)
    assert [(row.before, row.after) for row in logged] == [
        ({"assignee_id": None}, {"assignee_id": staff.id}),
        ({"assignee_id": staff.id}, {"assignee_id": other_staff.id}),
        ({"assignee_id": other_staff.id}, {"assignee_id": None}),
    ]
    assigned = events(request.id, "assigned")
    assert len(assigned) == 3
    assert not any(event.visible_to_customer for event in assigned)
