"""Targets, the Markdown table and bench-results.json."""

from __future__ import annotations

import json
from pathlib import Path

PAGE_P95_MS = 50.0
PAGE_SHARE = 0.25
JOBS_SHARE = 0.40
# Issue 20: a batch of 100 charges at least this many jobs a second.
BATCH_JOBS_PER_S = 2_000
WEBHOOK_SHARE = 0.20
SQL_MAX = 8
CSV_FIRST_BYTE_MS = 200.0
CSV_ROWS_PER_S = 50_000
CSV_GROWTH_MB = 50.0
IDLE_RSS_MB = 100.0


def _check(name: str, target: str, value: str, passed: bool) -> dict:
    return {"name": name, "target": target, "value": value, "passed": bool(passed)}


def evaluate(results: dict) -> list[dict]:
    """Every target of the benchmark, PASS or FAIL, from a results document."""
    checks = []
    ceiling = results["ceiling"]["rps"]
    for name, row in results["endpoints"].items():
        kind = row["kind"]
        share = row["rps"] / ceiling if ceiling else 0.0
        errors = row["errors"]
        if kind == "page":
            checks.append(
                _check(
                    f"{name}: p95",
                    f"< {PAGE_P95_MS:.0f} ms at {row['connections']} connections",
                    f"{row['p95_ms']:.1f} ms",
                    row["p95_ms"] < PAGE_P95_MS and errors == 0,
                )
            )
            checks.append(
                _check(
                    f"{name}: throughput",
                    f">= {PAGE_SHARE:.0%} of hello world",
                    f"{row['rps']:.0f} req/s = {share:.1%}",
                    share >= PAGE_SHARE and errors == 0,
                )
            )
        elif kind == "jobs_api":
            checks.append(
                _check(
                    f"{name}: throughput",
                    f">= {JOBS_SHARE:.0%} of hello world",
                    f"{row['rps']:.0f} spends/s = {share:.1%}",
                    share >= JOBS_SHARE and errors == 0,
                )
            )
        elif kind == "jobs_batch":
            rate = row.get("charged_per_s", 0.0)
            checks.append(
                _check(
                    f"{name}: jobs charged",
                    f">= {BATCH_JOBS_PER_S:,} jobs/s",
                    f"{rate:,.0f} jobs/s ({row['rps']:.1f} batches/s)",
                    rate >= BATCH_JOBS_PER_S and errors == 0,
                )
            )
        elif kind == "webhook":
            rate = row.get("fulfilled_per_s", row["rps"])
            fulfilled_share = rate / ceiling if ceiling else 0.0
            checks.append(
                _check(
                    f"{name}: fulfilments",
                    f">= {WEBHOOK_SHARE:.0%} of hello world",
                    f"{rate:.0f} fulfilments/s = {fulfilled_share:.1%}",
                    fulfilled_share >= WEBHOOK_SHARE
                    and errors == 0
                    and not row["statuses"].get("exhausted"),
                )
            )
        if errors:
            checks.append(_check(f"{name}: errors", "0", str(errors), False))

    csv = results.get("csv_export")
    if csv:
        complete = csv["rows"] == csv["expected_rows"] and csv["status"] == 200
        checks.append(
            _check(
                "history.csv: first byte",
                f"< {CSV_FIRST_BYTE_MS:.0f} ms",
                f"{csv['first_byte_ms']:.0f} ms",
                csv["first_byte_ms"] < CSV_FIRST_BYTE_MS and complete,
            )
        )
        checks.append(
            _check(
                "history.csv: rows/s",
                f">= {CSV_ROWS_PER_S:,}",
                f"{csv['rows_per_s']:,.0f} ({csv['rows']:,} rows in {csv['total_s']:.2f} s)",
                csv["rows_per_s"] >= CSV_ROWS_PER_S and complete,
            )
        )
        checks.append(
            _check(
                "history.csv: worker memory growth",
                f"< {CSV_GROWTH_MB:.0f} MB",
                f"{csv['worker_growth_mb']:.1f} MB",
                csv["worker_growth_mb"] < CSV_GROWTH_MB,
            )
        )
    memory = results.get("memory")
    if memory:
        worst = max(memory["idle_rss_mb"].values(), default=0.0)
        checks.append(
            _check(
                "idle worker memory",
                f"< {IDLE_RSS_MB:.0f} MB RSS",
                f"{worst:.1f} MB",
                worst < IDLE_RSS_MB,
            )
        )
    for name, row in results.get("sql", {}).items():
        counts = ", ".join(f"{label} {count}" for label, count in row["counts"].items())
        checks.append(
            _check(
                f"{name}: SQL statements",
                f"constant, <= {SQL_MAX}",
                counts,
                row["constant"] and row["max"] <= SQL_MAX,
            )
        )
    return checks


