"""Staff log in with a password and an authenticator code; customers with a password only."""

import re
import time

import pyotp
import pytest
from sqlalchemy import func, select

from portal.accounts.models import RecoveryCode, User
from portal.audit import AuditLogEntry
from portal.db import db
from tests.factories import DEFAULT_PASSWORD, csrf_token, login_as, make_staff, make_user
from tests.html_text import visible_text

SECOND_FACTOR = "/login/second-factor"


def password_step(client, email: str):
    token = csrf_token(client, "/login")
    return client.post(
        "/login", data={"email": email, "password": DEFAULT_PASSWORD, "csrf_token": token}
    )


def send_code(client, code: str):
    return client.post(
        SECOND_FACTOR, data={"code": code, "csrf_token": csrf_token(client, SECOND_FACTOR)}
    )


def secret_of(email: str) -> str:
    db.session.expire_all()
    return db.session.scalar(select(User.totp_secret).where(User.email == email))


def code_of(email: str, steps_ahead: int = 0) -> str:
    """The code the authenticator shows now, or `steps_ahead` 30-second steps later."""
    return pyotp.TOTP(secret_of(email)).at(time.time() + 30 * steps_ahead)


def audit_actions() -> list[str]:
    return db.session.scalars(select(AuditLogEntry.action).order_by(AuditLogEntry.id)).all()


def test_a_password_alone_does_not_open_the_staff_pages(client):
    staff = make_staff()
    answer = password_step(client, staff.email)
    assert answer.headers["Location"].endswith(SECOND_FACTOR)
    assert client.get("/staff/").status_code == 302
    page = client.get(SECOND_FACTOR)
    assert b"Your code" in page.data


def test_customers_log_in_with_their_password_alone(client):
    customer = make_user()
    assert password_step(client, customer.email).headers["Location"].endswith("/dashboard")


def test_first_log_in_enrols_from_a_qr_code_and_shows_recovery_codes_once(client):
    staff = make_user(role="staff", email="new.staff@example.com")
    password_step(client, staff.email)
    page = client.get(SECOND_FACTOR).get_data(as_text=True)
    assert "Set up your authenticator" in page
    secret = re.search(r'class="totp-secret">([A-Z2-7 ]+)<', page)[1].replace(" ", "")
    assert secret == secret_of(staff.email)
    qr = client.get(f"{SECOND_FACTOR}/qr.svg")
    assert qr.status_code == 200 and qr.mimetype == "image/svg+xml"
    assert b"<svg" in qr.data and b"script" not in qr.data

    wrong = send_code(client, "000000" if code_of(staff.email) != "000000" else "111111")
    assert wrong.status_code == 400 and b"That code is not right" in wrong.data
    done = send_code(client, code_of(staff.email))
    assert done.status_code == 200
    codes = re.findall(r"<code>([0-9a-f]{5}-[0-9a-f]{5})</code>", done.get_data(as_text=True))
    assert len(codes) == 10 and len(set(codes)) == 10
    assert client.get("/staff/").status_code == 200
    stored = db.session.scalars(select(RecoveryCode.code_hash)).all()
    assert len(stored) == 10 and not set(codes) & set(stored)
    assert "staff.second_factor_enrolled" in audit_actions()
    # Enrolled: the QR code is not shown again.
    client.post("/logout", data={"csrf_token": csrf_token(client, "/staff/")})
    password_step(client, staff.email)
    assert client.get(f"{SECOND_FACTOR}/qr.svg").status_code == 404


def test_a_code_works_once(client, app):
    staff = make_staff()
    code = code_of(staff.email)
    password_step(client, staff.email)
    assert send_code(client, code).status_code == 303
    other = app.test_client()
    password_step(other, staff.email)
    replayed = send_code(other, code)
    assert replayed.status_code == 400
    assert other.get("/staff/").status_code == 302
    # The next step's code is fine (phones' clocks drift by a step).
    assert send_code(other, code_of(staff.email, steps_ahead=1)).status_code == 303


def test_a_recovery_code_logs_in_once(client, app):
    staff = make_user(role="staff", email="recovering@example.com")
    password_step(client, staff.email)
    client.get(SECOND_FACTOR)
    page = send_code(client, code_of(staff.email)).get_data(as_text=True)
    recovery = re.findall(r"<code>([0-9a-f]{5}-[0-9a-f]{5})</code>", page)[0]

    phone_lost = app.test_client()
    password_step(phone_lost, staff.email)
    assert send_code(phone_lost, recovery.upper()).status_code == 303
    assert phone_lost.get("/staff/").status_code == 200
    again = app.test_client()
    password_step(again, staff.email)
    assert send_code(again, recovery).status_code == 400
    assert "staff.recovery_code_used" in audit_actions()


def test_the_code_page_is_only_for_someone_who_just_gave_a_password(client):
    assert client.get(SECOND_FACTOR).headers["Location"].endswith("/login")
    assert client.get(f"{SECOND_FACTOR}/qr.svg").status_code == 404
    customer = make_user()
    password_step(client, customer.email)
    assert client.get(SECOND_FACTOR).headers["Location"].endswith("/login")


def test_another_staff_member_resets_a_lost_authenticator_and_it_is_audited(client, app):
    lost = make_staff(email="lost.phone@example.com")
    helper = make_staff(email="helper@example.com")
    on_lost_device = app.test_client()
    login_as(on_lost_device, lost)
    login_as(client, helper)
    team = client.get("/staff/team")
    assert team.status_code == 200 and "lost.phone@example.com" in visible_text(team)
    answer = client.post(
        f"/staff/team/{lost.id}/reset-second-factor",
        data={"csrf_token": csrf_token(client, "/staff/team")},
    )
    assert answer.status_code == 303
    db.session.expire_all()
    member = db.session.get(User, lost.id)
    assert member.totp_secret is None and member.totp_enrolled_at is None
    assert db.session.scalar(select(func.count()).select_from(RecoveryCode)) == 0
    # Their sessions end, and the next log-in enrols a new device.
    assert on_lost_device.get("/staff/").status_code == 302
    fresh = app.test_client()
    password_step(fresh, lost.email)
    assert b"Set up your authenticator" in fresh.get(SECOND_FACTOR).data
    entry = db.session.scalars(
        select(AuditLogEntry).where(AuditLogEntry.action == "staff.second_factor_reset")
    ).one()
    assert (entry.actor_id, entry.target_id) == (helper.id, lost.id)


def test_nobody_resets_their_own_authenticator(client):
    staff = make_staff()
    login_as(client, staff)
    answer = client.post(
        f"/staff/team/{staff.id}/reset-second-factor",
        data={"csrf_token": csrf_token(client, "/staff/team")},
    )
    assert answer.status_code == 303
    db.session.expire_all()
    assert db.session.get(User, staff.id).totp_enrolled_at is not None
    assert "staff.second_factor_reset" not in audit_actions()


@pytest.mark.parametrize("code", ["", "   ", "12345", "1234567", "x" * 21, "abcde-fghij"])
def test_malformed_or_unknown_codes_are_refused_with_a_field_error(client, code):
    staff = make_staff()
    password_step(client, staff.email)
    answer = send_code(client, code)
    assert answer.status_code == 400
    assert b'class="field-error"' in answer.data
    assert client.get("/staff/").status_code == 302
