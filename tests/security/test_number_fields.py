"""Number fields take plain ASCII digits only: no NaN, Infinity, exponents, signs or other
scripts' digits, which float- or Unicode-based parsing would let through."""

import json

import pytest
from sqlalchemy import func, select

from portal.accounts.models import User
from portal.billing.models import Refund
from portal.db import db
from portal.jobs.models import Job
from portal.refunds import services as refunds
from portal.refunds.eligibility import RequestReason
from portal.timeutil import utcnow
from tests.factories import make_purchase, make_staff, make_user
from tests.security.helpers import Actor, ServerErrors, api_headers, balance_of, request_row

NOT_AMOUNTS = [
    "NaN",
    "nan",
    "Infinity",
    "inf",
    "-Infinity",
    "1e3",
    "1E3",
    "5e0",
    "-5.00",
    "-0.01",
    "+5",
    "0x10",
    "1,000",
    "5.001",
    "٥",
    "٥.٠٠",
    "१०",
    "５",
    "",
    " ",
]


@pytest.fixture
def open_request(app):
    customer = make_user()
    purchase = make_purchase(customer, "pro")
    return refunds.file_request(
        customer,
        purchase,
        RequestReason.OTHER,
        "some details here",
        "",
        None,
        False,
        [],
        utcnow(),
    )


def refunds_of(request_id: int) -> int:
    db.session.expire_all()
    return db.session.scalar(
        select(func.count()).select_from(Refund).where(Refund.refund_request_id == request_id)
    )


def test_staff_approve_amount_refuses_anything_but_plain_dollars(app, open_request):
    staff = Actor(app, "staff", make_staff())
    path = f"/staff/requests/{open_request.id}/approve"
    status = request_row(open_request.id).status
    wrong = []
    with ServerErrors() as errors:
        for amount in NOT_AMOUNTS:
            response = staff.post(path, {"amount": amount, "justification": "Goodwill."})
            if response.status_code >= 500:
                wrong.append(f"{amount!r}: {response.status_code} {errors.describe()}")
            elif refunds_of(open_request.id) or request_row(open_request.id).status != status:
                wrong.append(f"{amount!r} was taken as an amount")
    assert wrong == [], "\n".join(wrong)
    page = staff.get(f"/staff/requests/{open_request.id}").get_data(as_text=True)
    assert "Write an amount like 5.86." in page
    # The same form with a plain amount does approve: the refusals above were the amounts.
    approved = staff.post(path, {"amount": "5.00", "justification": "Goodwill."})
    assert approved.status_code == 303
    assert refunds_of(open_request.id) == 1


def test_low_balance_threshold_refuses_anything_but_plain_credits(app):
    customer = make_user()
    browser = Actor(app, "customer", customer)
    wrong = []
    with ServerErrors() as errors:
        # "1,000" is the one spelling of a credit count that a dollar amount may not have.
        for text in [amount for amount in NOT_AMOUNTS if amount != "1,000"]:
            response = browser.post("/account", alert_form(browser, text), csrf=False)
            if response.status_code >= 500:
                wrong.append(f"{text!r}: {response.status_code} {errors.describe()}")
            elif response.status_code != 400 or threshold_of(customer.id) is not None:
                wrong.append(f"{text!r} was taken as a threshold")
    assert wrong == [], "\n".join(wrong)
    taken = browser.post("/account", alert_form(browser, "1,000"), csrf=False)
    assert taken.status_code == 303
    assert threshold_of(customer.id) == 1_000


def alert_form(browser: Actor, threshold: str) -> dict:
    return {"alert-threshold": threshold, "alert-csrf_token": browser.csrf}


def threshold_of(user_id: int) -> int | None:
    db.session.expire_all()
    return db.session.get(User, user_id).low_balance_threshold


NOT_CREDITS = [
    b"NaN",
    b"-NaN",
    b"Infinity",
    b"-Infinity",
    b"1e3",
    b"1E3",
    b"1e0",
    b"1e400",
    b"1.0",
    b"5.5",
    b"-1",
    b"0",
    b"-0",
    b"1000001",
    b"100000000000000000000000000000",
    b'"5"',
    b'"\\u0665"',
    b'"1e3"',
    b"true",
    b"null",
    b"[5]",
    b'{"n": 5}',
]


@pytest.mark.parametrize("credits", NOT_CREDITS, ids=lambda raw: raw.decode())
def test_jobs_api_credits_refuse_non_integers(app, monkeypatch, credits):
    customer = make_user(email="payer@example.com")
    make_purchase(customer, "pro")
    before = balance_of(customer.id)
    body = (
        b'{"external_id": "job-1", "customer_email": "payer@example.com", '
        b'"operation": "upscale", "credits": ' + credits + b"}"
    )
    api = Actor(app, "api_token", headers=api_headers())
    response = api.open(
        "POST", "/api/v1/jobs", data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.get_data(as_text=True)
    try:
        json.loads(body)
    except ValueError:
        expected_field = "body"  # not even JSON (e.g. -NaN)
    else:
        expected_field = "credits"
    assert response.get_json()["field"] == expected_field
    assert balance_of(customer.id) == before
    assert db.session.scalar(select(func.count()).select_from(Job)) == 0


def test_jobs_api_takes_a_plain_integer(app):
    customer = make_user(email="payer@example.com")
    make_purchase(customer, "pro")
    before = balance_of(customer.id)
    body = {
        "external_id": "job-1",
        "customer_email": "payer@example.com",
        "operation": "upscale",
        "credits": 5,
    }
    api = Actor(app, "api_token", headers=api_headers())
    response = api.open("POST", "/api/v1/jobs", json=body)
    assert response.status_code == 201
    assert balance_of(customer.id) == before - 5


def test_auto_recharge_refuses_anything_but_plain_credits_and_dollars(app):
    from portal.billing.models import AutoRecharge

    customer = make_user()
    browser = Actor(app, "customer", customer)
    wrong = []
    with ServerErrors() as errors:
        for text in [amount for amount in NOT_AMOUNTS if amount != "1,000"]:
            for field_name in ("threshold", "monthly_cap"):
                form = {"threshold": "100", "package": "pro", "monthly_cap": "100"}
                form[field_name] = text
                form["csrf_token"] = browser.csrf
                response = browser.post("/account/auto-recharge", form, csrf=False)
                if response.status_code >= 500:
                    wrong.append(
                        f"{field_name} {text!r}: {response.status_code} {errors.describe()}"
                    )
                elif response.status_code != 400 or db.session.get(AutoRecharge, customer.id):
                    wrong.append(f"{field_name} {text!r} was taken")
                db.session.expire_all()
    assert wrong == [], "\n".join(wrong)
