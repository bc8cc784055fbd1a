"""Low-balance alerts: one e-mail per fall below the customer's threshold, re-armed when
the balance is back at or above it, and the threshold suggested from recent use."""

from datetime import timedelta

import pytest
from sqlalchemy import select

from portal.accounts.models import User
from portal.db import db
from portal.errors import InsufficientCredits, ValidationError
from portal.jobs import services as jobs
from portal.jobs.models import FailureReason
from portal.ledger import alerts
from portal.ledger import services as ledger
from portal.notifications.models import OutboxEmail
from portal.timeutil import utcnow
from tests.factories import make_purchase, make_user

_jobs_run = iter(range(1_000_000))


def customer_with(credits: int, threshold: int | None = None) -> User:
    user = make_user()
    ledger.grant(user.id, credits, f"grant:{user.id}:setup", "setup")
    db.session.commit()
    if threshold is not None:
        alerts.set_alert(user.id, threshold)
    return user


def charge(user: User, credits: int, at=None):
    job, _ = jobs.charge_job(f"job-{next(_jobs_run)}", user.email, "upscale", credits, at=at)
    return job


def alert_emails(user: User) -> list[OutboxEmail]:
    db.session.expire_all()
    return list(
        db.session.scalars(
            select(OutboxEmail)
            .where(OutboxEmail.to_address == user.email, OutboxEmail.subject.contains("below"))
            .order_by(OutboxEmail.id)
        )
    )


def account(user: User) -> User:
    db.session.expire_all()
    return db.session.get(User, user.id)


# -- crossing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("balance", "threshold", "charges", "emails"),
    [
        pytest.param(100, 50, [60], 1, id="one-charge-crosses"),
        pytest.param(100, 50, [50], 0, id="landing-on-the-threshold-is-not-below"),
        pytest.param(100, 50, [51], 1, id="one-below-the-threshold"),
        pytest.param(100, 50, [10, 10, 10], 0, id="charges-that-stay-above"),
        pytest.param(100, 50, [30, 30, 5, 5, 5], 1, id="one-email-not-one-per-job"),
        pytest.param(100, 50, [100], 1, id="down-to-zero"),
        pytest.param(100, 100, [1], 1, id="threshold-equal-to-the-balance"),
    ],
)
def test_an_alert_is_sent_once_when_a_charge_crosses_below_the_threshold(
    balance, threshold, charges, emails
):
    user = customer_with(balance, threshold)

    for credits in charges:
        charge(user, credits)

    assert len(alert_emails(user)) == emails
    assert account(user).low_balance_alert_armed is (emails == 0)
    assert ledger.check_books() == []


def test_the_alert_names_the_balance_the_threshold_and_where_to_buy_and_change_it():
    user = customer_with(1_500, 1_200)

    charge(user, 301)

    [email] = alert_emails(user)
    assert email.subject == "Your balance is below 1,200 credits"
    assert "Your balance is 1,199 credits, below the 1,200 credits you asked" in email.body_text
    assert "Buy credits: http://portal.test/credits/buy" in email.body_text
    assert "turn the alert off" in email.body_text
    assert "Account page: http://portal.test/account" in email.body_text
    # The customer's mail ends with where to write, like every other.
    assert "Questions? Write to us at" in email.body_text


def test_one_credit_reads_as_one_credit():
    user = customer_with(3, 2)

    charge(user, 2)

    [email] = alert_emails(user)
    assert "Your balance is 1 credit, below the 2 credits" in email.body_text


def test_without_an_address_to_link_to_the_alert_names_the_pages(make_app):
    worker_like = make_app(SERVER_NAME=None, PORTAL_BASE_URL="")
    with worker_like.app_context():
        user = customer_with(100, 50)
        charge(user, 60)

        [email] = alert_emails(user)
        assert "http" not in email.body_text
        assert "Buy credits in the portal under Buy credits." in email.body_text
        assert "your Account page in the portal." in email.body_text


def test_no_alert_when_the_customer_set_none():
    user = customer_with(100)

    charge(user, 99)

    assert alert_emails(user) == []
    assert account(user).low_balance_alert_armed is False


def test_a_refused_charge_sends_nothing():
    user = customer_with(10, 5)

    with pytest.raises(InsufficientCredits):
        charge(user, 11)

    assert alert_emails(user) == []
    assert account(user).low_balance_alert_armed is True


# -- re-arming ---------------------------------------------------------------------------


def test_a_purchase_back_above_the_threshold_re_arms_the_alert():
    user = customer_with(100, 50)
    charge(user, 60)
    assert account(user).low_balance_alert_armed is False

    make_purchase(user, package="starter")  # 40 + 50 = 90
    assert account(user).low_balance_alert_armed is True
    charge(user, 45)

    assert len(alert_emails(user)) == 2


def test_a_purchase_that_leaves_the_balance_below_does_not_re_arm():
    user = customer_with(400, 350)
    charge(user, 300)  # 100: alert sent

    make_purchase(user, package="starter")  # 150, still below 350
    charge(user, 10)

    assert len(alert_emails(user)) == 1
    assert account(user).low_balance_alert_armed is False


def test_a_platform_retrying_failing_jobs_gets_one_alert_not_one_per_retry():
    """Charge, fail, credits back, charge again: the balance keeps crossing the threshold
    but it is one fall, told once; a purchase re-arms the alert."""
    user = customer_with(55, 50)
    for attempt in range(5):
        job = charge(user, 10)  # 45
        jobs.fail_job(job.id, FailureReason.PLATFORM_ERROR, f"GPU node lost {attempt}")  # 55
    assert account(user).low_balance_alert_armed is False
    assert len(alert_emails(user)) == 1

    make_purchase(user, "starter")  # 105: re-armed
    assert account(user).low_balance_alert_armed is True
    charge(user, 60)
    assert len(alert_emails(user)) == 2


