"""Server-side sessions: log-out, timeouts and credential changes end them for good."""

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from portal.accounts import sessions
from portal.accounts.models import UserSession
from portal.db import db
from portal.timeutil import utcnow
from tests.factories import csrf_token, login_as, make_staff, make_user

COOKIE_NAMES = ("portal-session", "portal-remember")


def copy_cookies(source, target) -> None:
    for name in COOKIE_NAMES:
        cookie = source.get_cookie(name, domain="portal.test")
        if cookie is not None:
            target.set_cookie(name, cookie.value, domain="portal.test")


def test_log_in_opens_a_server_side_session(client):
    user = make_user()
    login_as(client, user)
    row = db.session.scalars(select(UserSession)).one()
    assert row.user_id == user.id and row.ended_at is None
    assert row.ends_at - row.created_at == sessions.ABSOLUTE_LIFETIME


def test_cookies_copied_before_log_out_stop_working_after_it(client, app):
    user = make_user()
    token = csrf_token(client, "/login")
    client.post(
        "/login",
        data={
            "email": user.email,
            "password": "correct horse battery staple",
            "remember": "y",
            "csrf_token": token,
        },
    )
    thief = app.test_client()
    copy_cookies(client, thief)
    assert thief.get("/dashboard").status_code == 200

    client.post("/logout", data={"csrf_token": csrf_token(client, "/dashboard")})

    assert thief.get("/dashboard").status_code == 302
    assert client.get_cookie("portal-remember", domain="portal.test") is None


def test_logging_in_again_replaces_the_session_id(client):
    user = make_user()
    login_as(client, user)
    first = client.get_cookie("portal-session", domain="portal.test").value
    client.post("/logout", data={"csrf_token": csrf_token(client, "/dashboard")})
    login_as(client, user)
    assert client.get_cookie("portal-session", domain="portal.test").value != first
    assert db.session.scalar(select(UserSession.id).where(UserSession.ended_at.is_(None)))


@pytest.mark.parametrize(
    ("make", "idle", "still_in"),
    [
        (make_staff, timedelta(minutes=29), True),
        (make_staff, timedelta(minutes=31), False),
        (make_user, timedelta(hours=5), True),
    ],
)
def test_staff_sessions_end_after_30_idle_minutes(client, make, idle, still_in):
    login_as(client, make())
    db.session.execute(update(UserSession).values(last_seen_at=utcnow() - idle))
    db.session.commit()
    page = "/staff/" if make is make_staff else "/dashboard"
    assert (client.get(page).status_code == 200) is still_in


def test_every_session_ends_12_hours_after_log_in(client):
    login_as(client, make_user())
    db.session.execute(update(UserSession).values(ends_at=utcnow() - timedelta(seconds=1)))
    db.session.commit()
    assert client.get("/dashboard").status_code == 302


def test_a_session_of_another_user_is_not_accepted(app):
    alice, bob = make_user(), make_user()
    bobs_token = sessions.start(bob, utcnow(), None, None)
    db.session.commit()
    assert sessions.signed_in_user(bob.id, bobs_token, utcnow()) == bob
    assert sessions.signed_in_user(alice.id, bobs_token, utcnow()) is None
    assert sessions.signed_in_user(alice.id, "not-a-token", utcnow()) is None


def test_promotion_to_staff_ends_existing_sessions(client, app):
    user = make_user(email="promoted@example.com")
    login_as(client, user)
    app.test_cli_runner().invoke(args=["create-staff", "promoted@example.com"])
    assert client.get("/dashboard").status_code == 302
    assert db.session.scalar(select(UserSession.id).where(UserSession.ended_at.is_(None))) is None
