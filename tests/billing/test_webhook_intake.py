"""Signed webhook bodies that are hostile or name objects the portal cannot act on.

Only Stripe can sign, but a signed body may still be malformed, or name an object that
Stripe (or the portal) does not have. None of them may answer 500 or change anything:
malformed bodies answer 400; events that are well formed but not ours answer 200, so
that Stripe stops delivering them.
"""

import json

import pytest
import stripe
from sqlalchemy import func, select

from portal.billing.gateway import NoSuchObject, StripeGateway
from portal.billing.models import Dispute, PurchaseStatus
from portal.billing.webhooks import NOT_AT_STRIPE
from portal.db import db
from portal.errors import PaymentProviderError
from portal.ledger import services as ledger
from tests.billing.helpers import (
    balance,
    deliver,
    entries,
    fake_event,
    open_checkout,
    pay_in_store,
    payment_intent_of,
    post_webhook,
    purchase,
    refunds_of,
    sandbox,
    signature,
    stripe_event_count,
    stripe_event_rows,
    the_event,
)

BIGGEST_PURCHASE_ID = 2**31 - 1


def signed_post(client, payload: bytes):
    return post_webhook(client, payload, signature(payload))


def assert_refused(response) -> None:
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["error"] == "invalid_webhook"
    assert stripe_event_count() == 0


def assert_nothing_changed(user, purchase_id: int) -> None:
    assert purchase(purchase_id).status == PurchaseStatus.PENDING
    assert balance(user.id) == 0
    assert entries(user.id) == []
    assert ledger.check_books() == []


# -- bodies nested too deeply ------------------------------------------------------------


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [100_000, 2_000, 200], ids=["100k", "2k", "200"])
def test_deeply_nested_body_is_refused(client, depth):
    assert_refused(signed_post(client, nested(depth).encode()))


@pytest.mark.parametrize("depth", [100_000, 2_000, 900, 200], ids=["100k", "2k", "900", "200"])
def test_event_with_a_deeply_nested_object_is_refused(client, depth):
    event = fake_event("customer.created", {"id": "cus_test_deep"})
    body = json.dumps(event).replace('"cus_test_deep"}', f'"cus_test_deep", "x": {nested(depth)}}}')

    assert_refused(signed_post(client, body.encode()))


def test_ordinary_nesting_of_a_stripe_event_is_accepted(client):
    """Stripe's events are a few levels deep; expanded objects add a few more."""
    obj = {"id": "cus_test_nested"}
    inner = obj
    for _ in range(15):
        inner["child"] = {}
        inner = inner["child"]

    response = deliver(client, fake_event("customer.created", obj))

    assert response.get_json()["outcome"] == "ignored"


# -- purchase ids that are not ours -----------------------------------------------------


NOT_A_PURCHASE_ID = {
    "2^31": str(2**31),
    "40 digits": "9" * 40,
    "zero": "0",
    "negative": "-1",
    "superscript digit": "\u00b2",
    "arabic-indic digits": "\u0661\u0662",
    "spaces": " 1",
    "number": 1,
    "list": ["1"],
}


@pytest.mark.parametrize("value", NOT_A_PURCHASE_ID.values(), ids=NOT_A_PURCHASE_ID.keys())
@pytest.mark.parametrize("field", ["metadata", "client_reference_id"])
def test_declined_payment_naming_no_purchase_of_ours_changes_nothing(client, user, field, value):
    purchase_id, _ = open_checkout(user)
    obj = {"id": "pi_test_not_ours", "object": "payment_intent"}
    obj |= {"metadata": {"purchase_id": value}} if field == "metadata" else {field: value}
    event = fake_event("payment_intent.payment_failed", obj)

    response = deliver(client, event)

    assert response.get_json() == {"received": True, "outcome": "False"}
    [row] = stripe_event_rows(event["id"])
    assert row.processed_at is not None
    assert_nothing_changed(user, purchase_id)


