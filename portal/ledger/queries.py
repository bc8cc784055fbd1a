"""What the customer's pages read from the ledger: totals, the balance chart, history.

Each function is a fixed number of queries, whatever the size of the history, and reads
plain rows rather than ORM objects so that rendering a page can never trigger lazy loads.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import select

from portal.accounts.models import User
from portal.extensions import db
from portal.ledger.models import EntryKind, LedgerEntry
from portal.pagination import Page, keyset_page

KIND_LABELS = {
    EntryKind.PURCHASE_CREDIT: "Credits bought",
    EntryKind.JOB_CHARGE: "Job charged",
    EntryKind.JOB_REFUND: "Failed job: credits returned",
    EntryKind.REFUND_CLAW_BACK: "Refunded: unused credits removed",
    EntryKind.CLAW_BACK_REVERSAL: "Refund did not go through: credits put back",
    EntryKind.GRANT: "Credits granted",
    EntryKind.ADJUSTMENT: "Correction",
    EntryKind.DISPUTE_HOLD: "Payment disputed: unused credits on hold",
    EntryKind.DISPUTE_RELEASE: "Dispute closed: credits released",
}


@dataclass(frozen=True)
class Totals:
    bought: int
    used: int
    refunded: int
    granted: int


def totals(account: User) -> Totals:
    """Credits bought, used (net of returned jobs), refunded and granted to date.

    The ledger keeps these on the account row as it posts each entry (see
    `services.TOTAL_OF_KIND`), and `ledger-check` compares them with the entries.
    """
    return Totals(
        bought=account.credits_bought,
        used=account.credits_used,
        refunded=account.credits_refunded,
        granted=account.credits_granted,
    )


def balance_series(user_id: int, days: int, today: date) -> list[tuple[date, int]]:
    """Return the closing balance of each of the last `days` UTC days, oldest first.

    One statement of `days` index lookups (the latest entry before each day's end), so
    its cost does not grow with the number of entries in the window.
    """
    first_day = today - timedelta(days=days - 1)
    day_ends = [
        datetime.combine(first_day + timedelta(days=offset + 1), time(0), tzinfo=UTC)
        for offset in range(days)
    ]
    closing = db.session.execute(
        select(*(_balance_before(user_id, end).label(f"day{n}") for n, end in enumerate(day_ends)))
    ).one()
    return [
        (first_day + timedelta(days=offset), balance or 0) for offset, balance in enumerate(closing)
    ]


def _balance_before(user_id: int, moment: datetime):
    return (
        select(LedgerEntry.balance_after)
        .where(LedgerEntry.user_id == user_id, LedgerEntry.created_at < moment)
        .order_by(LedgerEntry.created_at.desc(), LedgerEntry.id.desc())
        .limit(1)
        .scalar_subquery()
    )


@dataclass(frozen=True)
class HistoryFilter:
    kind: EntryKind | None = None
    start: datetime | None = None
    end: datetime | None = None


_HISTORY_COLUMNS = (
    LedgerEntry.id,
    LedgerEntry.created_at,
    LedgerEntry.kind,
    LedgerEntry.credits,
    LedgerEntry.balance_after,
    LedgerEntry.memo,
    LedgerEntry.purchase_id,
    LedgerEntry.job_id,
)


def _history_query(user_id: int, filters: HistoryFilter):
    query = select(*_HISTORY_COLUMNS).where(LedgerEntry.user_id == user_id)
    if filters.kind is not None:
        query = query.where(LedgerEntry.kind == filters.kind)
    if filters.start is not None:
        query = query.where(LedgerEntry.created_at >= filters.start)
    if filters.end is not None:
        query = query.where(LedgerEntry.created_at < filters.end)
    return query


def history_page(
    user_id: int, filters: HistoryFilter, size: int, before: int | None, after: int | None
) -> Page:
    """Return one page of the customer's ledger, newest first."""
    return keyset_page(_history_query(user_id, filters), LedgerEntry.id, size, before, after)


def history_for_export(user_id: int, filters: HistoryFilter, batch: int = 2000) -> Iterator:
    """Yield every matching entry, newest first, fetched in batches from a server cursor."""
    query = _history_query(user_id, filters).order_by(LedgerEntry.id.desc())
    yield from db.session.execute(query.execution_options(stream_results=True, yield_per=batch))
