"""The jobs API and Stripe's webhook, fed random and hostile bodies, paths and headers.

Properties: never a 500; always a JSON answer; a rejected call stores nothing and moves
no credits; what is accepted is exactly what the API documents.
"""

import itertools
import json
from urllib.parse import quote

import pytest
from hypothesis import example, given, seed
from hypothesis import strategies as st

from portal.billing.webhooks import HANDLERS
from tests.security.helpers import (
    Actor,
    ServerErrors,
    api_headers,
    balance_of,
    checked,
    signed_webhook,
)
from tests.security.strategies import (
    FEWER,
    FUZZ,
    JSON_TEXT,
    JSON_VALUE,
    RAW_BODY,
    TEXT,
    json_bytes,
    json_member,
    json_object,
)

CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=latin-1",
        "text/plain",
        "application/x-www-form-urlencoded",
        "",
    ]
)


@pytest.fixture
def errors():
    with ServerErrors() as collected:
        yield collected


@pytest.fixture
def api(app, world):
    return Actor(app, "api_token", headers=api_headers())


def post_json(actor: Actor, path: str, body: bytes, content_type: str = "application/json"):
    headers = {"Content-Type": content_type} if content_type else {}
    return actor.open("POST", path, data=body, headers=headers)


def answered_in_json(response) -> None:
    assert response.is_json, (response.status_code, response.get_data(as_text=True)[:200])


# -- POST /api/v1/jobs ------------------------------------------------------------------------


@seed(201)
@FUZZ
@given(
    body=json_object(
        external_id=json_member("job-fixed", "job-" + "x" * 300, "", " "),
        customer_email=json_member("A", "B", "STAFF", " A-UPPER ", "nobody@example.com"),
        operation=json_member("upscale", "x" * 101),
        credits=json_member(1, 2, 0, -1, 1_000_000, 1_000_001, 10**30, 1.0, 1e3, True, "1"),
    )
)
@example(body={"external_id": "e1", "customer_email": "A", "operation": "o", "credits": 1e3})
@example(body={"external_id": "e2", "customer_email": "A", "operation": "o", "credits": 5.0})
def test_create_job(app, world, api, errors, body):
    emails = {
        "A": world.customer_a.email,
        "B": world.customer_b.email,
        "STAFF": world.staff.email,
        " A-UPPER ": f" {world.customer_a.email.upper()} ",
    }
    if isinstance(body.get("customer_email"), str) and body["customer_email"] in emails:
        body["customer_email"] = emails[body["customer_email"]]
    before = balance_of(world.customer_a.id)
    response = checked(
        "create job", lambda: post_json(api, "/api/v1/jobs", json_bytes(body)), errors
    )
    answered_in_json(response)
    after = balance_of(world.customer_a.id)
    if response.status_code in (200, 201):
        credits = body["credits"]
        assert type(credits) is int and 0 < credits <= 1_000_000, body
        assert isinstance(body["external_id"], str) and body["external_id"].strip()
        if response.status_code == 201 and response.get_json()["balance_after"] == after:
            assert after in (before, before - credits)
    else:
        assert after == before


@seed(202)
@FUZZ
@given(body=RAW_BODY, content_type=CONTENT_TYPES, path=st.sampled_from(["jobs", "fail"]))
@example(body=b"[" * 5000 + b"]" * 5000, content_type="application/json", path="jobs")
@example(body=b'{"credits": NaN}', content_type="application/json", path="jobs")
@example(body=b'{"credits": Infinity}', content_type="application/json", path="jobs")
def test_raw_bodies(app, world, api, errors, body, content_type, path):
    target = "/api/v1/jobs" if path == "jobs" else f"/api/v1/jobs/{world.running_job_ids[1]}/fail"
    response = checked(path, lambda: post_json(api, target, body, content_type), errors)
    answered_in_json(response)


