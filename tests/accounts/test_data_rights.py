"""Download everything, or close the account: personal data erased, money records kept."""

import csv
import io
import json
import re
import zipfile

from sqlalchemy import func, select

from portal.accounts.models import AccountStatus, User, UserSession
from portal.audit import AuditLogEntry
from portal.billing.models import Purchase
from portal.db import db
from portal.ledger import alerts
from portal.ledger.models import LedgerEntry
from portal.notifications.models import OutboxEmail
from portal.refunds.eligibility import RequestReason
from portal.refunds.models import Attachment, RefundRequest
from portal.refunds.services import file_request
from portal.timeutil import utcnow
from tests.factories import (
    DEFAULT_PASSWORD,
    csrf_token,
    login_as,
    make_purchase,
    make_staff,
    make_user,
    spend_history,
)


def test_export_contains_every_kind_of_record(client):
    user = make_user()
    purchase = make_purchase(user, "pro")
    alerts.set_alert(user.id, 150)
    spend_history(user, 3)
    file_request(
        user, purchase, RequestReason.OTHER, "please refund the rest", "", None, False, [], utcnow()
    )
    login_as(client, user)
    response = client.get("/account/export")
    assert response.status_code == 200 and response.mimetype == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.data))
    assert set(archive.namelist()) == {
        "account.json",
        "purchases.csv",
        "ledger.csv",
        "jobs.csv",
        "refund_requests.json",
    }
    account = json.loads(archive.read("account.json"))
    assert (account["email"], account["low_balance_threshold"]) == (user.email, 150)
    ledger = list(csv.reader(io.StringIO(archive.read("ledger.csv").decode())))
    assert len(ledger) == 1 + 4
    requests = json.loads(archive.read("refund_requests.json"))
    assert requests[0]["details"] == "please refund the rest"
    assert (
        db.session.scalar(
            select(func.count())
            .select_from(AuditLogEntry)
            .where(AuditLogEntry.action == "account.exported")
        )
        == 1
    )


def close(client, password=DEFAULT_PASSWORD, confirm=True):
    token_page = client.get("/account").get_data(as_text=True)

    token = re.search(r'name="close-csrf_token" type="hidden" value="([^"]+)"', token_page)
    data = {"close-current_password": password, "close-csrf_token": token.group(1)}
    if confirm:
        data["close-confirm"] = "y"
    return client.post("/account/close", data=data)


def test_closing_erases_personal_data_and_keeps_financial_records(client):
    user = make_user(email="leaving@example.com")
    purchase = make_purchase(user, "basic")
    alerts.set_alert(user.id, 100)
    file_request(
        user, purchase, RequestReason.OTHER, "my private story here", "", None, False, [], utcnow()
    )
    login_as(client, user)
    response = close(client)
    assert response.status_code == 303
    db.session.expire_all()
    closed = db.session.get(User, user.id)
    assert closed.status == AccountStatus.CLOSED
    assert closed.email == f"closed-{user.id}@closed.invalid"
    assert (closed.low_balance_threshold, closed.low_balance_alert_armed) == (None, False)
    assert db.session.scalar(select(func.count()).select_from(Purchase)) == 1
    assert db.session.scalar(select(func.count()).select_from(LedgerEntry)) == 1
    assert "leaving@example.com" not in db.session.scalars(select(OutboxEmail.to_address)).all()
    assert purchase.user_id == user.id
    assert db.session.scalar(select(UserSession.id).where(UserSession.ended_at.is_(None))) is None
    assert client.get("/dashboard").status_code == 302
    token = csrf_token(client, "/login")
    again = client.post(
        "/login",
        data={"email": "leaving@example.com", "password": DEFAULT_PASSWORD, "csrf_token": token},
    )
    assert again.status_code == 400
    from portal.refunds.models import RefundRequest

    assert db.session.scalars(select(RefundRequest.details)).one() == "[erased]"


def test_closing_needs_the_password_and_the_confirmation(client):
    user = make_user()
    login_as(client, user)
    close(client, password="not my password at all")
    close(client, confirm=False)
    db.session.expire_all()
    assert db.session.get(User, user.id).status == AccountStatus.ACTIVE


def test_staff_can_export_and_close_a_customer_on_request(client, app):
    customer = make_user(email="asked@example.com")
    make_purchase(customer, "starter")
    login_as(client, make_staff())
    export = client.get(f"/staff/customers/{customer.id}/export")
    assert export.status_code == 200
    token = csrf_token(client, "/staff/")
    assert (
        client.post(f"/staff/customers/{customer.id}/close", data={"csrf_token": token}).status_code
        == 303
    )
    db.session.expire_all()
    assert db.session.get(User, customer.id).status == AccountStatus.CLOSED
    actions = db.session.scalars(select(AuditLogEntry.action)).all()
    assert "account.exported" in actions and "account.closed" in actions


def test_export_csvs_defuse_formulas_and_keep_numbers(client):
    from portal.jobs import services as jobs

    user = make_user(email="=1+2@example.com")
    make_purchase(user, "pro")
    jobs.charge_job("=cmd|' /C calc'!A0", user.email, '=HYPERLINK("http://x","y")', 5)
    login_as(client, user)
    archive = zipfile.ZipFile(io.BytesIO(client.get("/account/export").data))

    def rows(name: str) -> list[list[str]]:
        return list(csv.reader(io.StringIO(archive.read(name).decode())))

    [_, job] = rows("jobs.csv")
    assert job[1] == "'=cmd|' /C calc'!A0"
    assert job[3] == '\'=HYPERLINK("http://x","y")'
    assert job[4] == "5"
    ledger = rows("ledger.csv")
    charge = next(row for row in ledger if row[2] == "job_charge")
    # The charge's credits are a number, written as one: -5, not the text '-5.
    assert charge[3] == "-5"
    assert charge[4] == "295"
    [_, purchase] = rows("purchases.csv")
    assert purchase[4] == "2000"


def test_closing_deletes_the_screenshots_with_the_personal_data(client):
    from portal.refunds.services import Upload
    from portal.storage import StoredFile

    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    user = make_user()
    other = make_user()
    for owner in (user, other):
        file_request(
            owner,
            make_purchase(owner, "basic"),
            RequestReason.OTHER,
            "see the screenshot",
            "",
            None,
            False,
            [Upload("mine.png", png)],
            utcnow(),
        )
    [kept] = db.session.scalars(
        select(Attachment.storage_key).join(RefundRequest).where(RefundRequest.user_id == other.id)
    ).all()
    login_as(client, user)

    assert close(client).status_code == 303

    assert db.session.scalars(select(StoredFile.key)).all() == [kept]
    assert db.session.scalars(select(Attachment.storage_key)).all() == [kept]
