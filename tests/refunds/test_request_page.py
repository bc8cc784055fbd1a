"""The customer's page of one request: the pre-check's estimate while it is open, then what
staff approved and where that money is."""

from datetime import timedelta

import pytest

from portal.billing.money_back import sending
from portal.staff import services as staff_services
from portal.timeutil import utcnow
from tests.factories import make_staff, quiet_sandbox
from tests.refunds.helpers import spend, text
from tests.staff.helpers import (
    AFTER_UNDO_WINDOW,
    actor,
    approve_now,
    file,
    paid_purchase,
    refunds_at_stripe,
    settle_at_stripe,
    the_refund,
)

ESTIMATE = "Estimated refund: $3.90."


@pytest.fixture(autouse=True)
def _sandbox(app, monkeypatch):
    """Stripe's events reach the webhook inline, and no earlier test's faults linger."""
    store = quiet_sandbox(app, monkeypatch, webhooks="inline")
    yield
    with store.lock:
        store.failures_to_inject = 0


@pytest.fixture
def starter_39_unused(customer):
    """A Starter purchase ($5.00 for 50 credits) paid at the sandbox, 11 credits spent,
    and an open request for it: the pre-check estimates 39 credits' worth, $3.90."""
    purchase = paid_purchase(customer, "starter")
    spend(customer, 11)
    request = file(customer, purchase)
    assert request.recommended_cents == 390
    return purchase, request


def _page(client, request_id: int) -> str:
    response = client.get(f"/refunds/{request_id}")
    assert response.status_code == 200
    return text(response)


def test_an_open_request_shows_the_estimate_and_no_refund_yet(client, starter_39_unused):
    _, request = starter_39_unused
    words = _page(client, request.id)
    assert ESTIMATE in words
    assert "Your refund" not in words


def test_a_partial_approval_shows_what_was_approved_and_then_refunded(client, starter_39_unused):
    purchase, request = starter_39_unused
    approved_at = utcnow() - AFTER_UNDO_WINDOW
    approve_now(request, make_staff(), 200, now=approved_at)

    words = _page(client, request.id)
    assert (
        "Your refund $2.00 approved; it is about to be sent to your original payment method."
        in (words)
    )
    assert ESTIMATE not in words

    sending.send_due_refunds(utcnow())
    words = _page(client, request.id)
    assert (
        "$2.00 sent to your original payment method. Banks usually show it within "
        "5\u201310 business days."
    ) in words

    refund = the_refund(request.id)
    [at_stripe] = refunds_at_stripe(purchase.stripe_payment_intent_id)
    assert at_stripe["id"] == refund.stripe_refund_id
    settle_at_stripe(at_stripe["id"])
    words = _page(client, request.id)
    assert "$2.00 refunded to your original payment method." in words
    assert ESTIMATE not in words


def test_an_approval_undone_shows_no_refund_and_the_estimate_again(client, starter_39_unused):
    _, request = starter_39_unused
    staff = make_staff()
    now = utcnow()
    refund = approve_now(request, staff, 200, now=now)
    staff_services.undo_approval(refund.id, actor(staff), now + timedelta(minutes=1))

    words = _page(client, request.id)
    assert "Your refund" not in words
    assert "$2.00 approved" not in words
    assert ESTIMATE in words


def test_a_full_refund_takes_the_refund_offer_off_the_purchase(client, customer):
    purchase = paid_purchase(customer, "starter")
    request = file(customer, purchase)
    approve_now(request, make_staff(), 500, now=utcnow() - AFTER_UNDO_WINDOW)
    link = f"/refunds/new?purchase_id={purchase.id}"

    # Approved in full: nothing is left to ask for while the money is on its way.
    listing = client.get("/purchases")
    assert link not in listing.get_data(as_text=True)
    assert "Full refund on its way" in text(listing)

    sending.send_due_refunds(utcnow())
    [at_stripe] = refunds_at_stripe(purchase.stripe_payment_intent_id)
    settle_at_stripe(at_stripe["id"])
    for path in ("/purchases", f"/purchases/{purchase.id}"):
        page = client.get(path)
        assert link not in page.get_data(as_text=True)
        assert "Request a refund" not in text(page)
        assert "Refunded in full" in text(page)
    assert "$5.00 refunded to your original payment method." in text(
        client.get(f"/refunds/{request.id}")
    )
