"""Auto-recharge before Stripe is called: the ledger asking for a recharge under the
balance's lock, the worker deciding whether to start one (in flight, the cap, the
balance), and the settings' validation. Charging is in test_auto_recharge.py."""

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from portal.accounts.models import AccountStatus, User
from portal.billing import auto_recharge
from portal.billing.models import AutoRecharge, Purchase, PurchaseOrigin, PurchaseStatus
from portal.db import db
from portal.errors import ValidationError
from portal.jobs import services as jobs
from portal.ledger import services as ledger
from portal.notifications.models import OutboxEmail
from portal.timeutil import utcnow
from tests.billing.helpers import recharges_of
from tests.factories import make_user

_jobs_run = iter(range(1_000_000))
NOW = datetime(2026, 12, 15, 18, 0, tzinfo=UTC)


def customer_with(credits: int, threshold: int = 50, package: str = "pro", cap_cents=10_000):
    """A customer with `credits` and auto-recharge on (a card set up) at `threshold`."""
    user = make_user(stripe_customer_id=f"cus_test{next(_jobs_run)}")
    if credits:
        ledger.grant(user.id, credits, f"grant:{user.id}:setup", "setup")
    db.session.add(
        AutoRecharge(
            user_id=user.id,
            threshold=threshold,
            package_code=package,
            monthly_cap_cents=cap_cents,
            payment_method_id="pm_test",
            card_brand="visa",
            card_last4="4242",
            failures_in_a_row=0,
        )
    )
    user.auto_recharge_below = threshold
    db.session.commit()
    return user


def charge(user: User, credits: int):
    return jobs.charge_job(f"job-{next(_jobs_run)}", user.email, "upscale", credits)


def account(user: User) -> User:
    db.session.expire_all()
    return db.session.get(User, user.id)


def emails_to(user: User, about: str) -> list[OutboxEmail]:
    db.session.expire_all()
    return list(
        db.session.scalars(
            select(OutboxEmail).where(
                OutboxEmail.to_address == user.email, OutboxEmail.subject.contains(about)
            )
        )
    )


# -- the ledger asking -----------------------------------------------------------------


def test_a_job_charge_crossing_the_threshold_asks_for_a_recharge_once():
    user = customer_with(100, threshold=50)
    charge(user, 40)
    assert account(user).auto_recharge_wanted is False
    charge(user, 20)
    assert account(user).auto_recharge_wanted is True
    charge(user, 5)
    assert account(user).auto_recharge_wanted is True


def test_landing_on_the_threshold_does_not_ask():
    user = customer_with(100, threshold=50)
    charge(user, 50)
    assert account(user).auto_recharge_wanted is False


def test_with_auto_recharge_off_nothing_is_asked():
    user = customer_with(100, threshold=50)
    auto_recharge.switch_off(user.id)
    charge(user, 80)
    assert account(user).auto_recharge_wanted is False
    assert account(user).auto_recharge_below is None


def test_a_refund_claw_back_does_not_ask_for_a_recharge():
    user = customer_with(0)
    purchase = Purchase(
        user_id=user.id,
        package_code="pro",
        credits=300,
        amount_cents=2000,
        status=PurchaseStatus.CREDITED,
        paid_at=utcnow(),
        credited_at=utcnow(),
    )
    db.session.add(purchase)
    db.session.flush()
    ledger.credit_purchase(purchase, purchase.credit_key)
    db.session.commit()
    ledger.claw_back(purchase, 280, "refund:test")
    db.session.commit()
    assert account(user).credits_balance == 20
    assert account(user).auto_recharge_wanted is False


# -- the worker starting one -----------------------------------------------------------


def test_the_worker_takes_the_request_up_and_records_one_pending_recharge():
    user = customer_with(100, threshold=50, package="pro")
    charge(user, 60)
    purchase_id = auto_recharge._start(user.id, NOW)
    [purchase] = recharges_of(user.id)
    assert purchase.id == purchase_id
    assert (purchase.status, purchase.package_code, purchase.credits, purchase.amount_cents) == (
        PurchaseStatus.PENDING,
        "pro",
        300,
        2000,
    )
    assert account(user).auto_recharge_wanted is False
    assert auto_recharge._start(user.id, NOW) is None


def test_no_second_recharge_while_one_is_in_flight():
    user = customer_with(100, threshold=50)
    charge(user, 60)
    auto_recharge._start(user.id, NOW)
    charge(user, 5)
    assert account(user).auto_recharge_wanted is True
    assert auto_recharge._start(user.id, NOW) is None
    assert len(recharges_of(user.id)) == 1
    assert account(user).auto_recharge_wanted is False


def test_the_database_refuses_a_second_recharge_in_flight():
    user = customer_with(100)
    _past_recharge(user, NOW, PurchaseStatus.PENDING)
    with pytest.raises(IntegrityError):
        _past_recharge(user, NOW, PurchaseStatus.PENDING)
    db.session.rollback()


def test_a_purchase_that_came_in_meanwhile_makes_the_recharge_unneeded():
    user = customer_with(100, threshold=50)
    charge(user, 60)
    ledger.grant(user.id, 100, f"grant:{user.id}:meanwhile", "meanwhile")
    db.session.commit()
    assert auto_recharge._start(user.id, NOW) is None
    assert recharges_of(user.id) == []


