"""Terminating an account for a Terms of Use breach: the staff form, its refusals, what the
customer can still do afterwards (log in, read history) and what they cannot (buy, spend,
be refunded under the policy's termination rule), and the operators' command."""

import re
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from portal.accounts.models import AccountStatus, User
from portal.billing.models import Purchase
from portal.db import db
from portal.staff.services import TERMINATION_REASON_MAX_LENGTH
from portal.timeutil import utcnow
from tests.factories import csrf_token, login_as, make_purchase, make_staff, make_user
from tests.refunds.helpers import file_through_form, refund_requests
from tests.staff.helpers import (
    audit_rows,
    client_for,
    count,
    detail_path,
    emails_to,
    file,
    flashes,
    fresh,
    state_snapshot,
    text,
)

REASON = "Used the service to process images of other people without their consent."


@pytest.fixture
def case(customer):
    """An open refund request of `customer`, whose page carries the customer section."""
    return file(customer, make_purchase(customer, "pro"))


def terminate(client, user_id: int, page_id: int, **fields):
    """POST the termination form from request `page_id`'s page; None leaves a field out."""
    data = {"reason": REASON, "confirm": "y", "request_id": str(page_id)} | fields
    data = {name: value for name, value in data.items() if value is not None}
    token = csrf_token(client, detail_path(page_id))
    return client.post(f"/staff/customers/{user_id}/terminate", data={**data, "csrf_token": token})


def accounts() -> list[tuple]:
    """Every account's status, termination and sessions' generation."""
    return sorted((user.id, *account_state(user.id)) for user in db.session.scalars(select(User)))


def account_state(user_id: int) -> tuple:
    user = fresh(User, user_id)
    return user.status, user.termination_reason, user.terminated_at, user.session_generation


# -- the staff form ------------------------------------------------------------------------


def test_the_request_page_offers_the_form_for_an_active_customer(staff_client, case):
    page = staff_client.get(detail_path(case.id)).get_data(as_text=True)

    form = re.search(r'<form[^>]+action="[^"]+/terminate".*?</form>', page, re.S)
    assert form, "no termination form on the request page"
    assert "Terminate for a Terms of Use breach" in form[0]
    assert 'name="csrf_token"' in form[0]
    assert re.search(r'<textarea[^>]+name="reason"[^>]+required', form[0])
    assert re.search(r'type="checkbox"[^>]+name="confirm"[^>]+required', form[0])
    # The page's limit is the service's limit.
    assert f'maxlength="{TERMINATION_REASON_MAX_LENGTH}"' in form[0]


def test_staff_terminate_an_account_through_the_page(app, staff, staff_client, customer, case):
    customer_client = client_for(app, customer)
    assert customer_client.get("/dashboard").status_code == 200
    before = utcnow()

    response = terminate(staff_client, customer.id, case.id)

    assert response.status_code == 303
    assert urlsplit(response.headers["Location"]).path == detail_path(case.id)
    assert "is terminated for a Terms of Use breach" in flashes(staff_client, case.id)
    user = fresh(User, customer.id)
    assert user.status == AccountStatus.TERMINATED
    assert user.termination_reason == REASON
    assert user.terminated_at >= before
    # The browser the customer was using is logged out.
    ended = customer_client.get("/dashboard")
    assert ended.status_code == 302 and urlsplit(ended.headers["Location"]).path == "/login"
    [entry] = audit_rows("account.terminated", customer.id)
    assert (entry.actor_id, entry.target_type, entry.ip_address) == (staff.id, "user", "127.0.0.1")
    assert entry.before == {"status": "active"}
    assert entry.after == {"status": "terminated", "reason": REASON}
    # The form is gone once the account is terminated.
    assert "/terminate" not in staff_client.get(detail_path(case.id)).get_data(as_text=True)


def test_the_customer_is_told_what_happened_and_why(app, staff_client, customer, case):
    terminate(staff_client, customer.id, case.id)

    [mail] = [m for m in emails_to(customer.email) if "terminated" in m.subject]
    body = mail.body_text
    assert "terminated your AI Image Studio account for a violation of our Terms of Use" in body
    assert REASON in body
    assert "cannot buy credits" in body
    assert "can no longer be spent on processing jobs" in body
    assert "assessed under that rule" in body
    assert app.config["SUPPORT_EMAIL"] in body


def test_the_reason_is_stripped(staff_client, customer, case):
    terminate(staff_client, customer.id, case.id, reason=f"  \n{REASON}\t ")

    assert fresh(User, customer.id).termination_reason == REASON


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"reason": None}, "Write the reason the customer will read."),
        ({"reason": "   \n "}, "Write the reason the customer will read."),
        ({"reason": "x" * (TERMINATION_REASON_MAX_LENGTH + 1)}, "Field cannot be longer"),
        ({"confirm": None}, "Tick the box to confirm."),
        ({"confirm": ""}, "Tick the box to confirm."),
    ],
    ids=["no reason", "blank reason", "reason too long", "not confirmed", "confirm empty"],
)
def test_an_incomplete_form_is_refused_and_changes_nothing(
    staff_client, customer, case, fields, message
):
    before = state_snapshot(), account_state(customer.id)

    response = terminate(staff_client, customer.id, case.id, **fields)

    assert response.status_code == 303
    assert message in flashes(staff_client, case.id)
    assert (state_snapshot(), account_state(customer.id)) == before


