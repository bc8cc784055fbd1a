import re
from datetime import timedelta

from sqlalchemy import select

from portal.accounts.models import PasswordResetToken
from portal.accounts.services import answer_account_requests
from portal.accounts.views import account_links
from portal.db import db
from portal.notifications.models import OutboxEmail
from portal.timeutil import utcnow
from tests.factories import DEFAULT_PASSWORD, csrf_token, login_as, make_user

NEW_PASSWORD = "an entirely new passphrase here"


def request_reset(client, email):
    token = csrf_token(client, "/reset")
    response = client.post("/reset", data={"email": email, "csrf_token": token})
    answer_account_requests(utcnow(), account_links())  # the worker's next round
    return response


def reset_link_for(email) -> str:
    message = db.session.scalars(
        select(OutboxEmail).where(OutboxEmail.to_address == email).order_by(OutboxEmail.id.desc())
    ).first()
    assert message is not None
    return re.search(r"http://portal\.test(/reset/\S+)", message.body_text).group(1)


def choose_password(client, link, password=NEW_PASSWORD, form_page=None):
    token = csrf_token(client, form_page or link)
    return client.post(link, data={"password": password, "confirm": password, "csrf_token": token})


def test_reset_flow_sets_new_password_and_link_works_once(client):
    user = make_user()
    response = request_reset(client, user.email.upper())
    assert response.status_code == 303
    link = reset_link_for(user.email)

    assert choose_password(client, link).status_code == 303
    login_as(client, user, NEW_PASSWORD)

    client.post("/logout", data={"csrf_token": csrf_token(client, "/dashboard")})
    reused = client.get(link)
    assert reused.status_code == 303
    assert reused.headers["Location"].endswith("/reset")


def test_using_one_reset_link_retires_the_others(client):
    user = make_user()
    request_reset(client, user.email)
    first = reset_link_for(user.email)
    request_reset(client, user.email)
    second = reset_link_for(user.email)
    assert first != second
    assert choose_password(client, second).headers["Location"].endswith("/login")
    assert client.get(first).headers["Location"].endswith("/reset")
    refused = choose_password(client, first, "yet another passphrase, longer", "/reset")
    assert refused.headers["Location"].endswith("/reset")
    login_as(client, user, NEW_PASSWORD)


def test_changing_the_password_retires_reset_links(client):
    user = make_user()
    request_reset(client, user.email)
    link = reset_link_for(user.email)
    login_as(client, user)
    assert change_password(client, DEFAULT_PASSWORD, NEW_PASSWORD).status_code == 303
    client.post("/logout", data={"csrf_token": csrf_token(client, "/dashboard")})
    assert client.get(link).headers["Location"].endswith("/reset")
    refused = choose_password(client, link, "yet another passphrase, longer", "/reset")
    assert refused.headers["Location"].endswith("/reset")
    login_as(client, user, NEW_PASSWORD)


def test_reset_tokens_are_stored_hashed(client):
    user = make_user()
    request_reset(client, user.email)
    link = reset_link_for(user.email)
    raw_token = link.rsplit("/", 1)[1]
    stored = db.session.scalars(select(PasswordResetToken.token_hash)).all()
    assert stored and raw_token not in stored


def test_expired_reset_token_is_refused(client):
    user = make_user()
    request_reset(client, user.email)
    link = reset_link_for(user.email)
    row = db.session.scalars(select(PasswordResetToken)).one()
    row.expires_at = row.created_at - timedelta(seconds=1)
    db.session.commit()
    response = client.get(link)
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/reset")


def test_reset_for_unknown_email_answers_the_same_and_sends_nothing(client):
    make_user(email="known@example.com")
    known = request_reset(client, "known@example.com")
    unknown = request_reset(client, "unknown@example.com")
    assert known.status_code == unknown.status_code == 303
    follow = client.get(unknown.headers["Location"])
    assert b"If an account exists" in follow.data
    recipients = db.session.scalars(select(OutboxEmail.to_address)).all()
    assert recipients == ["known@example.com"]


def test_reset_refuses_weak_new_password(client):
    user = make_user()
    request_reset(client, user.email)
    response = choose_password(client, reset_link_for(user.email), "tooshort")
    assert response.status_code == 400
    assert b"at least 15" in response.data


def test_password_reset_ends_sessions_elsewhere(client, app):
    user = make_user()
    other_device = app.test_client()
    login_as(other_device, user)
    request_reset(client, user.email)
    choose_password(client, reset_link_for(user.email))
    assert other_device.get("/dashboard").status_code == 302


def change_password(client, current, new):
    token_page = client.get("/account").get_data(as_text=True)
    token = re.search(r'name="pw-csrf_token" type="hidden" value="([^"]+)"', token_page).group(1)
    return client.post(
        "/account",
        data={
            "pw-current_password": current,
            "pw-password": new,
            "pw-confirm": new,
            "pw-csrf_token": token,
        },
    )


def test_change_password_keeps_this_session_and_ends_others(client, app):
    user = make_user()
    login_as(client, user)
    other_device = app.test_client()
    login_as(other_device, user)

    response = change_password(client, DEFAULT_PASSWORD, NEW_PASSWORD)
    assert response.status_code == 303
    assert client.get("/dashboard").status_code == 200
    assert other_device.get("/dashboard").status_code == 302


def test_change_password_with_wrong_current_password_changes_nothing(client):
    user = make_user()
    login_as(client, user)
    old_hash = user.password_hash
    response = change_password(client, "this is not my password", NEW_PASSWORD)
    assert response.status_code == 400
    assert b"current password is not correct" in response.data
    db.session.refresh(user)
    assert user.password_hash == old_hash
