"""The migrations build the schema the models describe, with one head."""

import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from portal import schema
from portal.db import db

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = ROOT / "migrations"


def _old_customer(connection) -> None:
    """Customer 1, as a row of the schemas the data migrations start from."""
    from sqlalchemy import text

    connection.execute(
        text(
            "INSERT INTO users (id, email, password_hash, role, status, "
            "credits_balance, created_at, session_generation) VALUES "
            "(1, 'a@example.com', 'x', 'customer', 'active', 0, "
            "'2026-11-01 00:00:00', 0)"
        )
    )


def _old_purchase(connection) -> None:
    """Purchase 1, customer 1's credited Pro package, as a row of those schemas."""
    from sqlalchemy import text

    connection.execute(
        text(
            "INSERT INTO purchases (id, user_id, package_code, credits, amount_cents, "
            "currency, status, refunded_cents, committed_refund_cents, created_at) "
            "VALUES (1, 1, 'pro', 300, 2000, 'usd', 'credited', 0, 0, "
            "'2026-11-01 00:00:00')"
        )
    )


def test_migrations_have_a_single_head_and_the_readiness_check_knows_it():
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    heads = ScriptDirectory.from_config(config).get_heads()
    assert len(heads) == 1
    # /readyz reads the revisions without Alembic (see portal.schema): it must agree.
    assert schema.heads() == frozenset(heads)


