"""The only code that changes a balance or a credit lot.

Every function here runs inside the caller's transaction (the business operation that
moves the credits commits it), and does the same three things: lock the customer's
account row, return the existing entry if its idempotency key was already used, then
write exactly one ledger entry with its lot allocations and the balance after it.
`spend_many`, the spend itself and the jobs API's hot path, differs in two ways, both
explained there: its caller has locked the rows (as `LockedAccount`s, through SQLAlchemy
Core), and has made sure the keys are unused (`spend` looks its key up; charging a job
needs not, its key being new with the job).

Locking the account row first serialises every balance change of one customer, so the
idempotency check after the lock sees any entry a concurrent twin committed; the unique
key on ledger entries is the backstop. The low-balance alert and the asking for an
auto-recharge are decided under the same lock, by `alerts.watch_balance` and
`recharge_trigger.watch_for_recharge` as each entry is posted.

`at` backdates an entry (demo data, imports); left out, entries are stamped now.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from portal.accounts.models import AccountStatus, Role, User
from portal.db import db, locked
from portal.errors import InsufficientCredits, ValidationError
from portal.ledger.alerts import watch_balance
from portal.ledger.models import (
    CreditLot,
    DayEndBalance,
    EntryKind,
    LedgerEntry,
    LotAllocation,
    LotOrigin,
)
from portal.ledger.recharge_trigger import watch_for_recharge
from portal.timeutil import utcnow

if TYPE_CHECKING:  # the ledger sits below billing: purchases are only passed in
    from portal.billing.models import Purchase

# The tables the spend path writes through SQLAlchemy Core (see `LockedAccount`).
USERS = User.__table__
LOTS = CreditLot.__table__
ENTRIES = LedgerEntry.__table__
ALLOCATIONS = LotAllocation.__table__


def lock_account(user_id: int) -> User:
    """Return the customer's row locked FOR UPDATE until the transaction ends."""
    user = locked(User, User.id == user_id)
    if user is None:
        raise ValidationError("unknown customer", field="user_id")
    return user


def _existing(idempotency_key: str) -> LedgerEntry | None:
    return db.session.scalar(
        select(LedgerEntry).where(LedgerEntry.idempotency_key == idempotency_key)
    )


# The account total each kind of entry counts towards, and the sign that makes it grow.
TOTAL_OF_KIND = {
    EntryKind.PURCHASE_CREDIT: ("credits_bought", 1),
    EntryKind.JOB_CHARGE: ("credits_used", -1),
    EntryKind.JOB_REFUND: ("credits_used", -1),
    EntryKind.REFUND_CLAW_BACK: ("credits_refunded", -1),
    EntryKind.CLAW_BACK_REVERSAL: ("credits_refunded", -1),
    EntryKind.GRANT: ("credits_granted", 1),
}


def _post(
    account: User,
    kind: EntryKind,
    moves: list[tuple[CreditLot, int]],
    idempotency_key: str,
    memo: str,
    at: datetime | None = None,
    **links,
) -> LedgerEntry:
    """Write one entry moving `moves` (lot, signed credits) and update the balance."""
    credits = sum(amount for _, amount in moves)
    account.credits_balance += credits
    if kind in TOTAL_OF_KIND:
        total, sign = TOTAL_OF_KIND[kind]
        setattr(account, total, getattr(account, total) + sign * credits)
    entry = LedgerEntry(
        user_id=account.id,
        kind=kind,
        credits=credits,
        balance_after=account.credits_balance,
        idempotency_key=idempotency_key,
        memo=memo,
        created_at=at or utcnow(),
        **links,
    )
    db.session.add(entry)
    for lot, amount in moves:
        lot.credits_remaining += amount
        db.session.add(LotAllocation(entry=entry, lot=lot, credits=amount))
    # Still under the account's lock, and before the flush writes the row once.
    watch_balance(account, kind)
    watch_for_recharge(account, kind)
    db.session.flush()
    _record_day_end(account.id, entry.created_at.astimezone(UTC).date(), entry.balance_after)
    return entry


def _record_day_end(user_id: int, day: date, balance: int) -> None:
    # The account row is locked, so entries of one customer are posted one at a time and
    # the last one posted for a day holds that day's closing balance. Like balance_after,
    # this follows the order of posting: a backdated entry (demo data) updates its own
    # day only.
    _record_day_ends([{"user_id": user_id, "day": day, "balance": balance}])