@pytest.mark.parametrize(
    ("status", "refusal"),
    [(AccountStatus.TERMINATED, "already terminated"), (AccountStatus.CLOSED, "closed")],
)
def test_a_terminated_or_closed_account_is_refused(staff_client, case, status, refusal):
    target = make_user(status=status, termination_reason="earlier")
    before = state_snapshot(), account_state(target.id)

    response = terminate(staff_client, target.id, case.id)

    assert response.status_code == 303
    assert f"Customer {target.id}'s account is {refusal}" in flashes(staff_client, case.id)
    assert (state_snapshot(), account_state(target.id)) == before


def test_a_staff_account_is_refused(staff_client, other_staff, case):
    before = state_snapshot(), account_state(other_staff.id)

    response = terminate(staff_client, other_staff.id, case.id)

    assert response.status_code == 303
    assert "Staff accounts are not terminated" in flashes(staff_client, case.id)
    assert (state_snapshot(), account_state(other_staff.id)) == before


def test_an_unknown_account_is_404(staff_client, case):
    before = state_snapshot()

    assert terminate(staff_client, 987_654, case.id).status_code == 404
    assert state_snapshot() == before


def test_without_a_request_to_go_back_to_staff_land_on_the_queue(staff_client, customer, case):
    response = terminate(staff_client, customer.id, case.id, request_id=None)

    assert response.status_code == 303
    assert urlsplit(response.headers["Location"]).path == "/staff/"
    assert fresh(User, customer.id).status == AccountStatus.TERMINATED


def test_termination_is_one_transaction(monkeypatch, staff, customer):
    """A failure at the last step (the e-mail) leaves the account as it was, unaudited."""
    from portal.staff import services

    def outbox_down(*args, **kwargs):
        raise RuntimeError("outbox unavailable")

    monkeypatch.setattr(services, "queue_email", outbox_down)
    before = state_snapshot(), account_state(customer.id)

    with pytest.raises(RuntimeError):
        services.terminate_for_terms_breach(customer.id, REASON, staff.id, None, utcnow())

    assert (state_snapshot(), account_state(customer.id)) == before


# -- after termination ---------------------------------------------------------------------


def test_after_termination_the_customer_logs_in_and_reads_history_but_cannot_buy(
    app, staff_client, customer, case
):
    terminate(staff_client, customer.id, case.id)
    client = client_for(app)
    login_as(client, fresh(User, customer.id))

    dashboard = client.get("/dashboard")
    assert dashboard.status_code == 200
    assert "closed for a violation of our Terms of Use" in text(dashboard)
    assert client.get("/history").status_code == 200
    assert client.get(f"/refunds/{case.id}").status_code == 200
    purchases = count(Purchase, Purchase.user_id == customer.id)
    token = csrf_token(client, "/dashboard")
    refused = client.post("/credits/buy", data={"package": "pro", "csrf_token": token})
    assert refused.status_code == 403
    assert count(Purchase, Purchase.user_id == customer.id) == purchases


def test_after_termination_the_jobs_api_refuses_to_spend_the_credits(
    app, client, monkeypatch, staff_client, customer, case
):
    monkeypatch.setitem(app.config, "PORTAL_SERVICE_TOKEN", "test-token")
    terminate(staff_client, customer.id, case.id)
    balance = fresh(User, customer.id).credits_balance
    assert balance > 0

    response = client.post(
        "/api/v1/jobs",
        json={
            "external_id": "after-termination",
            "customer_email": customer.email,
            "operation": "upscale",
            "credits": 5,
        },
        headers={"Authorization": "Bearer test-token"},
    )

    assert response.status_code == 403
    assert response.get_json()["error"] == "account_terminated"
    assert fresh(User, customer.id).credits_balance == balance


def test_a_terminated_customers_refund_request_meets_the_termination_rule(
    app, staff_client, customer, case
):
    other = make_purchase(customer, "basic")
    terminate(staff_client, customer.id, case.id)
    client = client_for(app)
    login_as(client, fresh(User, customer.id))

    response = file_through_form(client, other.id)

    assert response.status_code == 303, text(response)
    [filed] = [r for r in refund_requests() if r.purchase_id == other.id]
    [account] = [rule for rule in filed.precheck["rules"] if rule["code"] == "account"]
    assert account["outcome"] == "fail"
    assert "violation of the Terms of Use" in account["explanation"]
    assert filed.verdict.value == "likely_ineligible"


# -- the operators' command ----------------------------------------------------------------


def test_operators_terminate_from_the_command_line(app, customer):
    result = app.test_cli_runner().invoke(
        args=["terminate-account", customer.email.upper(), "--reason", f"  {REASON} "]
    )

    assert result.exit_code == 0, result.output
    assert f"Terminated the account of {customer.email}" in result.output
    user = fresh(User, customer.id)
    assert (user.status, user.termination_reason) == (AccountStatus.TERMINATED, REASON)
    [entry] = audit_rows("account.terminated", customer.id)
    assert entry.actor_id is None
    assert entry.after == {"status": "terminated", "reason": REASON}
    assert any(REASON in m.body_text for m in emails_to(customer.email))


@pytest.mark.parametrize(
    ("who", "reason", "message"),
    [
        ("nobody", REASON, "No account has the address"),
        ("staff", REASON, "Staff accounts are not terminated"),
        ("terminated", REASON, "already terminated"),
        ("customer", "  ", "Write the reason"),
    ],
)
def test_the_command_refuses_clearly_and_changes_nothing(app, customer, who, reason, message):
    email = {
        "nobody": "nobody@example.com",
        "staff": make_staff().email,
        "terminated": make_user(status=AccountStatus.TERMINATED).email,
    }.get(who, customer.email)
    before = state_snapshot(), accounts()

    result = app.test_cli_runner().invoke(args=["terminate-account", email, "--reason", reason])

    assert result.exit_code != 0
    assert message in result.output
    assert (state_snapshot(), accounts()) == before