@pytest.mark.parametrize("metadata", [["purchase_id", "1"], "purchase_id=1", 1, None])
def test_metadata_that_is_not_an_object_names_no_purchase(client, user, metadata):
    purchase_id, _ = open_checkout(user)
    event = fake_event(
        "payment_intent.payment_failed",
        {"id": "pi_test_odd_metadata", "object": "payment_intent", "metadata": metadata},
    )

    assert deliver(client, event).get_json()["outcome"] == "False"
    assert_nothing_changed(user, purchase_id)


def test_the_largest_purchase_id_the_column_holds_is_looked_up(client, user):
    """The boundary: 2^31 - 1 is a valid id (of no purchase here), 2^31 is not one."""
    purchase_id, _ = open_checkout(user)
    event = fake_event(
        "payment_intent.payment_failed",
        {"id": "pi_test_big", "metadata": {"purchase_id": str(BIGGEST_PURCHASE_ID)}},
    )

    assert deliver(client, event).get_json()["outcome"] == "False"
    assert_nothing_changed(user, purchase_id)


def test_declined_payment_of_our_purchase_still_marks_it_failed(client, user):
    purchase_id, _ = open_checkout(user)
    event = fake_event(
        "payment_intent.payment_failed",
        {"id": "pi_test_ours", "metadata": {"purchase_id": str(purchase_id)}},
    )

    assert deliver(client, event).get_json()["outcome"] == "True"
    assert purchase(purchase_id).status == PurchaseStatus.FAILED


# -- objects Stripe does not have -------------------------------------------------------

CHECKOUT_EVENTS = [
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "checkout.session.expired",
]
REFUND_EVENTS = ["refund.created", "refund.updated", "refund.failed"]
DISPUTE_EVENTS = [
    "charge.dispute.created",
    "charge.dispute.updated",
    "charge.dispute.closed",
    "charge.dispute.funds_withdrawn",
    "charge.dispute.funds_reinstated",
]


def credited_purchase(client, user) -> tuple[int, str]:
    """A paid and credited purchase (300 credits); returns (purchase id, payment intent)."""
    purchase_id, session_id = open_checkout(user)
    pay_in_store(session_id)
    deliver(client, the_event("checkout.session.completed", id=session_id))
    assert balance(user.id) == 300
    return purchase_id, payment_intent_of(session_id)


def assert_acknowledged_and_ignored(client, event: dict) -> None:
    """Answered 200 and recorded as handled, so that Stripe stops delivering it."""
    response = deliver(client, event)

    assert response.get_json() == {"received": True, "outcome": NOT_AT_STRIPE}
    [row] = stripe_event_rows(event["id"])
    assert row.processed_at is not None
    assert row.outcome == NOT_AT_STRIPE
    assert deliver(client, event).get_json() == {"received": True, "duplicate": True}


@pytest.mark.parametrize("event_type", CHECKOUT_EVENTS)
def test_event_for_a_checkout_session_stripe_does_not_have_is_acknowledged(
    client, user, event_type
):
    purchase_id, _ = open_checkout(user)
    # The body names our purchase, but only Stripe's copy of the session counts.
    event = fake_event(
        event_type,
        {
            "id": "cs_test_not_at_stripe",
            "object": "checkout.session",
            "status": "complete",
            "payment_status": "paid",
            "client_reference_id": str(purchase_id),
            "metadata": {"purchase_id": str(purchase_id)},
        },
    )

    assert_acknowledged_and_ignored(client, event)

    assert_nothing_changed(user, purchase_id)


@pytest.mark.parametrize("event_type", REFUND_EVENTS)
def test_event_for_a_refund_stripe_does_not_have_is_acknowledged(client, user, event_type):
    purchase_id, intent = credited_purchase(client, user)
    event = fake_event(
        event_type,
        {
            "id": "re_test_not_at_stripe",
            "object": "refund",
            "amount": 2_000,
            "status": "succeeded",
            "payment_intent": intent,
        },
    )

    assert_acknowledged_and_ignored(client, event)

    assert purchase(purchase_id).refunded_cents == 0
    assert refunds_of(purchase_id) == []
    assert balance(user.id) == 300
    assert ledger.check_books() == []


