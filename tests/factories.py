"""Plain factory functions with valid defaults, and helpers for logging in."""

import itertools
import re

from flask.testing import FlaskClient

from portal.accounts.models import Role, User
from portal.accounts.passwords import hash_password
from portal.extensions import db

DEFAULT_PASSWORD = "correct horse battery staple"
_sequence = itertools.count(1)


def make_user(**overrides) -> User:
    """Create and commit a customer (or whatever `overrides` say)."""
    password = overrides.pop("password", DEFAULT_PASSWORD)
    number = next(_sequence)
    values = {
        "email": f"customer{number}@example.com",
        "password_hash": hash_password(password),
        "role": Role.CUSTOMER,
    }
    values.update(overrides)
    user = User(**values)
    db.session.add(user)
    db.session.commit()
    return user


def make_staff(**overrides) -> User:
    overrides.setdefault("role", Role.STAFF)
    overrides.setdefault("email", f"staff{next(_sequence)}@example.com")
    return make_user(**overrides)


_CSRF = re.compile(r'name="(?:[\w-]+-)?csrf_token" type="hidden" value="([^"]+)"')


def csrf_token(client: FlaskClient, path: str) -> str:
    """Fetch `path` and return the CSRF token of its first form."""
    page = client.get(path)
    match = _CSRF.search(page.get_data(as_text=True))
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def login_as(client: FlaskClient, user: User, password: str = DEFAULT_PASSWORD):
    """Log `user` in through the real log-in form."""
    token = csrf_token(client, "/login")
    response = client.post(
        "/login", data={"email": user.email, "password": password, "csrf_token": token}
    )
    assert response.status_code == 303, response.get_data(as_text=True)
    return response
