"""The low-balance alert on the Account page: setting it, refusing bad input, turning it
off, the suggestion, and the dashboard's line about it."""

import re

import pytest

from portal.accounts.models import User
from portal.db import db
from portal.jobs import services as jobs
from portal.ledger import alerts
from portal.ledger import services as ledger
from tests.factories import csrf_token, login_as, make_staff, make_user
from tests.html_text import visible_text


@pytest.fixture
def customer(client) -> User:
    user = make_user()
    ledger.grant(user.id, 1_000, f"grant:{user.id}", "setup")
    db.session.commit()
    login_as(client, user)
    return user


def set_threshold(client, value: str, token: str | None = None):
    token = csrf_token(client, "/account") if token is None else token
    return client.post("/account", data={"alert-threshold": value, "alert-csrf_token": token})


def stored(user: User) -> tuple[int | None, bool]:
    db.session.expire_all()
    account = db.session.get(User, user.id)
    return account.low_balance_threshold, account.low_balance_alert_armed


def threshold_field_value(page: str) -> str:
    field = re.search(r'<input [^>]*name="alert-threshold"[^>]*>', page).group()
    return re.search(r'value="([^"]*)"', field).group(1)


def page_text(client, path: str = "/account") -> str:
    return visible_text(client.get(path).get_data(as_text=True))


def test_the_alert_is_off_by_default_and_the_page_says_so(client, customer):
    text = page_text(client)

    assert stored(customer) == (None, False)
    assert "Low-balance alert Off." in text
    assert "Turn on alert" in text
    assert "No suggestion yet: we work one out from your jobs of the last 30 days" in text


def test_setting_a_threshold_stores_it_arms_it_and_says_so(client, customer):
    response = set_threshold(client, "250")

    assert response.status_code == 303
    assert response.headers["Location"] == "/account#low-balance-alert"
    assert stored(customer) == (250, True)
    text = page_text(client)
    assert "we will e-mail you when your balance falls below 250 credits" in text
    assert "On: we e-mail you when your balance falls below 250 credits" in text
    assert "Save alert" in text
    assert "Turn off alert" in text


def test_a_threshold_with_thousands_separators_is_read(client, customer):
    assert set_threshold(client, " 1,300 ").status_code == 303

    assert stored(customer) == (1_300, False)
    # Above the balance of 1,000: the page says when the first e-mail will come.
    assert "Your balance is below that already" in page_text(client)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("", "Write a number of credits, like 500."),
        ("   ", "Write a number of credits, like 500."),
        ("0", "Choose between 1 and 100,000 credits."),
        ("100001", "Choose between 1 and 100,000 credits."),
        ("999999999", "Choose between 1 and 100,000 credits."),
        ("-5", "Write a whole number of credits, like 500."),
        ("+5", "Write a whole number of credits, like 500."),
        ("5.5", "Write a whole number of credits, like 500."),
        ("1e3", "Write a whole number of credits, like 500."),
        ("NaN", "Write a whole number of credits, like 500."),
        ("1,30", "Write a whole number of credits, like 500."),
        ("1 000", "Write a whole number of credits, like 500."),
        ("٥٠", "Write a whole number of credits, like 500."),
        ("５０", "Write a whole number of credits, like 500."),
        ("9" * 40, "Write a whole number of credits, like 500."),
        ("fifty", "Write a whole number of credits, like 500."),
    ],
)
def test_bad_thresholds_get_a_field_error_and_change_nothing(client, customer, value, error):
    set_threshold(client, "250")

    response = set_threshold(client, value)

    assert response.status_code == 400
    page = response.get_data(as_text=True)
    field_error = re.search(r'<p class="field-error" id="alert-threshold-error">([^<]*)</p>', page)
    assert field_error and field_error.group(1) == error
    assert 'aria-invalid="true"' in page
    assert stored(customer) == (250, True)


def test_the_form_without_its_csrf_token_changes_nothing(client, customer):
    response = set_threshold(client, "250", token="")

    assert response.status_code == 400
    assert "The form expired or was sent from elsewhere" in visible_text(response)
    assert stored(customer) == (None, False)


def test_turning_the_alert_off(client, customer):
    set_threshold(client, "250")
    token = csrf_token(client, "/account")

    response = client.post("/account/low-balance-alert/off", data={"csrf_token": token})

    assert response.status_code == 303
    assert stored(customer) == (None, False)
    assert "Low-balance alert off" in page_text(client)


def test_turning_off_without_a_csrf_token_changes_nothing(client, customer):
    set_threshold(client, "250")

    response = client.post("/account/low-balance-alert/off", data={})

    assert response.status_code == 400
    assert "The form expired or was sent from elsewhere" in visible_text(response)
    assert stored(customer) == (250, True)


def test_the_suggestion_says_how_it_was_worked_out_and_fills_the_field(client, customer):
    for number in range(6):
        jobs.charge_job(f"job-{number}", customer.email, "upscale", 50)  # 300: 10 a day

    page = client.get("/account").get_data(as_text=True)

    text = visible_text(page)
    assert (
        "Suggested: 70 credits, which is 7 days at your average of about 10 credits a day, "
        "rounded up. You used 300 credits on jobs in the last 30 days" in text
    )
    assert threshold_field_value(page) == "70"


@pytest.mark.parametrize(
    ("used", "says"),
    [
        (1, "Suggested: 1 credit, which is 7 days at your average of less than 0.1 credits a day"),
        (30, "Suggested: 7 credits, which is 7 days at your average of about 1 credit a day"),
        (42, "Suggested: 10 credits, which is 7 days at your average of about 1.4 credits a day"),
        (900, "Suggested: 210 credits, which is 7 days at your average of about 30 credits a day"),
    ],
)
def test_the_daily_average_reads_naturally(client, customer, used, says):
    jobs.charge_job("job-1", customer.email, "upscale", used)

    assert says in page_text(client)


def test_the_field_shows_the_alert_in_force_rather_than_the_suggestion(client, customer):
    jobs.charge_job("job-1", customer.email, "upscale", 300)
    set_threshold(client, "250")

    page = client.get("/account").get_data(as_text=True)

    assert threshold_field_value(page) == "250"


def test_staff_have_no_alert_and_cannot_set_one(client):
    staff = make_staff()
    login_as(client, staff)

    assert "Low-balance alert" not in page_text(client)
    set_threshold(client, "250", token=csrf_token(client, "/account"))

    assert stored(staff) == (None, False)


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [
        (None, "Get an e-mail when your balance runs low"),
        (500, "Low-balance alert below 500 credits."),
        (5_000, "Below your low-balance alert of 5,000 credits."),
    ],
    ids=["off", "above-it", "below-it"],
)
def test_the_dashboard_says_where_the_balance_stands_against_the_alert(
    client, customer, threshold, expected
):
    if threshold is not None:
        alerts.set_alert(customer.id, threshold)

    text = page_text(client, "/dashboard")

    assert expected in text
