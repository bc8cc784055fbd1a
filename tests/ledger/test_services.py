import pytest
from sqlalchemy import func, select, text

from portal.accounts.models import User
from portal.db import db
from portal.errors import InsufficientCredits, ValidationError
from portal.ledger import services as ledger
from portal.ledger.models import CreditLot, EntryKind, LedgerEntry, LotAllocation, LotOrigin
from tests.factories import make_purchase, make_user


def balance_of(user: User) -> int:
    return db.session.scalar(select(User.credits_balance).where(User.id == user.id))


def entries_of(user: User) -> list[LedgerEntry]:
    return list(
        db.session.scalars(
            select(LedgerEntry).where(LedgerEntry.user_id == user.id).order_by(LedgerEntry.id)
        )
    )


def lot_of(purchase) -> CreditLot:
    return db.session.scalar(select(CreditLot).where(CreditLot.purchase_id == purchase.id))


def allocations_of(entry: LedgerEntry) -> dict[int, int]:
    return dict(
        db.session.execute(
            select(LotAllocation.lot_id, LotAllocation.credits).where(
                LotAllocation.ledger_entry_id == entry.id
            )
        ).all()
    )


def count(model) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def snapshot(user: User) -> tuple:
    """Everything a failed operation must leave as it was."""
    db.session.expire_all()
    lots = db.session.execute(
        select(CreditLot.id, CreditLot.credits_remaining).order_by(CreditLot.id)
    ).all()
    return balance_of(user), count(LedgerEntry), count(LotAllocation), lots


def test_credit_purchase_creates_one_lot_and_one_entry():
    user = make_user()
    purchase = make_purchase(user, package="pro")

    lot = lot_of(purchase)
    assert lot.origin == LotOrigin.PURCHASE
    assert lot.user_id == user.id
    assert lot.credits_granted == lot.credits_remaining == 300
    [entry] = entries_of(user)
    assert entry.kind == EntryKind.PURCHASE_CREDIT
    assert entry.credits == entry.balance_after == 300
    assert entry.purchase_id == purchase.id
    assert allocations_of(entry) == {lot.id: 300}
    assert balance_of(user) == 300


def test_credit_purchase_twice_with_the_same_key_credits_once():
    user = make_user()
    purchase = make_purchase(user, package="basic", credited=False)

    first = ledger.credit_purchase(purchase, "purchase:credit:once")
    db.session.commit()
    second = ledger.credit_purchase(purchase, "purchase:credit:once")
    db.session.commit()

    assert second.id == first.id
    assert count(CreditLot) == 1
    assert count(LedgerEntry) == 1
    assert balance_of(user) == 120
    assert ledger.check_books() == []


def test_spend_draws_from_oldest_lot_first():
    user = make_user()
    oldest = make_purchase(user, package="starter")
    middle = make_purchase(user, package="basic")
    newest = make_purchase(user, package="starter")

    first = ledger.spend(user.id, 100, "spend:1")
    db.session.commit()

    assert first.kind == EntryKind.JOB_CHARGE
    assert first.credits == -100
    assert allocations_of(first) == {lot_of(oldest).id: -50, lot_of(middle).id: -50}
    assert [lot_of(p).credits_remaining for p in (oldest, middle, newest)] == [0, 70, 50]

    second = ledger.spend(user.id, 100, "spend:2")
    db.session.commit()

    assert allocations_of(second) == {lot_of(middle).id: -70, lot_of(newest).id: -30}
    assert [lot_of(p).credits_remaining for p in (oldest, middle, newest)] == [0, 0, 20]
    assert balance_of(user) == 20
    assert ledger.check_books() == []


def test_spend_uses_an_older_purchase_before_a_newer_grant():
    user = make_user()
    purchase = make_purchase(user, package="starter")
    granted = ledger.grant(user.id, 30, "grant:after-purchase", "goodwill")
    db.session.commit()
    grant_lot = db.session.get(CreditLot, granted.allocations[0].lot_id)

    entry = ledger.spend(user.id, 60, "spend:mixed")
    db.session.commit()

    assert allocations_of(entry) == {lot_of(purchase).id: -50, grant_lot.id: -10}
    assert grant_lot.credits_remaining == 20


