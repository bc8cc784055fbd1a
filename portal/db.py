"""The database: `db`, the declarative base, constraint naming, the column types every
model shares, and row locks."""

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import ParamSpec, TypeVar

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import DateTime, Enum, MetaData, Select, TypeDecorator, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase
from werkzeug.routing import IntegerConverter

# Stable constraint names keep Alembic migrations identical on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


db = SQLAlchemy(model_class=Base)


class UTCDateTime(TypeDecorator):
    """A timestamp stored in UTC and always returned timezone-aware.

    SQLite keeps no offset, so values are normalised to UTC on the way in and tagged
    as UTC on the way out; naive datetimes are refused rather than guessed at.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def enum_type(enum_class: type[StrEnum]) -> Enum:
    """Store a StrEnum by value in a VARCHAR guarded by a CHECK constraint."""
    return Enum(
        enum_class,
        name=enum_class.__name__.lower(),
        native_enum=False,
        create_constraint=True,
        length=max(len(member.value) for member in enum_class),
        values_callable=lambda members: [member.value for member in members],
        validate_strings=True,
    )


# Primary keys are 32-bit integers on PostgreSQL; a larger id in a URL can match nothing.
MAX_ID = 2**31 - 1


def parse_id(value: str | None) -> int | None:
    """Read a row id from untrusted text: a positive 32-bit integer, or None."""
    if value is None or not value.isascii() or not value.isdigit():
        return None
    number = int(value)
    return number if 0 < number <= MAX_ID else None


class IdConverter(IntegerConverter):
    """URL converter for row ids: `<id:job_id>` matches 1 to MAX_ID, anything else is 404."""

    def __init__(self, url_map):
        super().__init__(url_map, min=1, max=MAX_ID)


P = ParamSpec("P")
R = TypeVar("R")


def roll_back() -> None:
    """Undo the session's work after a failure, even one that took the connection with it.

    A connection the database has dropped (restart, failover, a killed backend) can fail
    its own ROLLBACK. There is nothing left to undo on it then: the session is closed and
    the connection thrown away, so that the original error, not this one, is what the
    caller sees and the next request starts on a fresh connection.
    """
    try:
        db.session.rollback()
    except DBAPIError:
        db.session().invalidate()


def transactional(service: Callable[P, R]) -> Callable[P, R]:
    """Make `service` one transaction: commit when it returns, roll back when it raises.

    Services lock, check, then act; a refusal raised anywhere in between leaves nothing
    behind (and, on SQLite, gives the write lock back at once). A transactional service
    may call another: the inner commit then ends the outer one's work too, so services
    that must stay atomic call plain helpers, not other transactional services.
    """

    @functools.wraps(service)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            result = service(*args, **kwargs)
        except BaseException:
            roll_back()
            raise
        db.session.commit()
        return result

    return run


def locked(model, *criteria, skip_locked: bool = False):
    """The row of `model` matching `criteria`, locked FOR UPDATE until the transaction
    ends, or None. Read afresh from the database even if the session holds the object,
    so that what the caller decides on is what the lock protects.
    """
    return db.session.scalar(
        select(model)
        .where(*criteria)
        .with_for_update(skip_locked=skip_locked)
        .execution_options(populate_existing=True)
    )


@event.listens_for(Engine, "do_connect")
def _postgresql_sessions_run_in_utc(dialect, _record, _args, parameters):
    """Open every PostgreSQL session in UTC, whatever the server's default time zone.

    The portal stores and compares UTC. psycopg hands timestamps back in the session's
    zone, and `UTCDateTime` converts each to Python's own UTC: from a zone such as the
    usual `Etc/UTC` that took 0.55 µs a value (measured), on every timestamp of every row
    read, about 5 % of a CSV export. In a UTC session they arrive in Python's UTC already,
    and the conversion is almost free.
    """
    if dialect.name == "postgresql":
        parameters["options"] = f"{parameters.get('options', '')} -c TimeZone=UTC".lstrip()


@event.listens_for(Engine, "before_execute")
def _sqlite_row_lock_takes_the_write_lock(connection, statement, *_args):
    """Give `SELECT … FOR UPDATE` its meaning on SQLite, which has no row locks.

    SQLite drops FOR UPDATE, so two transactions could both read a row, both decide on
    it and both write: two approvals of one request, two claims of one refund. Here the
    first locking read of a transaction starts it with `BEGIN IMMEDIATE`, which takes the
    database's write lock until commit or rollback. Lock-then-check services are thus
    serialised on SQLite as they are on PostgreSQL (where only the row is locked), while
    plain reads (pages) still run side by side. A transaction that has already written
    holds the write lock since that write, so nothing needs doing then.
    """
    if connection.dialect.name != "sqlite" or not isinstance(statement, Select):
        return
    if statement._for_update_arg is None:
        return
    driver_connection = connection.connection.driver_connection
    if not driver_connection.in_transaction:
        driver_connection.execute("BEGIN IMMEDIATE")


# -- how a request's transaction ends ---------------------------------------------------

# Set on a pooled connection by any statement but a SELECT, until its transaction ends.
_WROTE = "portal_wrote"


@event.listens_for(Engine, "before_cursor_execute")
def _note_writes(connection, _cursor, statement, _parameters, context, _executemany):
    # A SELECT only reads, unless it calls a database function that writes: such a
    # statement says so with the execution option `writes=True`.
    if statement.lstrip()[:6].upper() != "SELECT" or (
        context is not None and context.execution_options.get("writes")
    ):
        connection.info[_WROTE] = True


@event.listens_for(Engine, "commit")
@event.listens_for(Engine, "rollback")
def _forget_writes(connection):
    # A connection already invalidated (the database dropped it) is thrown away with
    # what it knew; asking it for its info would try to reconnect.
    if not connection.invalidated:
        connection.info.pop(_WROTE, None)


def end_read_only_transaction(error: BaseException | None = None) -> None:
    """End a request's leftover transaction with COMMIT when it only read.

    Services commit their own writes; what is left open at the end of a request is
    reads (the log-in check, a page's queries), and Flask-SQLAlchemy would end it with
    ROLLBACK. To the data the two are the same, but psycopg forgets a connection's
    prepared statements at every ROLLBACK, so PostgreSQL would plan every statement of
    every request afresh. A transaction that wrote anything, or a request that failed,
    is left to be rolled back as before.
    """
    session = db.session()
    if error is not None or not session.in_transaction():
        return
    if session.new or session.dirty or session.deleted:
        return  # COMMIT would flush these: changes nobody asked to keep
    try:
        if not session.connection().info.get(_WROTE):
            session.commit()
    except SQLAlchemyError:
        # The connection went away meanwhile: nothing was written to keep.
        roll_back()
