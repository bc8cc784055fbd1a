import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from portal.accounts.models import AccountRequest, User
from portal.accounts.passwords import verify_password
from portal.accounts.services import answer_account_requests
from portal.accounts.views import account_links
from portal.db import db
from portal.notifications.models import OutboxEmail
from portal.timeutil import utcnow
from tests.factories import (
    DEFAULT_PASSWORD,
    QueryCounter,
    csrf_token,
    login_as,
    make_staff,
    make_user,
)

STRONG = "a long and unusual passphrase"


def signup(client, email, password=STRONG, confirm=None):
    token = csrf_token(client, "/signup")
    return client.post(
        "/signup",
        data={
            "email": email,
            "password": password,
            "confirm": password if confirm is None else confirm,
            "csrf_token": token,
        },
    )


def answer_as_the_worker() -> None:
    answer_account_requests(utcnow(), account_links())


def last_email_to(address: str) -> OutboxEmail:
    return db.session.scalars(
        select(OutboxEmail).where(OutboxEmail.to_address == address).order_by(OutboxEmail.id.desc())
    ).first()


def finish_link(address: str) -> str:
    body = last_email_to(address).body_text
    return re.search(r"http://portal\.test(/signup/finish/\S+)", body)[1]


def test_signup_sends_a_link_that_creates_the_customer_and_logs_in(client):
    response = signup(client, "  New.Person@Example.COM ")
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/login")
    # Nothing exists until the mailbox's owner follows the link.
    assert db.session.scalar(select(func.count()).select_from(User)) == 0
    answer_as_the_worker()
    link = finish_link("new.person@example.com")

    page = client.get(link)
    assert page.status_code == 200 and b"Create my account" in page.data
    finished = client.post(link, data={"csrf_token": csrf_token(client, link)})
    assert finished.status_code == 303 and finished.headers["Location"].endswith("/dashboard")
    user = db.session.scalar(select(User).where(User.email == "new.person@example.com"))
    assert user is not None and user.role == "customer"
    assert user.password_hash.startswith("$argon2id$")
    assert verify_password(user.password_hash, STRONG)
    assert client.get("/dashboard").status_code == 200
    # The link works once, and the request no longer holds the password's hash.
    assert client.get(link).headers["Location"].endswith("/signup")
    assert db.session.scalars(select(AccountRequest.password_hash)).all() == [None]


def test_signup_with_a_taken_email_answers_the_same_and_tells_only_the_owner(client):
    make_user(email="taken@example.com")
    taken = signup(client, "TAKEN@example.com")
    free = signup(client, "free@example.com")
    assert taken.status_code == free.status_code == 303
    assert taken.headers["Location"] == free.headers["Location"]
    answer_as_the_worker()
    to_owner = last_email_to("taken@example.com")
    assert to_owner.subject == "You already have an account"
    assert "/signup/finish/" not in to_owner.body_text
    assert "http://portal.test/login" in to_owner.body_text
    assert db.session.scalar(select(func.count()).select_from(User)) == 1


def test_the_web_answer_does_the_same_work_whether_or_not_an_account_exists(client, app):
    # Timing cannot tell what the statements do not: both answers write one request row.
    make_user(email="known@example.com")

    def statements(path, form):
        token = csrf_token(client, path)
        with QueryCounter(db.engine) as counter:
            client.post(path, data={**form, "csrf_token": token})
        return [re.sub(r"\s+", " ", statement) for statement in counter.statements]

    for path, form in [
        ("/reset", {}),
        ("/signup", {"password": STRONG, "confirm": STRONG}),
    ]:
        known = statements(path, {**form, "email": "known@example.com"})
        unknown = statements(path, {**form, "email": "unknown@example.com"})
        assert known == unknown, path
        assert any("INSERT INTO account_requests" in statement for statement in known)
        assert not any("users" in statement for statement in known if "INSERT" in statement)


def test_a_sign_up_link_for_an_address_that_got_an_account_meanwhile_sends_to_log_in(client):
    signup(client, "twice@example.com")
    answer_as_the_worker()
    link = finish_link("twice@example.com")
    make_user(email="twice@example.com")
    answer = client.post(link, data={"csrf_token": csrf_token(client, link)})
    assert answer.headers["Location"].endswith("/login")
    assert db.session.scalar(select(func.count()).select_from(User)) == 1


