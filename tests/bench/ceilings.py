"""What PostgreSQL itself can do for a spend, measured with pgbench in the bench's run.

Three ceilings for the jobs API, each over the same customers and the same data set:

* **captured, unprepared / prepared**: the portal's own spend transaction, replayed. It
  is captured from the code as it runs (a `POST /api/v1/jobs` through the test client,
  every statement recorded with its parameters and what its RETURNING gave), so the
  replay follows the code whenever the spend changes; nothing is copied by hand. Since
  the spend became one call of the portal's own `charge_job`, the transaction is BEGIN,
  that call and COMMIT.
* **one round trip**: the same business operation as one call of a PL/pgSQL function
  (`one_round_trip_spend.sql`), the best any client could do. It runs twice, right before
  the portal's jobs API and right after it, and the jobs API is held to their mean.

A spend of several statements is replayed with the captured values (a balance set to
what it was after the captured spend, not lowered), which would break the books; and any
replay spends the customers' credits. So ceilings run in a database of their own, built
by the data set's generator with the bench's parameters (the seed makes it the same
data) and dropped afterwards.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from sqlalchemy import bindparam, event, text
from sqlalchemy.engine import make_url

from tests.bench import dataset, loadgen

HERE = Path(__file__).resolve().parent
FUNCTION_SQL = HERE / "one_round_trip_spend.sql"
# pgbench picks one script per transaction; one per customer (it takes at most 128).
CUSTOMERS = 100
PLENTY = 10_000_000
# Each transaction's own number, for an external id no other one has.
RANDOM_ID = r"\set r random(1, 999999999999999)"
PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")
ONE_ROUND_TRIP = "one round trip"
# The same load again right after the portal's jobs API: this machine's speed was seen to
# drift by a third within one run, and the ratio's two sides should see the same machine.
ONE_ROUND_TRIP_AFTER = "one round trip, after the portal"
NAMES = ("captured, unprepared", "captured, prepared", ONE_ROUND_TRIP, ONE_ROUND_TRIP_AFTER)


def one_round_trip_tps(rows: dict) -> float | None:
    """The ceiling the jobs API is held to: the mean of the one-round-trip runs."""
    runs = [rows[name]["tps"] for name in (ONE_ROUND_TRIP, ONE_ROUND_TRIP_AFTER) if name in rows]
    return statistics.mean(runs) if runs else None


def pgbench_available() -> bool:
    return shutil.which("pgbench") is not None


def ceiling_database_url(database_url: str) -> str:
    url = make_url(database_url)
    return url.set(database=f"{url.database}_ceiling").render_as_string(hide_password=False)


def libpq_url(database_url: str) -> str:
    """The SQLAlchemy URL as pgbench takes it (plain postgresql://)."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


# -- the portal's spend, as it runs ---------------------------------------------------------


@dataclass
class Statement:
    """One statement the portal sent, with its parameters and, for an INSERT ...
    RETURNING of one row, what came back."""

    sql: str
    params: dict
    returned: dict | None = None


def capture_spend(app, email: str, external_id: str, token: str) -> list[Statement | str]:
    """Charge one job through the jobs API in-process; return its transaction, statement
    by statement, between "BEGIN" and "COMMIT"."""
    from portal.db import db

    recorded: list[Statement | str] = []

    def executed(conn, cursor, statement, parameters, context, executemany):
        if executemany:
            recorded.extend(Statement(statement, dict(each)) for each in parameters)
            return
        returned = None
        if cursor.description is not None and " RETURNING " in statement.upper():
            rows = cursor.fetchall()
            cursor.scroll(0, mode="absolute")  # the portal reads them as if untouched
            if len(rows) == 1:
                columns = (column.name for column in cursor.description)
                returned = dict(zip(columns, rows[0], strict=True))
        recorded.append(Statement(statement, dict(parameters or {}), returned))

    with app.app_context():
        engine = db.engine
        listeners = (
            ("begin", lambda conn: recorded.append("BEGIN")),
            ("commit", lambda conn: recorded.append("COMMIT")),
            ("rollback", lambda conn: recorded.append("ROLLBACK")),
            ("after_cursor_execute", executed),
        )
        for name, listener in listeners:
            event.listen(engine, name, listener)
        try:
            response = app.test_client().post(
                "/api/v1/jobs",
                json={
                    "external_id": external_id,
                    "customer_email": email,
                    "operation": "upscale",
                    "credits": 1,
                },
                headers={"Authorization": f"Bearer {token}"},
            )
        finally:
            for name, listener in listeners:
                event.remove(engine, name, listener)
    if response.status_code != 201:
        raise RuntimeError(f"the captured spend answered {response.status_code}: {response.json}")
    if recorded.count("COMMIT") != 1 or "ROLLBACK" in recorded:
        raise RuntimeError(f"a spend should be one committed transaction: {recorded}")
    start = max(i for i, item in enumerate(recorded) if item == "BEGIN")
    return recorded[start : recorded.index("COMMIT") + 1]


# -- as a pgbench script ----------------------------------------------------------------------


def _text(value: str) -> str:
    # pgbench reads ":name" as a variable anywhere in a command, quotes or not: colons in
    # values are written as escapes so that it leaves them alone.
    escaped = value.replace("\\", "\\\\").replace("'", "\\'").replace(":", "\\x3a")
    return f"E'{escaped}'"


def literal(value) -> str:
    """A parameter as SQL text; an unknown type fails the capture instead of guessing."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | Decimal):
        return str(value)
    if isinstance(value, datetime):
        return f"{_text(value.isoformat())}::timestamptz"
    if isinstance(value, date):
        return f"{_text(value.isoformat())}::date"
    if isinstance(value, str):
        return _text(value)
    raise TypeError(f"no SQL literal for {type(value).__name__}: {value!r}")


def _singular(table: str) -> str:
    return table[:-3] + "y" if table.endswith("ies") else table.removesuffix("s")


def _inserted_table(sql: str) -> str | None:
    match = re.match(r"\s*INSERT INTO (\w+)", sql)
    return match.group(1) if match else None


def render_script(transaction: list[Statement | str], external_id: str) -> str:
    """The captured transaction as a pgbench script in which each run is a new spend.

    What must differ between runs is written as pgbench variables: the external id (a
    random number per run), and every value an INSERT ... RETURNING gave that a later
    statement uses (the job's id in the entry and its idempotency key, the entry's id
    in the allocations), taken with \\gset. Everything else is replayed as captured.
    """
    lines = [RANDOM_ID]
    # value -> variable, for ids returned by the statements rendered so far
    returned: dict[int, tuple[str, str]] = {}

    def value_of(name: str, value) -> str:
        base = re.sub(r"_\d+$", "", name)
        if value == external_id:
            return "('pgb-' || CAST(:r AS text))"
        if isinstance(value, int) and not isinstance(value, bool) and value in returned:
            singular, variable = returned[value]
            if base in (f"{singular}_id", "id"):
                return f":{variable}"
        if isinstance(value, str):
            for number, (singular, variable) in returned.items():
                parts = re.split(rf"(?<!\d){number}(?!\d)", value)
                if len(parts) > 1 and singular in value:
                    return "(" + f" || :{variable} || ".join(_text(p) for p in parts) + ")"
        return literal(value)

    for item in transaction:
        if isinstance(item, str):
            lines.append(f"{item};")
            continue

        def substitute(match, item=item):
            if match.group(0) == "%%":
                return "%"
            return value_of(match.group(1), item.params[match.group(1)])

        sql = PLACEHOLDER.sub(substitute, item.sql.strip())
        table = _inserted_table(item.sql)
        if table and item.returned:
            lines.append(f"{sql} \\gset {table}_")
            for column, value in item.returned.items():
                if isinstance(value, int):
                    returned[value] = (_singular(table), f"{table}_{column}")
        else:
            lines.append(f"{sql};")
    return "\n".join(lines) + "\n"


def function_script(email: str) -> str:
    return f"{RANDOM_ID}\nSELECT * FROM bench_spend({_text(email)}, 'pgbf-' || :r, 'upscale', 1);\n"


# -- running pgbench --------------------------------------------------------------------------


@dataclass
class PgbenchResult:
    name: str
    tps: float
    p50_ms: float
    p95_ms: float
    transactions: int
    failed: int
    db_cpu_ms_per_tx: float
    others_cores: float
    load_average: float
    scripts: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _latencies_ms(prefix: Path) -> list[float]:
    """Per-transaction latencies from pgbench's --log files, one per thread; a line is
    `client transaction latency_us script epoch_s epoch_us`."""
    values = []
    for path in prefix.parent.glob(prefix.name + ".*"):
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[2].isdigit():
                values.append(int(fields[2]) / 1000)
    return values


def run_pgbench(
    name: str,
    url: str,
    scripts: list[Path],
    mode: str,
    duration: float,
    warmup: float,
    connections: int,
    threads: int,
    folder: Path,
) -> PgbenchResult:
    """One pgbench run over `scripts` (one chosen at random per transaction)."""
    base = ["pgbench", "-n", "-c", str(connections), "-j", str(threads), "-M", mode]
    for script in scripts:
        base += ["-f", str(script)]
    if warmup > 0:
        _pgbench(base + ["-T", str(max(1, round(warmup))), url], name)
    prefix = folder / ("log-" + re.sub(r"\W+", "-", name))
    load = loadgen.load_average()
    # pgbench's server processes end with its connections: read them as they run.
    with loadgen.CpuMeter({"db": loadgen.postgres_pids}, poll=0.1) as meter:
        output = _pgbench(
            base + ["-T", str(max(1, round(duration))), "--log", f"--log-prefix={prefix}", url],
            name,
        )
    tps = float(re.search(r"tps = ([\d.]+)", output).group(1))
    done = int(re.search(r"number of transactions actually processed: (\d+)", output).group(1))
    failed_match = re.search(r"number of failed transactions: (\d+)", output)
    latencies = _latencies_ms(prefix)
    for path in folder.glob(prefix.name + ".*"):
        path.unlink()
    return PgbenchResult(
        name=name,
        tps=round(tps, 1),
        p50_ms=round(statistics.median(latencies), 2) if latencies else 0.0,
        p95_ms=round(loadgen.percentile(latencies, 0.95), 2) if latencies else 0.0,
        transactions=done,
        failed=int(failed_match.group(1)) if failed_match else 0,
        db_cpu_ms_per_tx=round(meter.used["db"] / max(1, done) * 1000, 3),
        others_cores=meter.others_cores,
        load_average=load,
        scripts=len(scripts),
    )


def _pgbench(arguments: list[str], name: str) -> str:
    completed = subprocess.run(  # noqa: S603  (our own arguments)
        arguments, capture_output=True, text=True, timeout=600, check=False
    )
    output = completed.stdout + completed.stderr
    if completed.returncode != 0:
        errors = [line for line in output.splitlines() if "error" in line.lower()]
        raise RuntimeError(f"pgbench ({name}) failed:\n" + "\n".join(errors[:10]))
    return output


# -- one whole measurement ----------------------------------------------------------------------


@dataclass
class CeilingSettings:
    duration: float
    warmup: float
    connections: int
    threads: int


@dataclass
class Ceilings:
    """The scratch database with its pgbench scripts, ready to run any load again."""

    target: str
    loads: dict[str, tuple[list[Path], str]]  # name: (scripts, pgbench's -M mode)
    settings: CeilingSettings
    folder: Path
    statements: int
    script: str
    log: Callable[[str], None]

    def run(self, name: str, label: str | None = None) -> dict:
        scripts, mode = self.loads[name]
        label = label or name
        result = run_pgbench(
            label,
            self.target,
            scripts,
            mode,
            self.settings.duration,
            self.settings.warmup,
            self.settings.connections,
            self.settings.threads,
            self.folder,
        )
        self.log(
            f"  pgbench {label}: {result.tps:.0f} spends/s, p95 {result.p95_ms} ms, "
            f"PostgreSQL {result.db_cpu_ms_per_tx} ms CPU per spend"
        )
        return result.as_dict()


@contextlib.contextmanager
def scratch_ceilings(
    database_url: str,
    params: dataset.DatasetParams,
    make_app,
    token: str,
    settings: CeilingSettings,
    log,
) -> Iterator[Ceilings]:
    """Build the scratch database and capture the spend; yield the loads, ready to run;
    drop the database at the end."""
    from portal.db import db
    from portal.ledger import services as ledger

    url = ceiling_database_url(database_url)
    dataset.create_database_if_missing(url, log)
    folder = Path(tempfile.mkdtemp(prefix="ceilings-"))
    app = make_app(url, folder)
    try:
        with app.app_context():
            started = time.perf_counter()
            info, _ = dataset.ensure_dataset(params, lambda _: None, timedelta(0), rebuild=True)
            log(f"ceilings: scratch data set built in {time.perf_counter() - started:.0f} s")
            emails = (
                db.session.execute(
                    text(
                        "SELECT email FROM users WHERE role = 'customer' AND id <> :heavy "
                        "AND credits_balance >= 40 ORDER BY id LIMIT :n"
                    ),
                    {"heavy": info.heavy_user_id, "n": CUSTOMERS},
                )
                .scalars()
                .all()
            )
            # Enough credits that no run can use them up (the data set's customers hold
            # a few dozen each): a grant, as the ledger gives one, so the books hold.
            for user_id in db.session.execute(
                text("SELECT id FROM users WHERE email IN :emails").bindparams(
                    bindparam("emails", expanding=True)
                ),
                {"emails": emails},
            ).scalars():
                ledger.grant(user_id, PLENTY, f"bench-ceiling-{user_id}", "benchmark ceiling")
            # Oldest, so that spends draw on it first: the replay takes the credit from
            # the lot the captured spend took it from, run after run, and a small lot
            # would run dry.
            db.session.execute(
                text("UPDATE credit_lots SET created_at = '2000-01-01' WHERE credits_granted = :n"),
                {"n": PLENTY},
            )
            db.session.commit()
            # Through the driver itself: the function's text is not a template.
            raw = db.engine.raw_connection()
            try:
                raw.cursor().execute(FUNCTION_SQL.read_text())
                raw.commit()
            finally:
                raw.close()
        captured, function_scripts = [], []
        for number, email in enumerate(emails):
            external_id = f"captured-{number}"
            transaction = capture_spend(app, email, external_id, token)
            script = folder / f"captured-{number}.sql"
            script.write_text(render_script(transaction, external_id))
            if number == 0:
                statements = sum(isinstance(item, Statement) for item in transaction)
                example = script.read_text()
            captured.append(script)
            function = folder / f"function-{number}.sql"
            function.write_text(function_script(email))
            function_scripts.append(function)
        with app.app_context():
            db.engine.dispose()
        yield Ceilings(
            target=libpq_url(url),
            loads={
                ONE_ROUND_TRIP: (function_scripts, "prepared"),
                "captured, unprepared": (captured, "simple"),
                "captured, prepared": (captured, "prepared"),
            },
            settings=settings,
            folder=folder,
            statements=statements,
            script=example,
            log=log,
        )
    finally:
        with app.app_context():
            db.engine.dispose()
        drop_database(url)
        shutil.rmtree(folder, ignore_errors=True)


def drop_database(database_url: str) -> None:
    from sqlalchemy import create_engine

    url = make_url(database_url)
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with contextlib.closing(admin.connect()) as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
    admin.dispose()