def _record_day_ends(rows: list[dict]) -> None:
    """`_record_day_end` for many customers (rows of user_id, day, balance) at once."""
    db.session.execute(_DAY_END_UPSERT[db.session.get_bind().dialect.name], rows)


def _day_end_upsert(insert):
    statement = insert(DayEndBalance.__table__)
    return statement.on_conflict_do_update(
        index_elements=[DayEndBalance.user_id, DayEndBalance.day],
        set_={"balance": statement.excluded.balance},
    )


def _require_positive(credits: int) -> None:
    if isinstance(credits, bool) or not isinstance(credits, int) or credits <= 0:
        raise ValidationError("credits must be a positive whole number", field="credits")


def credit_purchase(
    purchase: Purchase, idempotency_key: str, at: datetime | None = None, memo: str | None = None
) -> LedgerEntry:
    """Add a paid purchase's credits as a new lot; a purchase is credited at most once.
    The history names it `memo`, or the package."""
    account = lock_account(purchase.user_id)
    if entry := _existing(idempotency_key):
        return entry
    lot = CreditLot(
        user_id=account.id,
        origin=LotOrigin.PURCHASE,
        purchase_id=purchase.id,
        credits_granted=purchase.credits,
        credits_remaining=0,
        created_at=at or utcnow(),
    )
    db.session.add(lot)
    return _post(
        account,
        EntryKind.PURCHASE_CREDIT,
        [(lot, purchase.credits)],
        idempotency_key,
        memo or f"{purchase.package_code.capitalize()} package",
        at=at,
        purchase_id=purchase.id,
    )


def grant(
    user_id: int, credits: int, idempotency_key: str, memo: str, at: datetime | None = None
) -> LedgerEntry:
    """Give credits that were not bought (a goodwill or correction grant) as a new lot."""
    _require_positive(credits)
    account = lock_account(user_id)
    if entry := _existing(idempotency_key):
        return entry
    lot = CreditLot(
        user_id=account.id,
        origin=LotOrigin.GRANT,
        credits_granted=credits,
        credits_remaining=0,
        created_at=at or utcnow(),
    )
    db.session.add(lot)
    return _post(account, EntryKind.GRANT, [(lot, credits)], idempotency_key, memo, at=at)


@dataclass
class LockedAccount:
    """A customer's account row as read under its lock, for the spend path.

    Charging a job is the portal's hottest path (the processing platform calls it before
    every image job), so it runs on SQLAlchemy Core: a row read into this object instead
    of a `User` through the ORM's identity map and unit of work, which cost several times
    the database's own work per statement. Spends posted in the same transaction keep it
    current, and `spend_many` writes it back. The alert and recharge watchers take it as they
    take a `User`.
    """

    id: int
    email: str
    role: Role
    status: AccountStatus
    credits_balance: int
    credits_used: int
    low_balance_threshold: int | None
    low_balance_alert_armed: bool
    auto_recharge_below: int | None
    auto_recharge_wanted: bool

    # The account's own rules, not a copy of them.
    known_to_the_platform = User.known_to_the_platform
    is_terminated = User.is_terminated

    @classmethod
    def columns(cls) -> list:
        return [USERS.c[name] for name in cls.__dataclass_fields__]

    @classmethod
    def from_row(cls, row) -> LockedAccount:
        return cls(**{name: row._mapping[USERS.c[name]] for name in cls.__dataclass_fields__})


# Built once: the spend path runs them on every job, and building a statement costs more
# than SQLAlchemy's cached compilation of it.
_DAY_END_UPSERT = {
    "postgresql": _day_end_upsert(postgresql.insert),
    "sqlite": _day_end_upsert(sqlite.insert),
}
_LOCK_ACCOUNT = (
    select(*LockedAccount.columns()).where(USERS.c.id == bindparam("user_id")).with_for_update()
)
_LOTS_OLDEST_FIRST = (
    select(LOTS.c.user_id, LOTS.c.id, LOTS.c.credits_remaining)
    .where(
        LOTS.c.user_id.in_(bindparam("user_ids", expanding=True)),
        LOTS.c.credits_remaining > 0,
    )
    .order_by(LOTS.c.user_id, LOTS.c.created_at, LOTS.c.id)
)
# The ids come back in the order the entries were given.
_INSERT_ENTRIES = insert(ENTRIES).returning(ENTRIES.c.id, sort_by_parameter_order=True)
_INSERT_ALLOCATIONS = insert(ALLOCATIONS)
# Relative to the row as it stands: the lots are the account's, under its lock.
_TAKE_FROM_LOT = (
    update(LOTS)
    .where(LOTS.c.id == bindparam("lot"))
    .values(credits_remaining=LOTS.c.credits_remaining - bindparam("taken"))
)
_WRITE_ACCOUNT = (
    update(USERS)
    .where(USERS.c.id == bindparam("account"))
    .values(
        credits_balance=bindparam("balance"),
        credits_used=bindparam("used"),
        low_balance_alert_armed=bindparam("armed"),
        auto_recharge_wanted=bindparam("wanted"),
    )
)