def test_a_serving_app_does_not_load_alembic():
    # A fresh interpreter: this one has imported Alembic for the tests above.
    code = (
        "import sys; from portal import create_app; create_app(); "
        "print(sorted(m for m in ('alembic', 'flask_migrate', 'mako') if m in sys.modules))"
    )
    loaded = subprocess.run(  # noqa: S603  (our own arguments)
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.strip()
    assert loaded == "[]"


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
    from sqlalchemy import text

    older = make_app(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'old.db'}")
    with older.app_context():
        schema.upgrade("c4d2e8f1a7b3")
        with db.engine.begin() as connection:
            _old_customer(connection)
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
        schema.upgrade()
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


def test_screenshots_on_disk_move_into_the_database(make_app, tmp_path, caplog):
    """The stored-files migration copies each attachment's file from UPLOAD_FOLDER into
    the database, logs and skips a missing one, and cleans names sent before names were
    cleaned (the folder is left as it is)."""
    import logging

    from sqlalchemy import text

    png = b"\x89PNG\r\n\x1a\n" + b"\x01" * 40
    jpeg = b"\xff\xd8\xff\xe0" + b"\x02" * 40
    folder = tmp_path / "uploads"
    folder.mkdir()
    (folder / "aaa.png").write_bytes(png)
    (folder / "ccc.jpg").write_bytes(jpeg)
    older = make_app(
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'old.db'}", UPLOAD_FOLDER=str(folder)
    )
    with older.app_context():
        schema.upgrade("0cc72248f2b1")
        with db.engine.begin() as connection:
            _old_customer(connection)
            _old_purchase(connection)
            connection.execute(
                text(
                    "INSERT INTO refund_requests (id, user_id, purchase_id, reason, details, "
                    "transaction_ids, status, verdict, precheck, recommended_cents, "
                    "recommended_credits, due_at, created_at) VALUES (1, 1, 1, 'other', '', "
                    "'', 'open', 'needs_review', '{}', 0, 0, '2026-11-08 00:00:00', "
                    "'2026-11-01 00:00:00')"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO attachments (id, request_id, filename, content_type, "
                    "size_bytes, storage_key, created_at) VALUES "
                    "(1, 1, 'error.png', 'image/png', 48, 'aaa.png', '2026-11-01 00:00:00'), "
                    "(2, 1, 'lost.png', 'image/png', 48, 'bbb.png', '2026-11-01 00:00:00'), "
                    "(3, 1, :odd, 'image/jpeg', 44, 'ccc.jpg', '2026-11-01 00:00:00'), "
                    "(4, 1, :empty, 'image/jpeg', 44, 'ddd.jpg', '2026-11-01 00:00:00')"
                ),
                {"odd": "C:\\shots\\bad\x00\r\nname.jpg", "empty": "\x01\x02"},
            )
        with caplog.at_level(logging.WARNING, logger="portal.migrations"):
            schema.upgrade()
        with db.engine.connect() as connection:
            files = connection.execute(
                text("SELECT key, content_type, size_bytes, content FROM stored_files ORDER BY key")
            ).all()
            names = connection.execute(text("SELECT filename FROM attachments ORDER BY id")).all()
    assert [tuple(row) for row in files] == [
        ("aaa.png", "image/png", len(png), png),
        ("ccc.jpg", "image/jpeg", len(jpeg), jpeg),
    ]
    assert [name for (name,) in names] == [
        "error.png",
        "lost.png",
        "bad name.jpg",
        "screenshot.jpg",
    ]
    assert [record.getMessage() for record in caplog.records] == [
        f"attachment 2: no file {folder / 'bbb.png'}, skipped",
        f"attachment 4: no file {folder / 'ddd.jpg'}, skipped",
    ]
    assert sorted(path.name for path in folder.iterdir()) == ["aaa.png", "ccc.jpg"]


def test_the_no_longer_needed_reason_keeps_requests_and_their_one_open_request_index(
    make_app, tmp_path
):
    """The reason migration rebuilds refund_requests on SQLite: rows stay, the new reason
    is accepted, one open request per purchase still holds; going back makes such
    requests "other"."""
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    insert_request = text(
        "INSERT INTO refund_requests (id, user_id, purchase_id, reason, details, "
        "transaction_ids, status, verdict, precheck, recommended_cents, recommended_credits, "
        "due_at, created_at) VALUES (:id, 1, 1, :reason, '', '', :status, 'needs_review', "
        "'{}', 0, 0, '2026-11-08 00:00:00', '2026-11-01 00:00:00')"
    )

    older = make_app(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'old.db'}")
    with older.app_context():
        schema.upgrade("8b3d6f2a4c91")
        with db.engine.begin() as connection:
            _old_customer(connection)
            _old_purchase(connection)
            connection.execute(
                insert_request, {"id": 1, "reason": "charged_twice", "status": "denied"}
            )
            with pytest.raises(IntegrityError), connection.begin_nested():
                connection.execute(
                    insert_request, {"id": 2, "reason": "no_longer_needed", "status": "open"}
                )

        schema.upgrade()
        with db.engine.begin() as connection:
            connection.execute(
                insert_request, {"id": 2, "reason": "no_longer_needed", "status": "open"}
            )
            with pytest.raises(IntegrityError), connection.begin_nested():
                connection.execute(
                    insert_request, {"id": 3, "reason": "other", "status": "in_review"}
                )
            kept = connection.execute(
                text("SELECT id, reason, status FROM refund_requests ORDER BY id")
            ).all()
        assert [tuple(row) for row in kept] == [
            (1, "charged_twice", "denied"),
            (2, "no_longer_needed", "open"),
        ]

        schema.downgrade("8b3d6f2a4c91")
        with db.engine.connect() as connection:
            reasons = connection.execute(
                text("SELECT id, reason FROM refund_requests ORDER BY id")
            ).all()
    assert [tuple(row) for row in reasons] == [(1, "charged_twice"), (2, "other")]


def test_assignment_steps_name_the_staff_member_and_go_back(make_app, tmp_path):
    """Timeline steps written as "Assigned to staff member 2." name the member's e-mail
    after the upgrade, and read as before after the downgrade; other steps are untouched."""
    from sqlalchemy import text

    older = make_app(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'old.db'}")
    with older.app_context():
        schema.upgrade("53e16e92fea7")
        with db.engine.begin() as connection:
            _old_customer(connection)
            connection.execute(
                text(
                    "INSERT INTO users (id, email, password_hash, role, status, "
                    "credits_balance, created_at, session_generation) VALUES "
                    "(12, 'ana@studio.example', 'x', 'staff', 'active', 0, "
                    "'2026-11-01 00:00:00', 0)"
                )
            )
            _old_purchase(connection)
            connection.execute(
                text(
                    "INSERT INTO refund_requests (id, user_id, purchase_id, reason, details, "
                    "transaction_ids, status, verdict, precheck, recommended_cents, "
                    "recommended_credits, due_at, created_at) VALUES (1, 1, 1, 'other', '', "
                    "'', 'in_review', 'needs_review', '{}', 0, 0, '2026-11-08 00:00:00', "
                    "'2026-11-01 00:00:00')"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO refund_request_events (id, request_id, kind, actor_id, "
                    "visible_to_customer, body, created_at) VALUES "
                    "(1, 1, 'assigned', 12, 0, 'Assigned to staff member 12.', "
                    "'2026-11-02 00:00:00'), "
                    "(2, 1, 'assigned', 12, 0, 'Released back to the queue.', "
                    "'2026-11-02 00:00:00'), "
                    "(3, 1, 'note', 12, 0, 'Assigned to staff member 12.', "
                    "'2026-11-02 00:00:00')"
                )
            )

        def bodies():
            with db.engine.connect() as connection:
                return (
                    connection.execute(text("SELECT body FROM refund_request_events ORDER BY id"))
                    .scalars()
                    .all()
                )

        schema.upgrade("4a7c2e9d1f60")
        after = bodies()
        schema.downgrade("53e16e92fea7")
        back = bodies()
    assert after == [
        "Assigned to ana@studio.example.",
        "Released back to the queue.",
        "Assigned to staff member 12.",
    ]
    assert back == [
        "Assigned to staff member 12.",
        "Released back to the queue.",
        "Assigned to staff member 12.",
    ]


def test_every_foreign_key_has_an_index_leading_with_it(app):
    """Deleting or re-keying a referenced row checks the referencing table: without an
    index there, every such check is a full scan."""
    unindexed = []
    for table in db.metadata.sorted_tables:
        leading = {tuple(column.name for column in index.columns)[:1] for index in table.indexes}
        leading |= {
            tuple(column.name for column in constraint.columns)[:1]
            for constraint in table.constraints
            if hasattr(constraint, "columns") and not hasattr(constraint, "elements")
        }
        for key in table.foreign_key_constraints:
            if (key.column_keys[0],) not in leading:
                unindexed.append(f"{table.name}.{key.column_keys[0]}")
    assert unindexed == []