@seed(203)
@FUZZ
@given(
    job=st.one_of(
        st.sampled_from(["running", "done", "other", "0", "-1", "2147483648", "٥", "1e3"]),
        TEXT,
        st.integers(min_value=-(2**40), max_value=2**40).map(str),
    ),
    action=st.sampled_from(["show", "complete", "fail"]),
    body=json_object(
        reason=json_member("platform_error", "invalid_input", "PLATFORM_ERROR"),
        detail=json_member("worker lost", "x" * 2001, "a\x00b"),
    ),
)
def test_job_calls(app, world, api, errors, job, action, body):
    ids = {
        "running": str(world.running_job_ids[0]),
        "done": str(world.a.job_id),
        "other": str(world.t.job_id),
    }
    segment = quote(ids.get(job, job), safe="") or "x"
    if action == "show":
        response = checked("show", lambda: api.get(f"/api/v1/jobs/{segment}"), errors)
    elif action == "complete":
        path = f"/api/v1/jobs/{segment}/complete"
        response = checked("complete", lambda: post_json(api, path, b"{}"), errors)
    else:
        path = f"/api/v1/jobs/{segment}/fail"
        response = checked("fail", lambda: post_json(api, path, json_bytes(body)), errors)
    answered_in_json(response)
    if action == "fail" and response.status_code == 200:
        assert body.get("reason") in ("platform_error", "invalid_input")
        assert isinstance(body.get("detail", ""), str) and len(body.get("detail", "")) <= 2000


@seed(204)
@FUZZ
@given(
    email=st.one_of(
        st.sampled_from(["A", "STAFF", "A-UPPER", "nobody@example.com"]),
        TEXT,
        JSON_TEXT.map(lambda text: text.encode("utf-8", "surrogatepass")),
        st.binary(max_size=20),
    )
)
def test_customer_balance(app, world, api, errors, email):
    emails = {
        "A": world.customer_a.email,
        "STAFF": world.staff.email,
        "A-UPPER": world.customer_a.email.upper(),
    }
    email = emails.get(email, email) if isinstance(email, str) else email
    segment = quote(email, safe="@") or "x"
    response = checked("balance", lambda: api.get(f"/api/v1/customers/{segment}/balance"), errors)
    answered_in_json(response)
    if email in (world.customer_a.email, world.customer_a.email.upper()):
        assert response.status_code == 200
    if response.status_code == 200:
        assert response.get_json()["customer_email"] != world.staff.email


# -- the webhook ------------------------------------------------------------------------------

SIGNATURES = st.one_of(
    st.none(),
    # Line breaks cannot travel in an HTTP header (the test client refuses to send them).
    TEXT.filter(lambda text: "\r" not in text and "\n" not in text),
    st.builds(
        lambda t, v: f"t={t},v1={v}",
        st.integers(min_value=-(2**40), max_value=2**40),
        st.text(alphabet="0123456789abcdef", max_size=64),
    ),
    st.sampled_from(["t=,v1=", "v1=" + "0" * 64, "t=1" + ",v1=" * 200, ",,,", "t=1,v0=00"]),
)


@seed(205)
@FUZZ
@given(
    body=st.one_of(RAW_BODY, JSON_VALUE.map(json_bytes)),
    signature=SIGNATURES,
    content_type=CONTENT_TYPES,
)
def test_webhook_with_random_bodies_and_signatures(
    app, world, errors, body, signature, content_type
):
    stripe = Actor(app, "anonymous")
    headers = {"Content-Type": content_type} if content_type else {}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    response = checked(
        "webhook",
        lambda: stripe.open("POST", "/webhooks/stripe", data=body, headers=headers),
        errors,
    )
    answered_in_json(response)
    assert response.status_code == 400


EVENT_NUMBERS = itertools.count(1)
EVENT_TYPES = st.one_of(st.sampled_from(sorted(HANDLERS)), TEXT, JSON_VALUE)
OBJECT = st.one_of(
    JSON_VALUE,
    st.fixed_dictionaries(
        {"id": st.one_of(st.sampled_from(["cs_unknown", "re_unknown", "pi_unknown"]), JSON_TEXT)},
        optional={
            "object": JSON_VALUE,
            "payment_intent": st.one_of(st.none(), st.sampled_from(["pi_unknown"]), JSON_VALUE),
            "charge": JSON_VALUE,
            "status": JSON_VALUE,
            "amount": JSON_VALUE,
            "metadata": JSON_VALUE,
        },
    ),
)


