"""How a request's leftover transaction ends: COMMIT when it only read (so that psycopg
keeps the connection's prepared statements), ROLLBACK when it wrote without committing,
failed or not (so that nothing half done is kept)."""

from types import SimpleNamespace

import pytest
from sqlalchemy import event, func, select, text

from portal.accounts.models import User
from portal.db import db
from tests.factories import login_as, make_user


@pytest.fixture
def ends(make_app):
    """An app with three test routes, and a record of how each transaction ended."""
    app = make_app(SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 1, "max_overflow": 0})

    @app.get("/test/reads")
    def reads():
        return str(db.session.scalar(select(func.count()).select_from(User)))

    @app.get("/test/writes-without-committing")
    def writes_without_committing():
        db.session.add(make_user_row("forgotten@example.com"))
        db.session.flush()
        return "flushed"

    @app.get("/test/changes-without-flushing")
    def changes_without_flushing():
        user = db.session.scalar(select(User).where(User.email == "kept@example.com"))
        user.timezone = "Europe/Paris"
        return "changed"

    @app.get("/test/fails-after-writing")
    def fails_after_writing():
        db.session.add(make_user_row("half-done@example.com"))
        db.session.flush()
        raise RuntimeError("the view broke")

    seen: list[str] = []
    with app.app_context():
        engine = db.engine
    event.listen(engine, "commit", lambda _connection: seen.append("commit"))
    event.listen(engine, "rollback", lambda _connection: seen.append("rollback"))
    app.config["PROPAGATE_EXCEPTIONS"] = False
    return app, seen


def make_user_row(email: str) -> User:
    return User(email=email, password_hash="x")


def test_a_request_that_only_read_ends_with_commit(ends):
    app, seen = ends
    assert app.test_client().get("/test/reads").status_code == 200
    assert seen[-1:] == ["commit"]


def test_a_request_that_wrote_without_committing_is_rolled_back(ends):
    app, seen = ends
    assert app.test_client().get("/test/writes-without-committing").status_code == 200
    assert "commit" not in seen
    with app.app_context():
        kept = db.session.scalar(select(User).where(User.email == "forgotten@example.com"))
    assert kept is None


def test_a_request_that_changed_an_object_without_saving_it_is_rolled_back(ends):
    app, seen = ends
    with app.app_context():
        make_user(email="kept@example.com")
    seen.clear()
    assert app.test_client().get("/test/changes-without-flushing").status_code == 200
    assert "commit" not in seen
    with app.app_context():
        kept = db.session.scalar(select(User).where(User.email == "kept@example.com"))
        assert kept.timezone is None


def test_a_request_that_failed_after_writing_is_rolled_back(ends):
    app, seen = ends
    assert app.test_client().get("/test/fails-after-writing").status_code == 500
    assert "commit" not in seen
    with app.app_context():
        kept = db.session.scalar(select(User).where(User.email == "half-done@example.com"))
    assert kept is None


@pytest.mark.postgres
def test_pages_keep_their_prepared_statements_on_postgresql(make_app):
    """psycopg prepares a statement run five times on a connection, and forgets them all
    at a ROLLBACK: with requests ending in COMMIT, the statements of a page stay
    prepared on the connection (one connection here, so every request shares it)."""
    app = make_app(SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 1, "max_overflow": 0})
    with app.app_context():
        email = make_user().email
    client = app.test_client()
    # The log-in form needs only the e-mail, and the one connection must be free for it.
    login_as(client, SimpleNamespace(email=email))
    for _ in range(8):
        assert client.get("/dashboard").status_code == 200
    with app.app_context():
        prepared = db.session.scalar(text("SELECT count(*) FROM pg_prepared_statements"))
    assert prepared > 0