def lock_account_row(user_id: int) -> LockedAccount:
    """The customer's row locked FOR UPDATE until the transaction ends, as a
    `LockedAccount` (see there)."""
    row = db.session.execute(_LOCK_ACCOUNT, {"user_id": user_id}).first()
    if row is None:
        raise ValidationError("unknown customer", field="user_id")
    return LockedAccount.from_row(row)


def spend(
    user_id: int,
    credits: int,
    idempotency_key: str,
    job_id: int | None = None,
    memo: str = "",
    at: datetime | None = None,
) -> LedgerEntry:
    """Take credits from the oldest lots first; a key already used returns its entry.

    :raises InsufficientCredits: the balance does not cover `credits`.
    """
    _require_positive(credits)
    # The spend writes through Core, which does not flush the session's pending changes
    # first: flushed here, so that it sees, say, a lot just added.
    db.session.flush()
    account = lock_account_row(user_id)
    if entry := _existing(idempotency_key):
        return entry
    [entry_id], lot_ids = spend_many([Spend(account, credits, idempotency_key, job_id, memo)], at)
    # Objects of this account the session already holds no longer say what the rows do.
    for model, key in [(User, user_id), *((CreditLot, lot_id) for lot_id in lot_ids)]:
        held = db.session.identity_map.get(db.session.identity_key(model, key))
        if held is not None:
            db.session.expire(held)
    return db.session.get(LedgerEntry, entry_id)


@dataclass(frozen=True)
class Spend:
    """Credits to take from a locked account, as one ledger entry."""

    account: LockedAccount
    credits: int
    idempotency_key: str
    job_id: int | None = None
    memo: str = ""


def spend_many(spends: list[Spend], at: datetime | None = None) -> tuple[list[int], list[int]]:
    """Take credits from the oldest lots of locked accounts, one entry per spend, in the
    order given: the spend itself, for `spend`, for charging a job and for charging a
    batch of them. Returns the new entries' ids (in that order) and the lots drawn on.

    Each account is the customer's row, locked in this transaction; one account may be
    spent from several times. The caller has made sure the keys are unused; charging a
    job keys the charge by the job it inserted in this same transaction, so it needs no
    look-up (the unique key stays the backstop). Whatever the number of spends, five
    writes and one read, the lots': the entries, their allocations, the lots, the
    accounts and the days' closing balances. Every refusal is raised before any write.

    :raises InsufficientCredits: a balance does not cover its spend.
    """
    if not spends:
        return [], []
    for spend in spends:
        _require_positive(spend.credits)
    accounts = {spend.account.id: spend.account for spend in spends}
    lots: dict[int, list[list[int]]] = {account_id: [] for account_id in accounts}
    for user_id, lot_id, remaining in db.session.execute(
        _LOTS_OLDEST_FIRST, {"user_ids": list(accounts)}
    ):
        lots[user_id].append([lot_id, remaining])

    created_at = at or utcnow()
    day = created_at.astimezone(UTC).date()
    total, sign = TOTAL_OF_KIND[EntryKind.JOB_CHARGE]
    entries, allocations, taken_from = [], [], {}
    for spend in spends:
        account = spend.account
        if account.credits_balance < spend.credits:
            raise InsufficientCredits(account.credits_balance, spend.credits)
        moves = []
        still_needed = spend.credits
        for lot in lots[account.id]:
            if lot[1] == 0:
                continue
            taken = min(lot[1], still_needed)
            lot[1] -= taken
            moves.append((lot[0], taken))
            still_needed -= taken
            if still_needed == 0:
                break
        if still_needed:
            # The balance said yes but the lots disagree: the books are broken, stop here.
            raise RuntimeError(f"account {account.id}: lots hold less than the balance")
        credits = -spend.credits  # signed, as the entry records them
        account.credits_balance += credits
        setattr(account, total, getattr(account, total) + sign * credits)
        watch_balance(account, EntryKind.JOB_CHARGE)
        watch_for_recharge(account, EntryKind.JOB_CHARGE)
        entries.append(
            {
                "user_id": account.id,
                "kind": EntryKind.JOB_CHARGE,
                "credits": credits,
                "balance_after": account.credits_balance,
                "job_id": spend.job_id,
                "idempotency_key": spend.idempotency_key,
                "memo": spend.memo,
                "created_at": created_at,
            }
        )
        allocations.append(moves)
        for lot_id, taken in moves:
            taken_from[lot_id] = taken_from.get(lot_id, 0) + taken

    entry_ids = list(db.session.execute(_INSERT_ENTRIES, entries).scalars())
    db.session.execute(
        _INSERT_ALLOCATIONS,
        [
            {"ledger_entry_id": entry_id, "lot_id": lot_id, "credits": -taken}
            for entry_id, moves in zip(entry_ids, allocations, strict=True)
            for lot_id, taken in moves
        ],
    )
    db.session.execute(
        _TAKE_FROM_LOT, [{"lot": lot_id, "taken": taken} for lot_id, taken in taken_from.items()]
    )
    db.session.execute(
        _WRITE_ACCOUNT,
        [
            {
                "account": account.id,
                "balance": account.credits_balance,
                "used": account.credits_used,
                "armed": account.low_balance_alert_armed,
                "wanted": account.auto_recharge_wanted,
            }
            for account in accounts.values()
        ],
    )
    _record_day_ends(
        [
            {"user_id": account.id, "day": day, "balance": account.credits_balance}
            for account in accounts.values()
        ]
    )
    return entry_ids, list(taken_from)


