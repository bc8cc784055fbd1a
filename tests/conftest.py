"""Fixtures: one app and schema per test run, a clean database for every test.

Tests run on SQLite by default and on PostgreSQL when TEST_DATABASE_URL is set. The
schema is built by the real migrations; tables are emptied after each test rather than
rolled back, so tests that use several connections at once (threads, row locks) see
committed data like production does.
"""

import contextvars
import os
import re
import socket

import pytest
from flask import has_app_context
from flask.testing import FlaskClient
from sqlalchemy import text

from portal import create_app, schema
from portal.billing import gateway as gateway_module
from portal.db import db
from portal.extensions import limiter
from tests.stripe_contract import Recorder

POSTGRES_URL = os.environ.get("TEST_DATABASE_URL", "")


def pytest_collection_modifyitems(config, items):
    if POSTGRES_URL:
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL: set TEST_DATABASE_URL to run it")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def database_url(tmp_path_factory) -> str:
    if POSTGRES_URL:
        return POSTGRES_URL
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'portal.db'}"


@pytest.fixture(scope="session")
def test_settings(database_url, tmp_path_factory) -> dict:
    os.environ["PORTAL_ENV"] = "testing"
    return {
        "SQLALCHEMY_DATABASE_URI": database_url,
        "INSTANCE_PATH": str(tmp_path_factory.mktemp("instance")),
        "SECRET_KEY": "test-secret-key",
        "SERVER_NAME": "portal.test",
        "MAIL_BACKEND": "log",
        # Always the in-process sandbox, whatever the developer's environment says.
        "PAYMENTS_MODE": "sandbox",
        "STRIPE_API_BASE": "",
        "STRIPE_SECRET_KEY": "sk_test_sandbox",
        "STRIPE_WEBHOOK_SECRET": "whsec_sandbox",
        "STRIPE_WEBHOOK_SECRET_PREVIOUS": "",
    }


@pytest.fixture
def make_app(app, test_settings):
    """Build another app on the test database, for tests that add routes or settings."""

    built = []

    def build(**overrides):
        extra = create_app({**test_settings, **overrides})
        extra.test_client_class = IsolatedClient
        built.append(extra)
        return extra

    yield build
    for extra in built:
        with extra.app_context():
            db.engine.dispose()
    # The limiter is one object shared by every app: clear what a limited app counted and
    # give it back to the test app, where limits are off.
    if any(extra.config["RATELIMIT_ENABLED"] for extra in built):
        with built[-1].app_context():
            # A test of a lost Redis leaves a store that cannot answer, and holds nothing.
            if limiter.storage.check():
                limiter.reset()
    limiter.enabled = app.config["RATELIMIT_ENABLED"]


@pytest.fixture(scope="session")
def app(test_settings):
    app = create_app(test_settings)
    with app.app_context():
        if test_settings["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
            with db.engine.begin() as connection:
                connection.execute(text("DROP SCHEMA public CASCADE"))
                connection.execute(text("CREATE SCHEMA public"))
        schema.upgrade()
    yield app
    with app.app_context():
        db.engine.dispose()


def _empty_all_tables() -> None:
    tables = [table.name for table in reversed(db.metadata.sorted_tables)]
    with db.engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                connection.execute(text(f"DELETE FROM {table}"))  # noqa: S608 (our own names)


@pytest.fixture(autouse=True)
def _clean_database(app):
    with app.app_context():
        yield
        db.session.remove()
        _empty_all_tables()


class IsolatedClient(FlaskClient):
    """A test client whose requests run in their own app context and database session.

    The test holds an app context of its own; without this, Flask would reuse it for
    each request and the test and the views would share one SQLAlchemy session, hiding
    bugs that production (a fresh session per request) would show.
    """

    def open(self, *args, **kwargs):
        kwargs.setdefault("buffered", True)
        response = contextvars.Context().run(super().open, *args, **kwargs)
        # What the request committed must be visible to the test's own session.
        if has_app_context():
            db.session.expire_all()
        return response


@pytest.fixture
def client(app):
    app.test_client_class = IsolatedClient
    return app.test_client()


@pytest.fixture(autouse=True)
def stripe_contract(app, monkeypatch) -> Recorder:
    """Record each request the gateway sends the sandbox in a test, with its answer, and
    each event the sandbox sends; `pytest_runtest_call` holds them to Stripe's contract."""
    store = app.extensions["stripe_sandbox"]
    recorder = Recorder(gateway_module.call_app, store.on_event)
    monkeypatch.setattr(gateway_module, "call_app", recorder.call_app)
    monkeypatch.setattr(store, "on_event", recorder.on_event)
    return recorder


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """Fail a test whose Stripe traffic disagrees with the definitions in the installed
    `stripe` library (tests/stripe_contract.py), as a failure of the test itself."""
    result = yield
    recorder = getattr(item, "funcargs", {}).get("stripe_contract")
    problems = recorder.problems() if recorder is not None else []
    if problems:
        pytest.fail(
            "The sandbox and Stripe's library disagree:\n" + "\n".join(problems), pytrace=False
        )
    return result


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Make outbound connections fail; loopback stays open for local servers."""
    real_connect = socket.socket.connect

    def guarded_connect(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not re.match(r"^(127\.|::1$|localhost$|/)", host):
            raise OSError(f"network access in tests is not allowed: {address!r}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
