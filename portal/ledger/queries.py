"""What the customer's pages read from the ledger: totals, the balance chart, history.

Each function is a fixed number of queries, whatever the size of the history, and reads
plain rows rather than ORM objects so that rendering a page can never trigger lazy loads.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import Date, func, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

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


class utc_day(FunctionElement):  # noqa: N801  (reads like the SQL function it stands for)
    """The UTC calendar day of a timestamp column, on SQLite and PostgreSQL alike."""

    type = Date()
    inherit_cache = True


@compiles(utc_day, "postgresql")
def _utc_day_postgresql(element, compiler, **kw):
    return f"(({compiler.process(element.clauses, **kw)}) AT TIME ZONE 'UTC')::date"


@compiles(utc_day, "sqlite")
def _utc_day_sqlite(element, compiler, **kw):
    # Timestamps are stored as UTC text 'YYYY-MM-DD HH:MM:SS...'.
    return f"substr({compiler.process(element.clauses, **kw)}, 1, 10)"


@dataclass(frozen=True)
class Totals:
    bought: int
    used: int
    refunded: int
    granted: int


def totals(user_id: int) -> Totals:
    """Return credits bought, used (net of returned jobs), refunded and granted to date."""
    sums = dict(
        db.session.execute(
            select(LedgerEntry.kind, func.sum(LedgerEntry.credits))
            .where(LedgerEntry.user_id == user_id)
            .group_by(LedgerEntry.kind)
        ).all()
    )
    return Totals(
        bought=sums.get(EntryKind.PURCHASE_CREDIT, 0),
        used=-(sums.get(EntryKind.JOB_CHARGE, 0) + sums.get(EntryKind.JOB_REFUND, 0)),
        refunded=-(
            sums.get(EntryKind.REFUND_CLAW_BACK, 0) + sums.get(EntryKind.CLAW_BACK_REVERSAL, 0)
        ),
        granted=sums.get(EntryKind.GRANT, 0),
    )


def balance_series(user_id: int, days: int, today: date) -> list[tuple[date, int]]:
    """Return the closing balance of each of the last `days` UTC days, oldest first."""
    first_day = today - timedelta(days=days - 1)
    window_start = datetime.combine(first_day, time(0), tzinfo=UTC)
    day = utc_day(LedgerEntry.created_at)
    last_of_day = (
        select(func.max(LedgerEntry.id))
        .where(LedgerEntry.user_id == user_id, LedgerEntry.created_at >= window_start)
        .group_by(day)
    )
    closing = {
        _as_date(when): balance
        for when, balance in db.session.execute(
            select(day, LedgerEntry.balance_after).where(LedgerEntry.id.in_(last_of_day))
        )
    }
    opening = db.session.scalar(
        select(LedgerEntry.balance_after)
        .where(LedgerEntry.user_id == user_id, LedgerEntry.created_at < window_start)
        .order_by(LedgerEntry.created_at.desc(), LedgerEntry.id.desc())
        .limit(1)
    )
    series = []
    balance = opening or 0
    for offset in range(days):
        current = first_day + timedelta(days=offset)
        balance = closing.get(current, balance)
        series.append((current, balance))
    return series


def _as_date(value) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


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