def restore(
    original: LedgerEntry, idempotency_key: str, memo: str = "", at: datetime | None = None
) -> LedgerEntry:
    """Give back what `original` took, to the very lots it took them from."""
    if original.credits >= 0:
        raise ValidationError("only a charge can be restored", field="entry")
    account = lock_account(original.user_id)
    if entry := _existing(idempotency_key):
        return entry
    moves = [(allocation.lot, -allocation.credits) for allocation in original.allocations]
    kind = {
        EntryKind.JOB_CHARGE: EntryKind.JOB_REFUND,
        EntryKind.REFUND_CLAW_BACK: EntryKind.CLAW_BACK_REVERSAL,
        EntryKind.DISPUTE_HOLD: EntryKind.DISPUTE_RELEASE,
    }.get(original.kind, EntryKind.ADJUSTMENT)
    return _post(
        account,
        kind,
        moves,
        idempotency_key,
        memo,
        at=at,
        job_id=original.job_id,
        purchase_id=original.purchase_id,
        refund_id=original.refund_id,
    )


def claw_back(
    purchase: Purchase,
    credits: int,
    idempotency_key: str,
    refund_id: int | None = None,
    memo: str = "",
    at: datetime | None = None,
) -> LedgerEntry:
    """Remove up to `credits` still-unused credits of a refunded purchase.

    :raises ValidationError: the purchase's lot holds fewer unused credits than asked.
    """
    return _take_from_purchase(
        purchase, credits, idempotency_key, EntryKind.REFUND_CLAW_BACK, memo, at, refund_id
    )


def give_back(
    purchase: Purchase, credits: int, idempotency_key: str, memo: str = ""
) -> LedgerEntry:
    """Return credits earlier removed from a purchase (a refund that did not go through)."""
    _require_positive(credits)
    account = lock_account(purchase.user_id)
    if entry := _existing(idempotency_key):
        return entry
    lot = _purchase_lot(purchase.id)
    if lot is None or lot.credits_remaining + credits > lot.credits_granted:
        raise ValidationError("more credits than were removed from this purchase", "credits")
    return _post(
        account,
        EntryKind.CLAW_BACK_REVERSAL,
        [(lot, credits)],
        idempotency_key,
        memo,
        purchase_id=purchase.id,
    )


def hold_for_dispute(purchase: Purchase, idempotency_key: str) -> LedgerEntry | None:
    """Put every still-unused credit of a disputed purchase on hold; None if none are left."""
    lock_account(purchase.user_id)
    if entry := _existing(idempotency_key):
        return entry
    unused = unused_credits(purchase)
    if unused == 0:
        return None
    return _take_from_purchase(
        purchase, unused, idempotency_key, EntryKind.DISPUTE_HOLD, "payment disputed"
    )


