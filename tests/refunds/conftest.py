"""Fixtures for the refund tests: a logged-in customer, and a private upload folder."""

from pathlib import Path

import pytest

from portal.accounts.models import User
from tests.factories import login_as, make_user


@pytest.fixture
def upload_folder(app, monkeypatch, tmp_path) -> Path:
    """Screenshots of this test go to a folder of its own, so leftovers are visible."""
    folder = tmp_path / "uploads"
    monkeypatch.setitem(app.config, "UPLOAD_FOLDER", str(folder))
    return folder


@pytest.fixture
def customer(client) -> User:
    """A customer logged in on `client`."""
    user = make_user()
    login_as(client, user)
    return user
