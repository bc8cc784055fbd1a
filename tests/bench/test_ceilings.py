"""The benchmark's ceilings: the captured spend turned into a pgbench script, and the
one-round-trip spend keeping the books as the portal's own does."""

from datetime import UTC, date, datetime

import pytest
from sqlalchemy import text

from portal.db import db
from portal.ledger.services import check_books
from tests.bench import ceilings
from tests.bench.ceilings import Statement
from tests.factories import make_purchase, make_user

TOKEN = "ceiling-test-token"


def test_literals_hide_colons_from_pgbench():
    assert ceilings.literal("job:12:charge") == r"E'job\x3a12\x3acharge'"
    assert ceilings.literal("it's a \\ path") == r"E'it\'s a \\ path'"
    assert ceilings.literal(datetime(2026, 12, 7, 9, 5, tzinfo=UTC)) == (
        r"E'2026-12-07T09\x3a05\x3a00+00\x3a00'::timestamptz"
    )
    assert ceilings.literal(date(2026, 12, 7)) == "E'2026-12-07'::date"
    assert ceilings.literal(None) == "NULL"
    assert ceilings.literal(True) == "true"
    assert ceilings.literal(-3) == "-3"
    with pytest.raises(TypeError, match="no SQL literal for dict"):
        ceilings.literal({"a": 1})


def test_a_captured_spend_becomes_a_new_spend_on_every_run():
    transaction = [
        "BEGIN",
        Statement(
            "SELECT * FROM jobs WHERE external_id = %(external_id_1)s", {"external_id_1": "ext-1"}
        ),
        Statement(
            "INSERT INTO jobs (user_id, external_id) VALUES (%(user_id)s, %(external_id)s) "
            "RETURNING jobs.id",
            {"user_id": 7, "external_id": "ext-1"},
            returned={"id": 7001},
        ),
        Statement(
            "INSERT INTO ledger_entries (user_id, job_id, idempotency_key) VALUES "
            "(%(user_id)s, %(job_id)s, %(idempotency_key)s) RETURNING ledger_entries.id",
            {"user_id": 7, "job_id": 7001, "idempotency_key": "job:7001:charge"},
            returned={"id": 55},
        ),
        Statement(
            "INSERT INTO lot_allocations (ledger_entry_id, lot_id, credits) VALUES "
            "(%(ledger_entry_id)s, %(lot_id)s, %(credits)s)",
            {"ledger_entry_id": 55, "lot_id": 55, "credits": -1},
        ),
        Statement("SELECT 1 WHERE 'a' LIKE 'a%%'", {}),
        "COMMIT",
    ]

    script = ceilings.render_script(transaction, "ext-1").splitlines()

    assert script[0] == ceilings.RANDOM_ID
    assert script[1] == "BEGIN;"
    assert script[2] == "SELECT * FROM jobs WHERE external_id = ('pgb-' || CAST(:r AS text));"
    assert script[3] == (
        "INSERT INTO jobs (user_id, external_id) VALUES (7, ('pgb-' || CAST(:r AS text))) "
        r"RETURNING jobs.id \gset jobs_"
    )
    # The job's id comes from this run's insert, in the column and inside the key; the
    # user id is replayed as captured.
    assert script[4] == (
        "INSERT INTO ledger_entries (user_id, job_id, idempotency_key) VALUES "
        r"(7, :jobs_id, (E'job\x3a' || :jobs_id || E'\x3acharge')) "
        r"RETURNING ledger_entries.id \gset ledger_entries_"
    )
    # The entry's id is this run's; a lot that happens to share the number is not.
    assert script[5] == (
        "INSERT INTO lot_allocations (ledger_entry_id, lot_id, credits) VALUES "
        "(:ledger_entries_id, 55, -1);"
    )
    assert script[6] == "SELECT 1 WHERE 'a' LIKE 'a%';"
    assert script[7] == "COMMIT;"


@pytest.mark.postgres
def test_the_captured_spend_is_the_jobs_api_s_own_transaction(app, monkeypatch):
    monkeypatch.setitem(app.config, "PORTAL_SERVICE_TOKEN", TOKEN)
    user = make_user(email="ceiling@example.com")
    make_purchase(user, package="starter")
    db.session.commit()

    transaction = ceilings.capture_spend(app, user.email, "ceiling-1", TOKEN)

    assert transaction[0] == "BEGIN" and transaction[-1] == "COMMIT"
    statements = [item for item in transaction if isinstance(item, Statement)]
    # The count tests/jobs hold the spend to on PostgreSQL: one call of charge_job.
    assert len(statements) == 1
    assert "FROM charge_job(" in statements[0].sql
    script = ceilings.render_script(transaction, "ceiling-1")
    assert "ceiling-1" not in script
    assert "('pgb-' || CAST(:r AS text))" in script


@pytest.mark.postgres
def test_the_one_round_trip_spend_keeps_the_books():
    user = make_user(email="round-trip@example.com")
    make_purchase(user, package="starter")  # 50 credits
    db.session.commit()
    raw = db.engine.raw_connection()
    try:
        raw.cursor().execute(ceilings.FUNCTION_SQL.read_text())
        raw.commit()
        spend = text("SELECT * FROM bench_spend(:email, :external_id, 'upscale', :credits)")
        first = db.session.execute(
            spend, {"email": user.email, "external_id": "rt-1", "credits": 30}
        ).one()
        again = db.session.execute(
            spend, {"email": user.email, "external_id": "rt-1", "credits": 30}
        ).one()
        db.session.commit()

        assert first.balance_after == 20
        assert again.job_id == first.job_id  # the same external id charges once
        assert check_books() == []
        with pytest.raises(Exception, match="insufficient credits"):
            db.session.execute(spend, {"email": user.email, "external_id": "rt-2", "credits": 21})
        db.session.rollback()
    finally:
        raw.cursor().execute("DROP FUNCTION IF EXISTS bench_spend(text, text, text, integer)")
        raw.commit()
        raw.close()