def _take_from_purchase(
    purchase: Purchase,
    credits: int,
    idempotency_key: str,
    kind: EntryKind,
    memo: str,
    at: datetime | None = None,
    refund_id: int | None = None,
) -> LedgerEntry:
    _require_positive(credits)
    account = lock_account(purchase.user_id)
    if entry := _existing(idempotency_key):
        return entry
    lot = _purchase_lot(purchase.id)
    if lot is None or lot.credits_remaining < credits:
        available = lot.credits_remaining if lot else 0
        raise ValidationError(
            f"only {available} credits of this purchase are unused", field="credits"
        )
    return _post(
        account,
        kind,
        [(lot, -credits)],
        idempotency_key,
        memo,
        at=at,
        purchase_id=purchase.id,
        refund_id=refund_id,
    )


def _purchase_lot(purchase_id: int) -> CreditLot | None:
    return db.session.scalar(select(CreditLot).where(CreditLot.purchase_id == purchase_id))


def unused_credits(purchase: Purchase) -> int:
    """Return how many of the purchase's credits are still unspent (0 if never credited)."""
    lot = _purchase_lot(purchase.id)
    return lot.credits_remaining if lot else 0


def rebuild_kept_figures() -> list[int]:
    """Recompute every account's running totals and day-end balances from its entries.

    The repair for what `check_books` reports about them (say, entries posted by an old
    worker during an upgrade). Each account is locked while it is redone and committed
    on its own, so the portal can keep running. Returns the ids of accounts it changed.
    """
    total_names = sorted({total for total, _ in TOTAL_OF_KIND.values()})
    changed = []
    for user_id in db.session.scalars(select(User.id).order_by(User.id)).all():
        account = lock_account(user_id)
        totals = dict.fromkeys(total_names, 0)
        day_ends: dict[date, int] = {}
        for kind, credits, balance, moment in db.session.execute(
            select(
                LedgerEntry.kind,
                LedgerEntry.credits,
                LedgerEntry.balance_after,
                LedgerEntry.created_at,
            )
            .where(LedgerEntry.user_id == user_id)
            .order_by(LedgerEntry.id)
        ):
            if kind in TOTAL_OF_KIND:
                total, sign = TOTAL_OF_KIND[kind]
                totals[total] += sign * credits
            day_ends[moment.astimezone(UTC).date()] = balance
        kept_days = dict(
            db.session.execute(
                select(DayEndBalance.day, DayEndBalance.balance).where(
                    DayEndBalance.user_id == user_id
                )
            ).all()
        )
        kept_totals = {name: getattr(account, name) for name in total_names}
        if kept_totals == totals and kept_days == day_ends:
            db.session.rollback()
            continue
        for name, value in totals.items():
            setattr(account, name, value)
        db.session.execute(delete(DayEndBalance).where(DayEndBalance.user_id == user_id))
        db.session.add_all(
            DayEndBalance(user_id=user_id, day=day, balance=balance)
            for day, balance in day_ends.items()
        )
        db.session.commit()
        changed.append(user_id)
    return changed


def _day_end_problems() -> list[AccountProblem]:
    """Compare the kept day-end balances with the last entry of each customer's days."""
    expected: dict[tuple[int, date], int] = {}
    entries = select(LedgerEntry.user_id, LedgerEntry.created_at, LedgerEntry.balance_after)
    for user_id, moment, balance in db.session.execute(
        entries.order_by(LedgerEntry.id).execution_options(yield_per=5000)
    ):
        expected[user_id, moment.astimezone(UTC).date()] = balance
    kept = {
        (user_id, day): balance
        for user_id, day, balance in db.session.execute(
            select(DayEndBalance.user_id, DayEndBalance.day, DayEndBalance.balance)
        )
    }
    emails = dict(db.session.execute(select(User.id, User.email)).all())
    return [
        AccountProblem(
            user_id,
            emails.get(user_id, ""),
            f"day-end balance of {day} is {kept.get((user_id, day))}, entries say "
            f"{expected.get((user_id, day))}",
        )
        for user_id, day in sorted(expected.keys() | kept.keys())
        if expected.get((user_id, day)) != kept.get((user_id, day))
    ]


