"""The figures the ledger keeps beside the balance: running totals and day-end balances."""

from datetime import UTC, date, datetime, timedelta

from sqlalchemy import select, text

from portal.accounts.models import User
from portal.db import db
from portal.ledger import queries
from portal.ledger import services as ledger
from portal.ledger.models import DayEndBalance
from tests.factories import make_purchase, make_user


def account(user: User) -> User:
    db.session.expire_all()
    return db.session.get(User, user.id)


def test_totals_follow_every_kind_of_entry():
    user = make_user()
    pro = make_purchase(user, package="pro")  # 300 credits
    make_purchase(user, package="starter")  # 50 credits
    failed = ledger.spend(user.id, 40, "spend:failed")
    ledger.spend(user.id, 25, "spend:kept")
    ledger.restore(failed, "restore:failed")
    claw = ledger.claw_back(pro, 100, "claw:pro")
    ledger.restore(claw, "claw:pro:reversed")
    ledger.claw_back(pro, 60, "claw:pro:again")
    ledger.grant(user.id, 7, "grant:goodwill", "goodwill")
    db.session.commit()

    totals = queries.totals(account(user))

    assert totals == queries.Totals(bought=350, used=25, refunded=60, granted=7)
    assert account(user).credits_balance == 350 - 25 - 60 + 7
    assert ledger.check_books() == []


def test_repeated_entries_count_once_in_the_totals():
    user = make_user()
    make_purchase(user, package="basic")
    ledger.spend(user.id, 10, "spend:once")
    ledger.spend(user.id, 10, "spend:once")
    db.session.commit()

    assert queries.totals(account(user)).used == 10


def test_each_day_keeps_the_balance_of_its_last_entry():
    user = make_user()
    monday = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    make_purchase(user, package="pro", paid_at=monday, created_at=monday)
    ledger.spend(user.id, 10, "spend:1", at=monday + timedelta(hours=1))
    ledger.spend(user.id, 20, "spend:2", at=monday + timedelta(hours=14))  # still Monday, UTC
    ledger.spend(user.id, 5, "spend:3", at=monday + timedelta(days=2))
    db.session.commit()

    kept = dict(
        db.session.execute(
            select(DayEndBalance.day, DayEndBalance.balance).where(DayEndBalance.user_id == user.id)
        ).all()
    )

    assert kept == {date(2026, 11, 2): 270, date(2026, 11, 4): 265}
    assert ledger.check_books() == []


def test_the_chart_carries_balances_over_quiet_days_and_opens_with_the_day_before():
    user = make_user()
    start = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)
    make_purchase(user, package="pro", paid_at=start, created_at=start)  # before the window
    ledger.spend(user.id, 100, "spend:window", at=datetime(2026, 11, 3, 8, 0, tzinfo=UTC))
    db.session.commit()

    series = queries.balance_series(user.id, days=5, today=date(2026, 11, 5))

    assert series == [
        (date(2026, 11, 1), 300),
        (date(2026, 11, 2), 300),
        (date(2026, 11, 3), 200),
        (date(2026, 11, 4), 200),
        (date(2026, 11, 5), 200),
    ]


def test_the_chart_of_a_new_customer_is_flat_at_zero():
    user = make_user()
    db.session.commit()

    assert queries.balance_series(user.id, days=3, today=date(2026, 11, 5)) == [
        (date(2026, 11, 3), 0),
        (date(2026, 11, 4), 0),
        (date(2026, 11, 5), 0),
    ]


def test_rebuilding_the_kept_figures_repairs_what_the_check_reports(app):
    broken, healthy = make_user(email="broken@example.com"), make_user()
    for user in (broken, healthy):
        make_purchase(user, package="pro")
        ledger.spend(user.id, 30, f"spend:{user.id}")
    db.session.commit()
    db.session.execute(
        text("UPDATE users SET credits_used = 0, credits_bought = 7 WHERE id = :id"),
        {"id": broken.id},
    )
    db.session.execute(text("DELETE FROM day_end_balances WHERE user_id = :id"), {"id": broken.id})
    db.session.commit()
    assert {problem.user_id for problem in ledger.check_books()} == {broken.id}

    result = app.test_cli_runner().invoke(args=["ledger-rebuild-figures"])

    assert result.exit_code == 0, result.output
    assert "1 account(s) corrected" in result.output
    assert ledger.check_books() == []
    assert queries.totals(account(broken)) == queries.Totals(
        bought=300, used=30, refunded=0, granted=0
    )