def _errors(row: dict) -> str:
    """The error count, with the unexpected statuses behind it."""
    if not row["errors"]:
        return "0"
    unexpected = {
        status: count
        for status, count in row["statuses"].items()
        if status not in {str(code) for code in row.get("expect", ())}
    }
    details = ", ".join(f"{count}× {status}" for status, count in unexpected.items())
    sockets = ", ".join(f"{count}× {kind}" for kind, count in row["socket_errors"].items())
    return f"{row['errors']} ({'; '.join(part for part in (details, sockets) if part)})"


def _cpu(row: dict) -> str:
    if "app_cpu_ms_per_req" not in row:
        return "–"
    text = f"{row['app_cpu_ms_per_req']:.2f} + {row['db_cpu_ms_per_req']:.2f}"
    if "stripe_cpu_ms_per_req" in row:
        text += f" (+ {row['stripe_cpu_ms_per_req']:.2f} Stripe stand-in)"
    return text


def markdown(results: dict) -> str:
    """The results as Markdown: one table of endpoints, then every target."""
    ceiling = results["ceiling"]
    meta = results["meta"]
    lines = [
        "# Benchmark results",
        "",
        f"{meta['started']} · {meta['cpus']} CPUs · load average {meta['load_before']:.2f} "
        f"before, {meta['load_after']:.2f} after · {meta['gunicorn']} · load by "
        f"{meta['tool']}, {meta['connections']} connections, {meta['duration_s']:g} s per "
        f"endpoint after {meta['warmup_s']:g} s warm-up · data set: "
        f"{meta['dataset_summary']}",
        "",
        "| endpoint | req/s | p50 ms | p95 ms | p99 ms | errors | vs hello | SQL/req "
        "| CPU ms/req app + db |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| hello world (ceiling) | {ceiling['rps']:.0f} | {ceiling['p50_ms']:.1f} | "
        f"{ceiling['p95_ms']:.1f} | {ceiling['p99_ms']:.1f} | {ceiling['errors']} | 100% | – "
        f"| {_cpu(ceiling['runs'][0]) if ceiling.get('runs') else '–'} |",
    ]
    sql = results.get("sql", {})
    for name, row in results["endpoints"].items():
        share = row["rps"] / ceiling["rps"] if ceiling["rps"] else 0.0
        statements = sql.get(row.get("sql_page", name))
        count = (
            "–"
            if statements is None
            else "/".join(str(value) for value in statements["counts"].values())
        )
        rps = f"{row['rps']:.0f}"
        if "fulfilled_per_s" in row:
            rps += f" ({row['fulfilled_per_s']:.0f} fulfilled/s)"
        if row["kind"] == "jobs_batch" and "charged_per_s" in row:
            rps += f" ({row['charged_per_s']:,.0f} jobs/s)"
        lines.append(
            f"| {name} | {rps} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | "
            f"{row['p99_ms']:.1f} | {_errors(row)} | {share:.1%} | {count} | {_cpu(row)} |"
        )
    csv = results.get("csv_export")
    if csv:
        lines += [
            "",
            f"history.csv (heavy customer, {csv['runs']} runs, median): first byte "
            f"{csv['first_byte_ms']:.0f} ms, {csv['rows']:,} rows in {csv['total_s']:.2f} s = "
            f"{csv['rows_per_s']:,.0f} rows/s, {csv['bytes'] / 1e6:.1f} MB; serving worker "
            f"RSS {csv['worker_rss_before_mb']:.1f} → peak {csv['worker_peak_mb']:.1f} MB "
            f"(growth {csv['worker_growth_mb']:.1f} MB, VmHWM {csv['worker_hwm_mb']:.1f} MB).",
        ]
    memory = results.get("memory")
    if memory:
        idle = ", ".join(f"{value:.1f}" for value in memory["idle_rss_mb"].values())
        end = ", ".join(f"{value:.1f}" for value in memory.get("end_rss_mb", {}).values())
        hello = ", ".join(f"{value:.1f}" for value in memory.get("hello_rss_mb", {}).values())
        lines += [
            "",
            f"Portal worker RSS idle after warm-up: {idle} MB; after the run: {end} MB "
            f"(hello-world workers: {hello} MB).",
        ]
    if sql:
        lines += ["", "SQL statements per request (variants: data size, page size):", ""]
        for name, row in sql.items():
            counts = ", ".join(f"{label}: {count}" for label, count in row["counts"].items())
            lines.append(f"- {name}: {counts}")
    lines += ["", "| target | goal | measured | result |", "| --- | --- | --- | --- |"]
    for check in results.get("targets", []):
        verdict = "PASS" if check["passed"] else "**FAIL**"
        lines.append(f"| {check['name']} | {check['target']} | {check['value']} | {verdict} |")
    notes = results.get("notes") or []
    if notes:
        lines += ["", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


def write(results: dict, json_path: Path, markdown_path: Path | None) -> str:
    text = markdown(results)
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if markdown_path is not None:
        markdown_path.write_text(text)
    return text
