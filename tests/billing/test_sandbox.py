"""The Stripe sandbox as the portal relies on it: Stripe's key check, Stripe's 404s, and a
dashboard that lists Checkout Sessions to staff only."""

import pytest

from tests.billing.helpers import (
    dispute_in_store,
    open_checkout,
    pay_in_store,
    plain,
)
from tests.factories import login_as, make_staff, make_user

API = "/sandbox/v1"
KEY = "sk_test_sandbox"


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def assert_stripe_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert error["code"] == code
    return error


# -- the API key ------------------------------------------------------------------------

NOT_THE_KEY = {
    "no header": {},
    "any sk_ key": bearer("sk_test_anything"),
    "live-looking key": bearer("sk_live_" + "x" * 24),
    "the key and more": bearer(KEY + "x"),
    "a prefix of the key": bearer(KEY[:-1]),
    "empty bearer": {"Authorization": "Bearer "},
    "another scheme": {"Authorization": f"Basic {KEY}"},
    "no scheme": {"Authorization": KEY},
    "the webhook secret": bearer("whsec_sandbox"),
}


@pytest.mark.parametrize("headers", NOT_THE_KEY.values(), ids=NOT_THE_KEY.keys())
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/checkout/sessions"),
        ("GET", "/events"),
        ("GET", "/disputes"),
        ("POST", "/refunds"),
        ("GET", "/checkout/sessions/cs_test_missing"),
    ],
)
def test_the_api_answers_only_the_configured_secret_key(client, headers, method, path):
    response = client.open(API + path, method=method, headers=headers)

    assert_stripe_error(response, 401)


def test_the_configured_secret_key_is_accepted(client, user):
    _, session_id = open_checkout(user)

    response = client.get(f"{API}/checkout/sessions", headers=bearer(KEY))

    assert response.status_code == 200
    assert session_id in [session["id"] for session in response.get_json()["data"]]


def test_the_api_follows_the_key_the_portal_is_configured_with(app, client, monkeypatch):
    monkeypatch.setitem(app.config, "STRIPE_SECRET_KEY", "sk_test_rotated")

    assert_stripe_error(client.get(f"{API}/events", headers=bearer(KEY)), 401)
    assert client.get(f"{API}/events", headers=bearer("sk_test_rotated")).status_code == 200


# -- objects the sandbox does not have ---------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/checkout/sessions/cs_test_missing"),
        ("GET", "/checkout/sessions/cs_test_missing/line_items"),
        ("POST", "/checkout/sessions/cs_test_missing/expire"),
        ("GET", "/payment_intents/pi_test_missing"),
        ("GET", "/refunds/re_test_missing"),
        ("GET", "/disputes/dp_test_missing"),
    ],
)
def test_an_unknown_id_answers_404_shaped_as_stripe(client, method, path):
    response = client.open(API + path, method=method, headers=bearer(KEY))

    error = assert_stripe_error(response, 404, "resource_missing")
    assert "_test_missing" in error["message"]


# -- the dashboard ----------------------------------------------------------------------


@pytest.fixture
def sandbox_with_a_dispute(user):
    """A paid session of `user` whose payment the bank disputes; returns (session, dispute)."""
    _, session_id = open_checkout(user)
    pay_in_store(session_id)
    return session_id, dispute_in_store(session_id)["id"]


@pytest.mark.parametrize("visitor", ["anonymous", "the customer", "another customer"])
def test_the_dashboard_lists_no_sessions_to_anyone_but_staff(
    client, user, sandbox_with_a_dispute, visitor
):
    session_id, dispute_id = sandbox_with_a_dispute
    if visitor == "the customer":
        login_as(client, user)
    elif visitor == "another customer":
        login_as(client, make_user())

    page = client.get("/sandbox/")

    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert session_id not in text
    assert user.email not in text
    assert "listed to staff only" in plain(page)
    # Acting as the bank stays open to anyone: the dispute can still be closed.
    assert dispute_id in text
    assert f"/sandbox/disputes/{dispute_id}/close" in text


def test_the_dashboard_lists_sessions_to_staff(client, sandbox_with_a_dispute):
    session_id, dispute_id = sandbox_with_a_dispute
    login_as(client, make_staff())

    text = client.get("/sandbox/").get_data(as_text=True)

    assert session_id in text
    assert dispute_id in text
    assert "listed to staff only" not in text
