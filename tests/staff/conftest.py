"""Fixtures for the staff queue tests: sandbox hygiene, a staff member and a customer."""

import pytest

from portal.accounts.models import User
from tests.factories import make_staff, make_user, quiet_sandbox
from tests.staff.helpers import client_for


@pytest.fixture(autouse=True)
def _sandbox_hygiene(app, monkeypatch):
    """Nothing runs in background threads, and one test's sandbox faults never leak.

    Events reach the webhook inline (before the call that made them returns); the Stripe
    library's pauses between retries are skipped so that injected failures stay fast.
    """
    store = quiet_sandbox(app, monkeypatch, webhooks="inline")
    yield
    with store.lock:
        store.failures_to_inject = 0


@pytest.fixture
def staff(app) -> User:
    return make_staff(timezone="America/Vancouver")


@pytest.fixture
def other_staff(app) -> User:
    return make_staff()


@pytest.fixture
def customer(app) -> User:
    return make_user()


@pytest.fixture
def staff_client(app, staff):
    """A client logged in as `staff`."""
    return client_for(app, staff)


@pytest.fixture
def customer_client(app, customer):
    """A client logged in as `customer`."""
    return client_for(app, customer)