@pytest.mark.parametrize("event_type", DISPUTE_EVENTS)
def test_event_for_a_dispute_stripe_does_not_have_is_acknowledged(client, user, event_type):
    purchase_id, intent = credited_purchase(client, user)
    event = fake_event(
        event_type,
        {
            "id": "dp_test_not_at_stripe",
            "object": "dispute",
            "status": "lost",
            "amount": 2_000,
            "payment_intent": intent,
        },
    )

    assert_acknowledged_and_ignored(client, event)

    assert db.session.scalar(select(func.count()).select_from(Dispute)) == 0
    assert purchase(purchase_id).status == PurchaseStatus.CREDITED
    assert balance(user.id) == 300
    assert ledger.check_books() == []


def test_charge_refunded_for_a_payment_stripe_does_not_have_is_acknowledged(client, user):
    purchase_id, _ = credited_purchase(client, user)
    event = fake_event(
        "charge.refunded",
        {"id": "ch_test_not_at_stripe", "payment_intent": "pi_test_not_at_stripe"},
    )

    assert_acknowledged_and_ignored(client, event)

    assert purchase(purchase_id).refunded_cents == 0
    assert balance(user.id) == 300


@pytest.mark.parametrize("intent", ["pi_test_1/../../refunds", "pi_test_1\n", "pi test", ""])
def test_a_payment_intent_that_cannot_be_a_stripe_id_is_never_asked_for(client, user, intent):
    """An id is put into the path of a request to Stripe only if it is shaped like one."""
    purchase_id, _ = credited_purchase(client, user)
    event = fake_event("charge.refunded", {"id": "ch_test_1", "payment_intent": intent})

    response = deliver(client, event)

    assert response.get_json()["outcome"] in (NOT_AT_STRIPE, "False")
    assert purchase(purchase_id).refunded_cents == 0
    assert balance(user.id) == 300


@pytest.mark.parametrize("field", ["id", "type"])
def test_event_id_or_type_with_a_trailing_line_break_is_refused(client, field):
    event = fake_event("customer.created", {"id": "cus_test_1"})
    event[field] += "\n"

    assert_refused(signed_post(client, json.dumps(event).encode()))


def test_unknown_object_while_stripe_is_down_still_answers_503(client, user):
    """Only Stripe's own "no such object" is final; an outage is asked again later."""
    event = fake_event("charge.dispute.created", {"id": "dp_test_not_at_stripe"})
    store = sandbox()
    with store.lock:
        store.failures_to_inject = 10

    response = deliver(client, event, expect=503)

    assert response.get_json() == {"error": "stripe_unavailable"}
    [row] = stripe_event_rows(event["id"])
    assert row.processed_at is None
    with store.lock:
        store.failures_to_inject = 0
    assert deliver(client, event).get_json()["outcome"] == NOT_AT_STRIPE


def _failing(error: stripe.StripeError):
    def call():
        raise error

    return call


STRIPE_ANSWERS = {
    "404 no such object": (
        stripe.InvalidRequestError(
            "No such refund: 're_1'", "id", code="resource_missing", http_status=404
        ),
        NoSuchObject,
        False,
    ),
    "400 bad request": (
        stripe.InvalidRequestError("Invalid integer", "amount", http_status=400),
        PaymentProviderError,
        False,
    ),
    "no connection": (stripe.APIConnectionError("connection refused"), PaymentProviderError, True),
    "500": (stripe.APIError("boom", http_status=500), PaymentProviderError, True),
    "429 rate limit": (
        stripe.RateLimitError("slow down", http_status=429),
        PaymentProviderError,
        True,
    ),
}


@pytest.mark.parametrize(
    ("error", "raised", "retryable"), STRIPE_ANSWERS.values(), ids=STRIPE_ANSWERS.keys()
)
def test_gateway_tells_a_missing_object_from_an_outage(error, raised, retryable):
    gateway = StripeGateway("sk_test_unused", [])

    with pytest.raises(PaymentProviderError) as caught:
        gateway._call("a lookup", _failing(error))

    assert type(caught.value) is raised
    assert caught.value.retryable is retryable
