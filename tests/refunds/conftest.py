"""Fixtures for the refund tests: a logged-in customer."""

import pytest

from portal.accounts.models import User
from tests.factories import login_as, make_user


@pytest.fixture
def customer(client) -> User:
    """A customer logged in on `client`."""
    user = make_user()
    login_as(client, user)
    return user