@pytest.mark.parametrize("status", [AccountStatus.TERMINATED, AccountStatus.CLOSED])
def test_a_terminated_or_closed_account_is_never_recharged(status):
    user = customer_with(100, threshold=50)
    charge(user, 60)
    db.session.get(User, user.id).status = status
    db.session.commit()
    assert auto_recharge._start(user.id, NOW) is None
    assert recharges_of(user.id) == []


def _past_recharge(user: User, at: datetime, status=PurchaseStatus.CREDITED) -> None:
    """A $20 Pro recharge started at `at` that went as `status`."""
    db.session.add(
        Purchase(
            user_id=user.id,
            origin=PurchaseOrigin.AUTO_RECHARGE,
            package_code="pro",
            credits=300,
            amount_cents=2000,
            status=status,
            created_at=at,
        )
    )
    db.session.commit()


def test_the_monthly_cap_is_never_passed_and_said_once_a_month():
    # $50 a month allows two $20 packages: a third would make $60.
    user = customer_with(100, threshold=50, cap_cents=5_000)
    _past_recharge(user, NOW - timedelta(days=3))
    _past_recharge(user, NOW - timedelta(days=1))
    charge(user, 60)
    assert auto_recharge._start(user.id, NOW) is None
    charge(user, 1)
    assert auto_recharge._start(user.id, NOW) is None
    assert len(recharges_of(user.id)) == 2
    [told] = emails_to(user, "paused until next month")
    assert "$50.00" in told.body_text


def test_failed_recharges_and_last_months_do_not_count_towards_the_cap():
    user = customer_with(100, threshold=50, cap_cents=2_000)
    # Vancouver's December starts at 08:00 UTC on Dec 1: this one is November's.
    _past_recharge(user, datetime(2026, 12, 1, 7, 59, tzinfo=UTC))
    _past_recharge(user, NOW - timedelta(hours=1), PurchaseStatus.FAILED)
    charge(user, 60)
    assert auto_recharge._start(user.id, NOW) is not None


# -- settings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("threshold", "package", "cap", "field"),
    [
        pytest.param(0, "pro", 10_000, "threshold", id="threshold-zero"),
        pytest.param(100_001, "pro", 10_000, "threshold", id="threshold-too-high"),
        pytest.param("50", "pro", 10_000, "threshold", id="threshold-text"),
        pytest.param(True, "pro", 10_000, "threshold", id="threshold-bool"),
        pytest.param(50, "gold", 10_000, "package", id="no-such-package"),
        pytest.param(50, "pro", 1_999, "monthly_cap", id="cap-below-one-package"),
        pytest.param(50, "pro", 500_001, "monthly_cap", id="cap-too-high"),
        pytest.param(50, "pro", 20.5, "monthly_cap", id="cap-not-whole"),
    ],
)
def test_settings_out_of_range_are_refused_naming_the_field(threshold, package, cap, field):
    user = make_user()
    with pytest.raises(ValidationError) as refused:
        auto_recharge.choose(user.id, threshold, package, cap)
    assert refused.value.field == field
    assert db.session.get(AutoRecharge, user.id) is None


def test_settings_without_a_card_wait_for_one():
    user = make_user()
    assert auto_recharge.choose(user.id, 50, "basic", 1_000) is False
    settings = db.session.get(AutoRecharge, user.id)
    assert (settings.threshold, settings.package_code, settings.monthly_cap_cents) == (
        50,
        "basic",
        1_000,
    )
    assert account(user).auto_recharge_below is None


def test_settings_with_a_card_switch_it_on_and_clear_past_declines():
    user = customer_with(100, threshold=50)
    auto_recharge.switch_off(user.id)
    settings = db.session.get(AutoRecharge, user.id)
    settings.failures_in_a_row, settings.switched_off_because = 3, "declined"
    db.session.commit()
    assert auto_recharge.choose(user.id, 80, "premium", 5_000) is True
    assert account(user).auto_recharge_below == 80
    db.session.expire_all()
    settings = db.session.get(AutoRecharge, user.id)
    assert (settings.failures_in_a_row, settings.switched_off_because) == (0, None)


def test_the_company_month_is_vancouvers():
    from portal.timeutil import company_month

    start, following = company_month(datetime(2026, 12, 1, 7, 0, tzinfo=UTC))
    assert (start, following) == (
        datetime(2026, 11, 1, 7, 0, tzinfo=UTC),
        datetime(2026, 12, 1, 8, 0, tzinfo=UTC),
    )


def test_a_pending_checkout_purchase_does_not_hold_up_a_recharge():
    user = customer_with(100, threshold=50)
    db.session.add(Purchase(user_id=user.id, package_code="pro", credits=300, amount_cents=2000))
    db.session.commit()
    charge(user, 60)
    assert auto_recharge._start(user.id, NOW) is not None
    assert (
        db.session.scalar(
            select(func.count()).select_from(Purchase).where(Purchase.user_id == user.id)
        )
        == 2
    )
