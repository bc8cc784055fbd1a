"""Fixtures for the Checkout tests: sandbox hygiene, webhook delivery modes, a customer."""

import pytest

from portal.accounts.models import User
from tests.factories import login_as, make_user, quiet_sandbox


@pytest.fixture(autouse=True)
def _sandbox_hygiene(app, monkeypatch):
    """Keep what one test did at the (app-wide) sandbox from changing the next test.

    Nothing is delivered in the background unless a test asks for it, and the Stripe
    library's pauses between retries are skipped so that injected failures stay fast.
    """
    store = quiet_sandbox(app, monkeypatch, webhooks="off")
    yield
    with store.lock:
        store.failures_to_inject = 0


@pytest.fixture
def inline_webhooks(app, monkeypatch):
    """The sandbox's events reach POST /webhooks/stripe before the call that made them returns."""
    monkeypatch.setitem(app.config, "SANDBOX_WEBHOOKS", "inline")


@pytest.fixture
def webhooks_off(app, monkeypatch):
    """The sandbox's events are only recorded; the test delivers them itself."""
    monkeypatch.setitem(app.config, "SANDBOX_WEBHOOKS", "off")


@pytest.fixture
def user(app) -> User:
    return make_user()


@pytest.fixture
def customer(client, user) -> User:
    """A customer logged in on `client`."""
    login_as(client, user)
    return user