@seed(206)
@FEWER
@given(
    event=st.fixed_dictionaries(
        {},
        optional={
            "id": st.one_of(st.text(max_size=20).map(lambda s: "evt_" + s), JSON_VALUE),
            "type": EVENT_TYPES,
            "data": st.one_of(st.fixed_dictionaries({"object": OBJECT}), JSON_VALUE),
        },
    )
)
def test_webhook_with_signed_events_of_any_shape(app, world, errors, event):
    """Only Stripe can sign, but a surprising event must still not crash the endpoint."""
    if isinstance(event.get("id"), str):
        event["id"] += f"-{next(EVENT_NUMBERS)}"  # each example a new event, not a redelivery
    send_signed(app, errors, event)


def send_signed(app, errors, event):
    """Stripe answers at once here (no outage is injected), so no event may answer 503: an
    object Stripe does not have is acknowledged, not delivered again for days."""
    stripe = Actor(app, "anonymous")
    response = checked("signed webhook", lambda: signed_webhook(stripe, event), errors)
    answered_in_json(response)
    assert response.status_code in (200, 400), response.get_data(as_text=True)
    return response


def event_of(event_type: str, obj, event_id: str = "evt_edge") -> dict:
    return {"id": event_id, "object": "event", "type": event_type, "data": {"object": obj}}


@pytest.mark.parametrize(
    "event",
    [
        event_of("charge.refunded", {"id": "ch_1"}),
        event_of("charge.refunded", {"id": "ch_1", "payment_intent": None}),
        event_of("refund.updated", {"id": "re_1", "payment_intent": 5}),
        event_of("checkout.session.completed", {"id": "cs_\ud800"}),
        event_of("customer.created", {}, event_id="evt_\ud800"),
        event_of("customer.\ud800", {}),
        event_of("customer.created", {}, event_id="evt_" + "x" * 300),
        event_of("customer." + "x" * 300, {}),
        event_of("customer.created", {}, event_id="evt_\x00"),
        event_of("customer.created", {"note": "a\x00b"}),
        event_of("customer.created", {"deep": json.loads("[" * 500 + "]" * 500)}),
        event_of("customer.created\n", {}),
        event_of("charge.refunded", {"id": "ch_1", "payment_intent": "pi_1/../../refunds"}),
        event_of("refund.updated", {"id": "re_unknown"}),
        event_of("charge.dispute.closed", {"id": "dp_unknown"}),
        event_of("checkout.session.expired", {"id": "cs_unknown"}),
        event_of("payment_intent.payment_failed", {"id": "pi_1", "metadata": ["purchase_id"]}),
        event_of("payment_intent.payment_failed", {"id": "pi_1", "client_reference_id": "9" * 40}),
        event_of(
            "payment_intent.payment_failed", {"id": "pi_1", "metadata": {"purchase_id": "\u00b2"}}
        ),
        event_of(
            "payment_intent.payment_failed", {"id": "pi_1", "metadata": {"purchase_id": str(2**31)}}
        ),
    ],
    ids=[
        "charge-without-payment-intent",
        "charge-with-null-payment-intent",
        "refund-with-numeric-payment-intent",
        "session-id-with-lone-surrogate",
        "event-id-with-lone-surrogate",
        "event-type-with-lone-surrogate",
        "overlong-event-id",
        "overlong-event-type",
        "event-id-with-nul",
        "object-with-nul",
        "object-nested-500-deep",
        "event-type-with-trailing-newline",
        "charge-with-a-path-for-payment-intent",
        "refund-stripe-does-not-have",
        "dispute-stripe-does-not-have",
        "session-stripe-does-not-have",
        "metadata-that-is-a-list",
        "purchase-id-of-40-digits",
        "purchase-id-of-a-superscript-digit",
        "purchase-id-beyond-the-integer-column",
    ],
)
def test_webhook_with_signed_events_of_odd_shapes(app, world, errors, event):
    """Authentic but odd events: answered (200, or 400 for a malformed one), never a crash."""
    send_signed(app, errors, event)


def test_webhook_answers_redeliveries_once(app, world, errors):
    stripe = Actor(app, "anonymous")
    event = {"id": "evt_again", "type": "customer.created", "data": {"object": {"id": "cus_1"}}}
    first = checked("first", lambda: signed_webhook(stripe, event), errors)
    again = checked("again", lambda: signed_webhook(stripe, event), errors)
    assert first.status_code == again.status_code == 200
    assert again.get_json()["duplicate"] is True
    assert json.loads(first.get_data()) != json.loads(again.get_data())
