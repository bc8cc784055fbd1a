"""The benchmark in miniature, so that its code cannot rot: a tiny data set, real gunicorn
servers, one second per endpoint with the Python load client (no wrk), no targets.

Runs on the test database (SQLite, or PostgreSQL with TEST_DATABASE_URL) like the rest of
the suite; the numbers it measures mean nothing, only that every step still works.
"""

import json

import pytest
from sqlalchemy import func, select, text

from portal.db import db
from portal.jobs.services import charge_job
from portal.ledger.models import LedgerEntry
from portal.ledger.services import check_books
from tests.bench import ceilings, dataset, report, run_bench, servers

TINY = dataset.DatasetParams.tiny()
SMOKE_LOAD = (
    run_bench.FLOOR_NAME,
    "dashboard",
    "history",
    "staff queue",
    "request detail",
    "history.csv",
    "POST /api/v1/jobs",
    "POST /api/v1/jobs:batch",
    "POST /webhooks/stripe",
)


def quiet(message: str) -> None:
    pass


def test_the_generated_data_set_keeps_the_books(app):
    info = dataset.build_dataset(TINY, quiet)

    assert check_books() == []
    assert info.heavy_entries == TINY.heavy_entries
    assert info.counts["refund_requests"] == TINY.refund_requests
    assert info.counts["incidents"] == TINY.incidents
    heavy_jobs = db.session.scalar(
        text("SELECT COUNT(*) FROM jobs WHERE user_id = :u"), {"u": info.heavy_user_id}
    )
    assert heavy_jobs == TINY.heavy_jobs
    spends_without_lots = db.session.scalar(
        text(
            "SELECT COUNT(*) FROM ledger_entries e WHERE e.credits < 0 AND NOT EXISTS "
            "(SELECT 1 FROM lot_allocations a WHERE a.ledger_entry_id = e.id)"
        )
    )
    assert spends_without_lots == 0
    one_hash = db.session.scalar(text("SELECT COUNT(DISTINCT password_hash) FROM users"))
    assert one_hash == 1
    precheck = db.session.scalar(text("SELECT precheck FROM refund_requests LIMIT 1"))
    document = precheck if isinstance(precheck, dict) else json.loads(precheck)
    assert {"verdict", "rules", "recommended_cents", "actions", "summary"} <= set(document)


def test_a_run_s_additions_are_removed_on_reuse(app):
    try:
        info, reused = dataset.ensure_dataset(TINY, quiet, migrate=False)
        assert not reused
        balance_before = db.session.scalar(
            text("SELECT credits_balance FROM users WHERE email = :e"), {"e": info.small_email}
        )
        charge_job("smoke-1", info.small_email, "upscale", 1)

        info_again, reused = dataset.ensure_dataset(TINY, quiet, migrate=False)

        assert reused and info_again.fingerprint == info.fingerprint
        db.session.expire_all()
        assert (
            db.session.scalar(select(func.count()).select_from(LedgerEntry))
            == (info.baseline["ledger_entries"])
        )
        balance_after = db.session.scalar(
            text("SELECT credits_balance FROM users WHERE email = :e"), {"e": info.small_email}
        )
        assert balance_after == balance_before
        assert check_books() == []
    finally:
        dataset.drop_marker()


@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_the_whole_benchmark_runs_in_miniature(app, database_url, tmp_path):
    info = dataset.build_dataset(TINY, quiet)
    config = run_bench.BenchConfig(
        database_url=database_url,
        params=TINY,
        duration=1.0,
        warmup=0.0,
        connections=4,
        tool="python",
        gunicorn=servers.GunicornSettings(workers=1, threads=2),
        csv_runs=1,
        webhook_rate_guess=15.0,
        json_path=tmp_path / "bench-results.json",
        markdown_path=tmp_path / "bench-results.md",
        artifacts=tmp_path / "artifacts",
        targets=False,
        settle=0.2,
        ceiling_runs=1,
        extra_logins=0,
        # Every page is still requested (it must answer 200) and SQL-counted; these are
        # the ones also put under load, to keep the test short.
        only=SMOKE_LOAD,
    )

    results = run_bench.run_benchmark(config, prepared=(app, info))

    written = json.loads(config.json_path.read_text())
    assert written["ceiling"]["rps"] > 0
    pages = [row for row in written["endpoints"].values() if row["kind"] == "page"]
    assert {row["name"] for row in pages} == {
        "dashboard",
        "history",
        "staff queue",
        "request detail",
    }
    for row in pages:
        assert row["requests"] > 0 and row["errors"] == 0, row
    (floor,) = [row for row in written["endpoints"].values() if row["kind"] == "floor"]
    assert floor["requests"] > 0 and floor["errors"] == 0, floor
    writes = [row for row in written["endpoints"].values() if row["kind"] not in ("page", "floor")]
    assert {row["kind"] for row in writes} == {"jobs_api", "jobs_batch", "webhook"}
    assert written["endpoints"]["POST /api/v1/jobs:batch"]["charged_per_s"] > 0
    for row in writes:
        assert row["requests"] > 0, row
    assert written["endpoints"]["POST /webhooks/stripe"]["fulfilled"] > 0
    assert written["csv_export"]["rows"] == written["csv_export"]["expected_rows"] > 0
    assert all(value > 0 for value in written["memory"]["idle_rss_mb"].values())
    assert len(written["sql"]) == 9  # every page, loaded or not
    assert all(row["max"] > 0 for row in written["sql"].values())
    assert "| dashboard |" in config.markdown_path.read_text()
    if database_url.startswith("postgresql"):
        # pgbench against a scratch copy of the tiny data set, dropped afterwards.
        found = written["ceilings"]
        assert set(found["rows"]) == set(ceilings.NAMES)
        for row in found["rows"].values():
            assert row["tps"] > 0 and row["failed"] == 0, row
        assert found["statements"] == 1  # as tests/jobs count them on PostgreSQL
        assert "pgbench: one round trip" in config.markdown_path.read_text()
    else:
        assert "ceilings" not in written
        assert any("need PostgreSQL" in note for note in written["notes"])
    # The targets are not the point here, but their evaluation must still work.
    checks = report.evaluate(results)
    assert checks and all({"name", "target", "value", "passed"} <= set(c) for c in checks)
    db.session.expire_all()
    assert check_books() == []
