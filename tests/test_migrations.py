"""The migrations build the schema the models describe, with one head."""

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from portal.db import db

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def test_migrations_have_a_single_head():
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert len(ScriptDirectory.from_config(config).get_heads()) == 1


def test_models_and_migrations_agree(app):
    # The test database was built by `flask db upgrade` (see conftest); autogenerate
    # against it must find nothing left to migrate.
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, db.metadata)
    assert differences == []


def test_enum_check_constraints_allow_every_member(app):
    # Autogenerate cannot see CHECK constraints, so a new enum member needs a hand-written
    # migration; this catches one that was forgotten.
    from sqlalchemy import Enum, inspect

    inspector = inspect(db.engine)
    missing = []
    for table in db.metadata.sorted_tables:
        checks = {c["name"]: c["sqltext"] for c in inspector.get_check_constraints(table.name)}
        for column in table.columns:
            if isinstance(column.type, Enum):
                sql = checks.get(f"ck_{table.name}_{column.type.name}", "")
                missing += [
                    f"{table.name}.{column.name}={value}"
                    for value in column.type.enums
                    if f"'{value}'" not in sql
                ]
    assert missing == []


def test_disputes_known_only_by_their_holds_become_rows(make_app, tmp_path):
    """The disputes migration turns each dispute hold made before it into a dispute row:
    open, or won where its credits were already released."""
    from flask_migrate import upgrade
    from sqlalchemy import text

    older = make_app(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'old.db'}")
    with older.app_context():
        upgrade(directory=str(MIGRATIONS), revision="c4d2e8f1a7b3")
        with db.engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO users (id, email, password_hash, role, status, "
                    "credits_balance, created_at, session_generation) VALUES "
                    "(1, 'a@example.com', 'x', 'customer', 'active', 0, "
                    "'2026-11-01 00:00:00', 0)"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO purchases (id, user_id, package_code, credits, amount_cents, "
                    "currency, status, refunded_cents, committed_refund_cents, created_at) "
                    "VALUES (1, 1, 'pro', 300, 2000, 'usd', 'disputed', 500, 0, "
                    "'2026-11-01 00:00:00'), (2, 1, 'pro', 300, 2000, 'usd', 'credited', 0, 0, "
                    "'2026-11-01 00:00:00')"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO ledger_entries (id, user_id, kind, credits, balance_after, "
                    "purchase_id, idempotency_key, memo, created_at) VALUES "
                    "(1, 1, 'dispute_hold', -10, 0, 1, 'dispute:dp_open:hold', '', "
                    "'2026-11-02 00:00:00'), "
                    "(2, 1, 'dispute_hold', -10, 0, 2, 'dispute:dp_won:hold', '', "
                    "'2026-11-02 00:00:00'), "
                    "(3, 1, 'dispute_release', 10, 0, 2, 'dispute:dp_won:release', '', "
                    "'2026-11-03 00:00:00')"
                )
            )
        upgrade(directory=str(MIGRATIONS))
        with db.engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT stripe_dispute_id, purchase_id, amount_cents, status, "
                    "closed_at IS NOT NULL FROM disputes ORDER BY id"
                )
            ).all()
    assert [tuple(row) for row in rows] == [
        ("dp_open", 1, 1500, "needs_response", 0),
        ("dp_won", 2, 2000, "won", 1),
    ]
