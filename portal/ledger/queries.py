"""What the customer's pages read from the ledger: totals, the balance chart, history.

Each function is a fixed number of queries, whatever the size of the history, and reads
plain rows rather than ORM objects so that rendering a page can never trigger lazy loads.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import func, select

from portal.accounts.models import User
from portal.db import db
from portal.ledger.models import DayEndBalance, EntryKind, LedgerEntry
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

# An entry as every history of it shows it: the customer's page and CSV, the data export,
# the staff request page. Plain columns, in this order, for readers that unpack rows.
ENTRY_COLUMNS = (
    LedgerEntry.id,
    LedgerEntry.created_at,
    LedgerEntry.kind,
    LedgerEntry.credits,
    LedgerEntry.balance_after,
    LedgerEntry.purchase_id,
    LedgerEntry.job_id,
    LedgerEntry.memo,
)


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


@dataclass(frozen=True)
class RecentSpending:
    jobs: int
    credits: int

    def jobs_from(self, credits: int) -> int | None:
        """About how many jobs `credits` pay for at this average; None without jobs."""
        if self.jobs == 0 or self.credits == 0:
            return None
        return credits * self.jobs // self.credits


def recent_spending(user_id: int, since: datetime) -> RecentSpending:
    """How many jobs the customer was charged for since `since`, and how many credits."""
    jobs, credits = db.session.execute(
        select(func.count(), func.coalesce(-func.sum(LedgerEntry.credits), 0)).where(
            LedgerEntry.user_id == user_id,
            LedgerEntry.kind == EntryKind.JOB_CHARGE,
            LedgerEntry.created_at >= since,
        )
    ).one()
    return RecentSpending(jobs=jobs, credits=credits)


def balance_series(user_id: int, days: int, today: date) -> list[tuple[date, int]]:
    """Return the closing balance of each of the last `days` UTC days, oldest first.

    Reads the day-end balances the ledger keeps: the days in the window on which the
    balance changed, and the last such day before it (the opening balance).
    """
    first_day = today - timedelta(days=days - 1)
    opening_day = (
        select(func.max(DayEndBalance.day))
        .where(DayEndBalance.user_id == user_id, DayEndBalance.day < first_day)
        .scalar_subquery()
    )
    closing = dict(
        db.session.execute(
            select(DayEndBalance.day, DayEndBalance.balance).where(
                DayEndBalance.user_id == user_id,
                DayEndBalance.day >= func.coalesce(opening_day, first_day),
                DayEndBalance.day <= today,
            )
        ).all()
    )
    balance = closing[min(closing)] if closing and min(closing) < first_day else 0
    series = []
    for offset in range(days):
        current = first_day + timedelta(days=offset)
        balance = closing.get(current, balance)
        series.append((current, balance))
    return series


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


def history_for_export(user_id: int, filters: HistoryFilter, batch: int = 1000) -> Iterator[list]:
    """Yield every matching entry, newest first, in lists of up to `batch` rows.

    Each row holds `ENTRY_COLUMNS`, for callers that unpack rows rather than pay for
    attribute access on hundreds of thousands of them. Each list is one fetch from a
    server-side cursor, so memory stays flat whatever the size of the history.
    """
    query = (
        _history_query(user_id, filters)
        .with_only_columns(*ENTRY_COLUMNS)
        .order_by(LedgerEntry.id.desc())
    )
    # Run on the session's connection, as Core: the rows are plain columns, which the ORM's
    # row loading would only pass through, at a cost on each of them.
    result = db.session.connection().execute(
        query.execution_options(stream_results=True, yield_per=batch)
    )
    yield from result.partitions()