@pytest.mark.parametrize(("credits", "succeeds"), [(119, True), (120, True), (121, False)])
def test_spend_is_allowed_up_to_the_balance_exactly(credits, succeeds):
    user = make_user()
    make_purchase(user, package="starter")
    make_purchase(user, package="starter")
    ledger.grant(user.id, 20, "grant:top-up", "top-up")
    db.session.commit()
    before = snapshot(user)

    if succeeds:
        ledger.spend(user.id, credits, "spend:boundary")
        db.session.commit()
        assert balance_of(user) == 120 - credits
    else:
        with pytest.raises(InsufficientCredits) as refused:
            ledger.spend(user.id, credits, "spend:boundary")
        db.session.commit()
        assert (refused.value.balance, refused.value.requested) == (120, credits)
        assert snapshot(user) == before
    assert ledger.check_books() == []


def test_spend_more_than_the_balance_changes_nothing():
    user = make_user()
    make_purchase(user, package="starter")
    ledger.spend(user.id, 20, "spend:before")
    db.session.commit()
    before = snapshot(user)

    with pytest.raises(InsufficientCredits) as refused:
        ledger.spend(user.id, 31, "spend:too-much")
    db.session.commit()

    assert refused.value.balance == 30
    assert snapshot(user) == before
    assert (
        db.session.scalar(
            select(LedgerEntry).where(LedgerEntry.idempotency_key == "spend:too-much")
        )
        is None
    )


def test_spend_with_the_same_key_twice_charges_once():
    user = make_user()
    make_purchase(user, package="starter")

    first = ledger.spend(user.id, 10, "spend:repeat")
    db.session.commit()
    second = ledger.spend(user.id, 10, "spend:repeat")
    db.session.commit()

    assert second.id == first.id
    assert balance_of(user) == 40
    assert [entry.kind for entry in entries_of(user)] == [
        EntryKind.PURCHASE_CREDIT,
        EntryKind.JOB_CHARGE,
    ]
    assert count(LotAllocation) == 2


def test_restore_gives_credits_back_to_the_lots_the_charge_spanned():
    user = make_user()
    first = make_purchase(user, package="starter")
    second = make_purchase(user, package="basic")
    charge = ledger.spend(user.id, 70, "spend:spanning")
    db.session.commit()
    ledger.spend(user.id, 30, "spend:later")
    db.session.commit()
    assert [lot_of(p).credits_remaining for p in (first, second)] == [0, 70]

    refund = ledger.restore(charge, "restore:spanning", memo="job failed")
    db.session.commit()

    assert refund.kind == EntryKind.JOB_REFUND
    assert refund.credits == 70
    assert allocations_of(refund) == {lot_of(first).id: 50, lot_of(second).id: 20}
    assert [lot_of(p).credits_remaining for p in (first, second)] == [50, 90]
    assert balance_of(user) == 140
    assert ledger.check_books() == []


def test_restore_with_the_same_key_twice_gives_back_once():
    user = make_user()
    purchase = make_purchase(user, package="starter")
    charge = ledger.spend(user.id, 15, "spend:once")
    db.session.commit()

    first = ledger.restore(charge, "restore:once")
    db.session.commit()
    second = ledger.restore(charge, "restore:once")
    db.session.commit()

    assert second.id == first.id
    assert lot_of(purchase).credits_remaining == 50
    assert balance_of(user) == 50
    assert count(LedgerEntry) == 3


def test_restore_refuses_an_entry_that_was_not_a_charge():
    user = make_user()
    make_purchase(user, package="starter")
    [credit] = entries_of(user)
    before = snapshot(user)

    with pytest.raises(ValidationError) as refused:
        ledger.restore(credit, "restore:not-a-charge")
    db.session.commit()

    assert refused.value.field == "entry"
    assert snapshot(user) == before


@pytest.mark.parametrize(("credits", "succeeds"), [(1, True), (100, True), (101, False)])
def test_claw_back_is_limited_to_the_unused_credits_of_the_purchase(credits, succeeds):
    user = make_user()
    purchase = make_purchase(user, package="pro")
    make_purchase(user, package="premium")
    ledger.spend(user.id, 200, "spend:most-of-pro")
    db.session.commit()
    before = snapshot(user)

    if succeeds:
        entry = ledger.claw_back(purchase, credits, "claw:pro")
        db.session.commit()
        assert entry.kind == EntryKind.REFUND_CLAW_BACK
        assert entry.purchase_id == purchase.id
        assert allocations_of(entry) == {lot_of(purchase).id: -credits}
        assert ledger.unused_credits(purchase) == 100 - credits
        assert balance_of(user) == 1100 - credits
    else:
        with pytest.raises(ValidationError) as refused:
            ledger.claw_back(purchase, credits, "claw:pro")
        db.session.commit()
        assert refused.value.field == "credits"
        assert "100" in str(refused.value)
        assert snapshot(user) == before
    assert ledger.check_books() == []