@dataclass(frozen=True)
class AccountProblem:
    user_id: int
    email: str
    problem: str


def check_books() -> list[AccountProblem]:
    """Verify the ledger's invariants for every account; return what is wrong."""
    return (
        _account_problems()
        + _day_end_problems()
        + _lots_disagreeing_with_allocations()
        + _purchases_credited_twice()
    )


def _account_problems() -> list[AccountProblem]:
    """Each balance against its entries, its lots, its latest entry and its kept totals."""
    entry_sums = dict(
        db.session.execute(
            select(LedgerEntry.user_id, func.sum(LedgerEntry.credits)).group_by(LedgerEntry.user_id)
        ).all()
    )
    lot_sums = dict(
        db.session.execute(
            select(CreditLot.user_id, func.sum(CreditLot.credits_remaining)).group_by(
                CreditLot.user_id
            )
        ).all()
    )
    latest_balance = dict(
        db.session.execute(
            select(LedgerEntry.user_id, LedgerEntry.balance_after).where(
                LedgerEntry.id.in_(select(func.max(LedgerEntry.id)).group_by(LedgerEntry.user_id))
            )
        ).all()
    )
    kind_sums = _totals_from_entries()
    total_names = sorted({total for total, _ in TOTAL_OF_KIND.values()})
    problems: list[AccountProblem] = []
    for user_id, email, balance, *totals in db.session.execute(
        select(
            User.id, User.email, User.credits_balance, *(getattr(User, n) for n in total_names)
        ).order_by(User.id)
    ):

        def report(problem: str, user_id=user_id, email=email) -> None:
            problems.append(AccountProblem(user_id, email, problem))

        entries = entry_sums.get(user_id) or 0
        lots = lot_sums.get(user_id) or 0
        if balance < 0:
            report(f"negative balance {balance}")
        if balance != entries:
            report(f"balance {balance} differs from the sum of its entries {entries}")
        if balance != lots:
            report(f"balance {balance} differs from the lots' remaining credits {lots}")
        if user_id in latest_balance and latest_balance[user_id] != balance:
            report(f"latest entry says {latest_balance[user_id]}, account says {balance}")
        for name, kept in zip(total_names, totals, strict=True):
            summed = kind_sums.get(user_id, {}).get(name, 0)
            if kept != summed:
                report(f"{name.replace('_', ' ')} {kept} differs from its entries' {summed}")
    return problems


def _totals_from_entries() -> dict[int, dict[str, int]]:
    """Each account's running totals (bought, used, refunded, granted) summed from entries."""
    kind_sums: dict[int, dict[str, int]] = {}
    for user_id, kind, credits in db.session.execute(
        select(LedgerEntry.user_id, LedgerEntry.kind, func.sum(LedgerEntry.credits)).group_by(
            LedgerEntry.user_id, LedgerEntry.kind
        )
    ):
        if kind in TOTAL_OF_KIND:
            total, sign = TOTAL_OF_KIND[kind]
            sums = kind_sums.setdefault(user_id, {})
            sums[total] = sums.get(total, 0) + sign * credits
    return kind_sums


def _lots_disagreeing_with_allocations() -> list[AccountProblem]:
    mismatched = db.session.execute(
        select(CreditLot.id, CreditLot.user_id, User.email)
        .join(User, User.id == CreditLot.user_id)
        .join(LotAllocation, LotAllocation.lot_id == CreditLot.id, isouter=True)
        .group_by(CreditLot.id, CreditLot.user_id, User.email, CreditLot.credits_remaining)
        .having(func.coalesce(func.sum(LotAllocation.credits), 0) != CreditLot.credits_remaining)
    )
    return [
        AccountProblem(user_id, email, f"lot {lot_id} disagrees with its allocations")
        for lot_id, user_id, email in mismatched
    ]


def _purchases_credited_twice() -> list[AccountProblem]:
    credited_twice = db.session.execute(
        select(LedgerEntry.purchase_id, LedgerEntry.user_id, User.email)
        .join(User, User.id == LedgerEntry.user_id)
        .where(LedgerEntry.kind == EntryKind.PURCHASE_CREDIT)
        .group_by(LedgerEntry.purchase_id, LedgerEntry.user_id, User.email)
        .having(func.count() > 1)
    )
    return [
        AccountProblem(user_id, email, f"purchase {purchase_id} credited twice")
        for purchase_id, user_id, email in credited_twice
    ]