def test_an_expired_sign_up_link_is_refused(client):
    signup(client, "late@example.com")
    answer_as_the_worker()
    link = finish_link("late@example.com")
    request = db.session.scalars(select(AccountRequest)).one()
    request.expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()
    assert client.get(link).headers["Location"].endswith("/signup")
    assert db.session.scalar(select(func.count()).select_from(User)) == 0


def test_unanswered_and_old_requests_are_forgotten(client):
    signup(client, "forgetful@example.com")
    answer_as_the_worker()
    later = utcnow() + timedelta(days=3)
    answer_account_requests(later, account_links())
    assert db.session.scalar(select(func.count()).select_from(AccountRequest)) == 0


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("short pass", b"at least 15"),
        ("x" * 129, b"at most 128"),
        ("passwordpassword", b"too common"),
        ("aaaaaaaaaaaaaaaa", b"too common"),
    ],
)
def test_signup_refuses_weak_passwords(client, password, message):
    response = signup(client, "weak@example.com", password)
    assert response.status_code == 400
    assert message in response.data
    assert db.session.scalar(select(func.count()).select_from(User)) == 0


def test_signup_refuses_mismatched_confirmation(client):
    response = signup(client, "typo@example.com", STRONG, STRONG + "!")
    assert response.status_code == 400
    assert b"Passwords differ" in response.data


def test_post_without_csrf_token_is_rejected(client):
    response = client.post(
        "/signup", data={"email": "x@example.com", "password": STRONG, "confirm": STRONG}
    )
    assert response.status_code == 400
    assert db.session.scalar(select(func.count()).select_from(User)) == 0


def test_login_with_wrong_password_says_nothing_about_the_account(client):
    user = make_user()
    token = csrf_token(client, "/login")
    wrong = client.post(
        "/login",
        data={"email": user.email, "password": "not the password at all", "csrf_token": token},
    )
    unknown = client.post(
        "/login",
        data={
            "email": "nobody@example.com",
            "password": "not the password at all",
            "csrf_token": token,
        },
    )
    assert wrong.status_code == unknown.status_code == 400
    assert b"e-mail or password is not correct" in wrong.data
    assert b"e-mail or password is not correct" in unknown.data
    assert client.get("/dashboard").status_code == 302


def test_login_is_case_insensitive_and_redirects_to_safe_next(client):
    user = make_user(email="mixed@example.com")
    token = csrf_token(client, "/login")
    response = client.post(
        "/login?next=/jobs",
        data={"email": "MIXED@example.com", "password": DEFAULT_PASSWORD, "csrf_token": token},
    )
    assert response.status_code == 303
    assert response.headers["Location"] == "/jobs"
    assert user.last_login_at is not None


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example/", "/\\evil.example", "javascript:alert(1)"]
)
def test_login_ignores_offsite_next(client, target):
    user = make_user()
    token = csrf_token(client, "/login")
    response = client.post(
        "/login",
        query_string={"next": target},
        data={"email": user.email, "password": DEFAULT_PASSWORD, "csrf_token": token},
    )
    assert response.headers["Location"] == "/dashboard"


def test_login_rotates_the_session(client):
    client.get("/login")
    with client.session_transaction() as session:
        session["planted"] = "by an attacker"
    login_as(client, make_user())
    with client.session_transaction() as session:
        assert "planted" not in session


def test_logout_requires_post_with_csrf_and_ends_session(client):
    login_as(client, make_user())
    assert client.get("/logout").status_code == 405
    token = csrf_token(client, "/dashboard")
    response = client.post("/logout", data={"csrf_token": token})
    assert response.status_code == 303
    assert client.get("/dashboard").status_code == 302


def test_remember_me_sets_a_persistent_cookie(client):
    user = make_user()
    token = csrf_token(client, "/login")
    client.post(
        "/login",
        data={
            "email": user.email,
            "password": DEFAULT_PASSWORD,
            "remember": "y",
            "csrf_token": token,
        },
    )
    cookie = client.get_cookie("portal-remember", domain="portal.test")
    assert cookie is not None and cookie.expires is not None


def test_staff_login_lands_on_the_queue(client):
    staff = make_staff()
    response = login_as(client, staff)
    assert response.headers["Location"] == "/staff/"


def test_terminated_account_can_log_in_and_sees_notice(client):
    user = make_user(status="terminated", termination_reason="terms violation")
    login_as(client, user)
    page = client.get("/dashboard")
    assert page.status_code == 200
    assert b"closed for a violation of our Terms of Use" in page.data