def test_claw_back_of_a_purchase_never_credited_is_refused():
    user = make_user()
    make_purchase(user, package="pro")
    uncredited = make_purchase(user, package="starter", credited=False)
    before = snapshot(user)

    with pytest.raises(ValidationError):
        ledger.claw_back(uncredited, 1, "claw:uncredited")
    db.session.commit()

    assert snapshot(user) == before


def test_claw_back_with_the_same_key_twice_removes_once():
    user = make_user()
    purchase = make_purchase(user, package="basic")

    first = ledger.claw_back(purchase, 40, "claw:repeat")
    db.session.commit()
    second = ledger.claw_back(purchase, 40, "claw:repeat")
    db.session.commit()

    assert second.id == first.id
    assert ledger.unused_credits(purchase) == 80
    assert balance_of(user) == 80


def test_unused_credits_per_purchase_after_mixed_spending():
    user = make_user()
    starter = make_purchase(user, package="starter")
    basic = make_purchase(user, package="basic")
    pro = make_purchase(user, package="pro")
    never_credited = make_purchase(user, package="premium", credited=False)

    failed_job = ledger.spend(user.id, 60, "spend:a")
    db.session.commit()
    ledger.spend(user.id, 100, "spend:b")
    db.session.commit()
    ledger.restore(failed_job, "restore:a")
    db.session.commit()
    ledger.claw_back(pro, 50, "claw:pro")
    db.session.commit()
    ledger.spend(user.id, 55, "spend:c")
    db.session.commit()

    assert ledger.unused_credits(starter) == 0
    assert ledger.unused_credits(basic) == 15
    assert ledger.unused_credits(pro) == 250
    assert ledger.unused_credits(never_credited) == 0
    assert balance_of(user) == 265
    assert ledger.check_books() == []


def test_grant_adds_a_lot_of_its_own():
    user = make_user()

    entry = ledger.grant(user.id, 25, "grant:goodwill", "sorry for the outage")
    db.session.commit()

    assert entry.kind == EntryKind.GRANT
    assert entry.credits == entry.balance_after == 25
    assert entry.memo == "sorry for the outage"
    assert entry.purchase_id is None
    lot = db.session.scalar(select(CreditLot).where(CreditLot.user_id == user.id))
    assert lot.origin == LotOrigin.GRANT
    assert lot.purchase_id is None
    assert lot.credits_granted == lot.credits_remaining == 25
    assert allocations_of(entry) == {lot.id: 25}
    assert balance_of(user) == 25


def test_grant_with_the_same_key_twice_grants_once():
    user = make_user()

    first = ledger.grant(user.id, 25, "grant:repeat", "goodwill")
    db.session.commit()
    second = ledger.grant(user.id, 25, "grant:repeat", "goodwill")
    db.session.commit()

    assert second.id == first.id
    assert count(CreditLot) == 1
    assert balance_of(user) == 25


def test_grant_to_an_unknown_account_is_refused():
    with pytest.raises(ValidationError) as refused:
        ledger.grant(999_999, 10, "grant:nobody", "nobody")
    db.session.rollback()

    assert refused.value.field == "user_id"
    assert count(LedgerEntry) == 0


def test_balance_after_on_every_entry_is_the_running_sum():
    user = make_user()
    other = make_user()
    make_purchase(user, package="starter")
    make_purchase(other, package="pro")
    pro = make_purchase(user, package="pro")
    charge = ledger.spend(user.id, 70, "spend:1")
    db.session.commit()
    ledger.spend(other.id, 100, "spend:other")
    db.session.commit()
    ledger.grant(user.id, 5, "grant:1", "goodwill")
    db.session.commit()
    ledger.restore(charge, "restore:1")
    db.session.commit()
    ledger.claw_back(pro, 30, "claw:1")
    db.session.commit()
    ledger.spend(user.id, 300, "spend:2")
    db.session.commit()

    for account in (user, other):
        running = 0
        entries = entries_of(account)
        for entry in entries:
            running += entry.credits
            assert entry.balance_after == running, entry.idempotency_key
        assert entries[-1].balance_after == balance_of(account)
    assert balance_of(user) == 25


