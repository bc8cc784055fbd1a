"""Keyset pagination: pages are found by the last id seen, never by OFFSET.

Every list is ordered newest first by id. `before` asks for the page of rows older than
an id; `after` for the page of rows newer than it (the "previous" page). Each page costs
one query whatever its number, because the database seeks straight to the cursor through
the (owner, id) index.
"""

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select

from portal.db import db, parse_id

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


@dataclass(frozen=True)
class Page:
    rows: list[Any]
    older_cursor: int | None
    newer_cursor: int | None


@dataclass(frozen=True)
class PageRequest:
    size: int
    before: int | None
    after: int | None


def page_request(args) -> PageRequest:
    """Read `per_page`, `before` and `after` from a query string, ignoring nonsense."""
    requested = parse_id(args.get("per_page"))
    size = DEFAULT_PAGE_SIZE if requested is None else min(requested, MAX_PAGE_SIZE)
    return PageRequest(size, parse_id(args.get("before")), parse_id(args.get("after")))


def keyset_page(
    query: Select,
    id_column,
    size: int,
    before: int | None = None,
    after: int | None = None,
    row_id=lambda row: row.id,
) -> Page:
    """Run `query` for one page, fetching one extra row to learn whether more exist."""
    if after is not None:
        rows = db.session.execute(
            query.where(id_column > after).order_by(id_column.asc()).limit(size + 1)
        ).all()
        has_newer = len(rows) > size
        rows = list(reversed(rows[:size]))
        has_older = True
    else:
        if before is not None:
            query = query.where(id_column < before)
        rows = db.session.execute(query.order_by(id_column.desc()).limit(size + 1)).all()
        has_older = len(rows) > size
        rows = rows[:size]
        has_newer = before is not None
    if not rows:
        return Page([], None, None)
    return Page(
        rows=rows,
        older_cursor=row_id(rows[-1]) if has_older else None,
        newer_cursor=row_id(rows[0]) if has_newer else None,
    )