def test_a_failure_on_invalid_input_keeps_the_charge_and_the_alert_used():
    user = customer_with(100, 50)
    job = charge(user, 60)

    jobs.fail_job(job.id, FailureReason.INVALID_INPUT, "not an image")
    charge(user, 1)

    assert len(alert_emails(user)) == 1


# -- entries the customer asked for: refunds and disputes ---------------------------------


def test_a_refund_claw_back_below_the_threshold_sends_nothing_but_the_next_job_does():
    user = make_user()
    alerts.set_alert(user.id, 100)
    purchase = make_purchase(user, package="pro")  # 300, armed
    ledger.claw_back(purchase, 250, f"claw:{purchase.id}")
    db.session.commit()

    assert alert_emails(user) == []
    assert account(user).low_balance_alert_armed is True

    charge(user, 1)

    [email] = alert_emails(user)
    assert "Your balance is 49 credits" in email.body_text


def test_a_dispute_hold_sends_nothing_but_the_next_job_below_the_threshold_does():
    user = make_user()
    alerts.set_alert(user.id, 100)
    make_purchase(user, package="starter")
    disputed = make_purchase(user, package="pro")  # 350 in all
    ledger.hold_for_dispute(disputed, f"dispute:{disputed.id}:hold")  # 50 left
    db.session.commit()
    assert alert_emails(user) == []
    assert account(user).low_balance_alert_armed is True

    charge(user, 5)

    assert len(alert_emails(user)) == 1


# -- setting and turning off -------------------------------------------------------------


def test_setting_a_threshold_at_or_below_the_balance_arms_it():
    user = customer_with(100)

    alerts.set_alert(user.id, 100)

    assert account(user).low_balance_threshold == 100
    assert account(user).low_balance_alert_armed is True


def test_setting_a_threshold_above_the_balance_waits_for_the_balance_to_come_back():
    user = customer_with(40)

    alerts.set_alert(user.id, 50)
    charge(user, 5)
    assert alert_emails(user) == []
    assert account(user).low_balance_alert_armed is False

    make_purchase(user, package="starter")  # 85
    charge(user, 40)

    assert len(alert_emails(user)) == 1


def test_turning_the_alert_off_stops_the_e_mails():
    user = customer_with(100, 50)

    alerts.turn_off_alert(user.id)
    charge(user, 60)

    assert alert_emails(user) == []
    assert account(user).low_balance_threshold is None
    assert account(user).low_balance_alert_armed is False


@pytest.mark.parametrize(
    "threshold",
    [0, -1, alerts.THRESHOLD_MAX + 1, 10**12, True, "50", 50.0, None],
    ids=["zero", "negative", "above-max", "huge", "bool", "text", "float", "none"],
)
def test_a_threshold_out_of_range_or_not_a_whole_number_is_refused(threshold):
    user = customer_with(100, 50)

    with pytest.raises(ValidationError) as refusal:
        alerts.set_alert(user.id, threshold)

    assert refusal.value.field == "threshold"
    assert account(user).low_balance_threshold == 50
    assert account(user).low_balance_alert_armed is True


@pytest.mark.parametrize("threshold", [alerts.THRESHOLD_MIN, alerts.THRESHOLD_MAX])
def test_the_ends_of_the_range_are_allowed(threshold):
    user = customer_with(10)

    alerts.set_alert(user.id, threshold)

    assert account(user).low_balance_threshold == threshold


# -- the suggestion ----------------------------------------------------------------------


def test_no_suggestion_without_use():
    user = customer_with(100)

    assert alerts.suggest_threshold(user.id, utcnow()) is None


def test_the_suggestion_is_about_a_week_of_the_last_30_days_of_use():
    user = customer_with(5_000)
    for _ in range(12):
        charge(user, 100)  # 1,200 credits: 40 a day, 280 a week
    failed = charge(user, 300)
    jobs.fail_job(failed.id, FailureReason.PLATFORM_ERROR, "lost")  # given back: not use
    charge(user, 1_000, at=utcnow() - timedelta(days=31))  # before the window

    suggestion = alerts.suggest_threshold(user.id, utcnow())

    assert suggestion == alerts.Suggestion(
        threshold=280, credits_used=1_200, window_days=30, days_covered=7
    )
    assert suggestion.per_day_tenths == 400


def test_a_small_use_suggests_at_least_one_credit_and_a_huge_one_at_most_the_maximum():
    light = customer_with(10)
    charge(light, 1)
    heavy = customer_with(1_000_000)
    charge(heavy, 1_000_000)

    assert alerts.suggest_threshold(light.id, utcnow()).threshold == 1
    assert alerts.suggest_threshold(light.id, utcnow()).per_day_tenths == 0
    assert alerts.suggest_threshold(heavy.id, utcnow()).threshold == alerts.THRESHOLD_MAX


@pytest.mark.parametrize(
    ("credits", "rounded"),
    [(1, 1), (37, 37), (99, 99), (100, 100), (101, 110), (288, 290), (1_234, 1_300)],
)
def test_suggestions_round_up_to_two_significant_figures(credits, rounded):
    assert alerts._round_up_to_two_figures(credits) == rounded