BAD_CREDITS = [0, -1, True, 1.5, "3", None]


@pytest.mark.parametrize("credits", BAD_CREDITS, ids=repr)
@pytest.mark.parametrize("operation", ["grant", "spend", "claw_back"])
def test_credits_that_are_not_a_positive_whole_number_are_refused(operation, credits):
    user = make_user()
    purchase = make_purchase(user, package="starter")
    before = snapshot(user)
    call = {
        "grant": lambda: ledger.grant(user.id, credits, "bad:grant", "memo"),
        "spend": lambda: ledger.spend(user.id, credits, "bad:spend"),
        "claw_back": lambda: ledger.claw_back(purchase, credits, "bad:claw"),
    }[operation]

    with pytest.raises(ValidationError) as refused:
        call()
    db.session.commit()

    assert refused.value.field == "credits"
    assert snapshot(user) == before


def test_check_books_finds_nothing_wrong_in_healthy_books():
    user = make_user()
    make_user()
    pro = make_purchase(user, package="pro")
    make_purchase(user, package="starter", credited=False)
    charge = ledger.spend(user.id, 120, "spend:1")
    ledger.restore(charge, "restore:1")
    ledger.claw_back(pro, 10, "claw:1")
    ledger.grant(user.id, 3, "grant:1", "goodwill")
    db.session.commit()

    assert ledger.check_books() == []


CORRUPTIONS = [
    pytest.param(
        "UPDATE users SET credits_balance = credits_balance + 5 WHERE email = :email",
        "differs from the sum of its entries",
        id="balance",
    ),
    pytest.param(
        "UPDATE credit_lots SET credits_remaining = credits_remaining - 1"
        " WHERE user_id = (SELECT id FROM users WHERE email = :email)",
        "disagrees with its allocations",
        id="lot",
    ),
    pytest.param(
        "UPDATE ledger_entries SET balance_after = balance_after + 1"
        " WHERE user_id = (SELECT id FROM users WHERE email = :email)",
        "latest entry says",
        id="balance-after",
    ),
    pytest.param(
        "UPDATE users SET credits_used = credits_used + 1 WHERE email = :email",
        "credits used 1 differs from its entries' 0",
        id="running-total",
    ),
    pytest.param(
        "UPDATE day_end_balances SET balance = balance - 1"
        " WHERE user_id = (SELECT id FROM users WHERE email = :email)",
        "day-end balance of",
        id="day-end",
    ),
    pytest.param(
        "DELETE FROM day_end_balances WHERE user_id = (SELECT id FROM users WHERE email = :email)",
        "is None, entries say 300",
        id="day-end-missing",
    ),
]


@pytest.mark.parametrize(("statement", "problem"), CORRUPTIONS)
def test_check_books_reports_data_corrupted_behind_its_back(statement, problem):
    broken = make_user(email="broken@example.com")
    healthy = make_user(email="healthy@example.com")
    make_purchase(broken, package="pro")
    make_purchase(healthy, package="pro")
    db.session.execute(text(statement), {"email": broken.email})
    db.session.commit()

    problems = ledger.check_books()

    assert problems
    assert {(p.user_id, p.email) for p in problems} == {(broken.id, "broken@example.com")}
    assert any(problem in p.problem for p in problems), problems


def test_ledger_check_command_passes_healthy_books(app):
    user = make_user()
    make_purchase(user, package="pro")
    ledger.spend(user.id, 12, "spend:cli")
    db.session.commit()

    result = app.test_cli_runner().invoke(args=["ledger-check"])

    assert result.exit_code == 0, result.output
    assert "Ledger OK" in result.output


def test_ledger_check_command_fails_naming_the_corrupted_account(app):
    broken = make_user(email="broken@example.com")
    healthy = make_user(email="healthy@example.com")
    make_purchase(broken, package="pro")
    make_purchase(healthy, package="pro")
    db.session.execute(
        text("UPDATE users SET credits_balance = credits_balance + 5 WHERE id = :id"),
        {"id": broken.id},
    )
    db.session.commit()

    result = app.test_cli_runner().invoke(args=["ledger-check"])

    assert result.exit_code != 0
    assert "broken@example.com" in result.output
    assert "healthy@example.com" not in result.output
    assert "Ledger OK" not in result.output
