import pytest
from sqlalchemy import func, select

from portal.accounts.models import User
from portal.accounts.passwords import verify_password
from portal.db import db
from tests.factories import DEFAULT_PASSWORD, csrf_token, login_as, make_user

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


def test_signup_creates_customer_and_logs_in(client):
    response = signup(client, "  New.Person@Example.COM ")
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/dashboard")
    user = db.session.scalar(select(User).where(User.email == "new.person@example.com"))
    assert user is not None and user.role == "customer"
    assert user.password_hash.startswith("$argon2id$")
    assert verify_password(user.password_hash, STRONG)
    assert client.get("/dashboard").status_code == 200


def test_signup_with_taken_email_shows_field_error(client):
    make_user(email="taken@example.com")
    response = signup(client, "TAKEN@example.com")
    assert response.status_code == 400
    assert b"already exists" in response.data
    assert db.session.scalar(select(func.count()).select_from(User)) == 1


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
    staff = make_user(role="staff")
    response = login_as(client, staff)
    assert response.headers["Location"] == "/staff/"


def test_terminated_account_can_log_in_and_sees_notice(client):
    user = make_user(status="terminated", termination_reason="terms violation")
    login_as(client, user)
    page = client.get("/dashboard")
    assert page.status_code == 200
    assert b"closed for a violation of our Terms of Use" in page.data
