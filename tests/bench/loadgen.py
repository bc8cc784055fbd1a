"""Load on loopback, bounded in time and connections: wrk when installed, else Python.

Both drivers run closed-loop keep-alive connections for a fixed time and return the same
`LoadResult`: requests/s, latency percentiles, and every response whose status was not
the expected one counted as an error (a redirect to /login is an error, not a fast page).

Requests with a body that must differ each time (a job's external id, a webhook's
event) come from a `Body` description that both drivers understand:

* `JobsBody`: POST /api/v1/jobs with a fresh external id each time, customers taken in
  turn from a file of e-mails; with `batch` above 1, POST /api/v1/jobs:batch with that
  many such jobs in each request;
* `FileBodies`: one pre-built request per line of a file per load thread ("headers TAB
  body"), used for signed Stripe webhooks; a driver that runs out sends nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

LOCALHOST = "127.0.0.1"


@dataclass
class JobsBody:
    """POST /api/v1/jobs: one credit, a fresh external id per job; `batch` jobs per request
    (POST /api/v1/jobs:batch) when above 1."""

    token: str
    emails_file: str
    run_id: str
    batch: int = 1


@dataclass
class FileBodies:
    """Pre-built POSTs, one file per load thread: `prefix{n}.txt` for n = 1, 2, ..."""

    prefix: str
    threads: int
    path: str


@dataclass
class Target:
    """One endpoint under load."""

    name: str
    path: str
    headers: dict = field(default_factory=dict)
    expect: tuple[int, ...] = (200,)
    body: JobsBody | FileBodies | None = None


@dataclass
class LoadResult:
    name: str
    tool: str
    connections: int
    duration_s: float
    requests: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    statuses: dict
    socket_errors: dict

    def as_dict(self) -> dict:
        return asdict(self)


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_load(
    port: int,
    target: Target,
    duration: float,
    connections: int = 16,
    threads: int = 2,
    tool: str = "auto",
) -> LoadResult:
    """Drive `target` for `duration` seconds with `connections` keep-alive connections."""
    if tool == "auto":
        tool = "wrk" if wrk_available() else "python"
    if tool == "wrk":
        return _run_wrk(port, target, duration, connections, threads)
    return run_python(port, target, duration, connections)


# -- wrk ------------------------------------------------------------------------------------

WRK_SCRIPT = r"""
-- Written by tests/bench/loadgen.py: per-status counts and a JSON summary.
local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("idx", counter)
  table.insert(threads, thread)
end

function init(args)
  mode = os.getenv("BENCH_MODE") or "get"
  statuses = {}
  sent = 0
  if mode == "file" then
    lines = {}
    for line in io.lines(os.getenv("BENCH_PREFIX") .. idx .. ".txt") do
      table.insert(lines, line)
    end
  elseif mode == "jobs" then
    emails = {}
    for line in io.lines(os.getenv("BENCH_EMAILS")) do
      table.insert(emails, line)
    end
    token = os.getenv("BENCH_TOKEN")
    run = os.getenv("BENCH_RUN")
    batch = tonumber(os.getenv("BENCH_BATCH") or "1")
  end
  path = os.getenv("BENCH_PATH")
end

function request()
  sent = sent + 1
  if mode == "jobs" then
    local jobs = {}
    for n = 1, batch do
      local turn = sent * batch + n
      local email = emails[((turn * 7919 + idx * 104729) % #emails) + 1]
      jobs[n] = string.format(
        '{"external_id": "%s-%d-%d", "customer_email": "%s", "operation": "upscale", "credits": 1}',
        run, idx, turn, email)
    end
    local body = jobs[1]
    if batch > 1 then
      body = '{"jobs": [' .. table.concat(jobs, ", ") .. ']}'
    end
    return wrk.format("POST", path, {["Content-Type"] = "application/json",
      ["Authorization"] = "Bearer " .. token}, body)
  elseif mode == "file" then
    local line = lines[sent]
    if line == nil then
      -- Out of prepared requests: repeat the last one (the server answers "duplicate"),
      -- counted apart so the run can be flagged.
      statuses["exhausted"] = (statuses["exhausted"] or 0) + 1
      line = lines[#lines]
    end
    local tab = string.find(line, "\t", 1, true)
    local headers = {["Content-Type"] = "application/json"}
    for name, value in string.gmatch(string.sub(line, 1, tab - 1), "([^:|]+):([^|]*)") do
      headers[name] = value
    end
    return wrk.format("POST", path, headers, string.sub(line, tab + 1))
  end
  return wrk.request()
end

function response(status, headers, body)
  statuses[tostring(status)] = (statuses[tostring(status)] or 0) + 1
end

function done(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    local counts = thread:get("statuses")
    for key, value in pairs(counts) do
      merged[key] = (merged[key] or 0) + value
    end
  end
  local parts = {}
  for key, value in pairs(merged) do
    table.insert(parts, string.format('"%s": %d', key, value))
  end
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "p50": %d, "p95": %d, "p99": %d, ' ..
    '"max": %d, "connect": %d, "read": %d, "write": %d, "timeout": %d, "statuses": {%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.max, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout, table.concat(parts, ", ")))
end
"""


def _run_wrk(port: int, target: Target, duration: float, connections: int, threads: int):
    threads = min(threads, connections)
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as folder:
        script = Path(folder) / "bench.lua"
        script.write_text(WRK_SCRIPT)
        env = {**os.environ, "BENCH_PATH": target.path, "BENCH_MODE": "get"}
        if isinstance(target.body, JobsBody):
            env.update(
                BENCH_MODE="jobs",
                BENCH_EMAILS=target.body.emails_file,
                BENCH_TOKEN=target.body.token,
                BENCH_RUN=target.body.run_id,
                BENCH_BATCH=str(target.body.batch),
            )
        elif isinstance(target.body, FileBodies):
            env.update(BENCH_MODE="file", BENCH_PREFIX=target.body.prefix)
            threads = target.body.threads
        command = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
        ]
        for name, value in target.headers.items():
            command += ["-H", f"{name}: {value}"]
        command.append(f"http://{LOCALHOST}:{port}{target.path}")
        completed = subprocess.run(  # noqa: S603  (our own arguments)
            command, env=env, capture_output=True, text=True, timeout=duration + 60, check=False
        )
    line = next(
        (row for row in completed.stdout.splitlines() if row.startswith("BENCH_JSON ")), None
    )
    if line is None:
        raise RuntimeError(f"wrk failed: {completed.stdout}\n{completed.stderr}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    seconds = data["duration_us"] / 1e6
    statuses = {key: value for key, value in data["statuses"].items()}
    socket_errors = {key: data[key] for key in ("connect", "read", "write", "timeout") if data[key]}
    return _result(
        target,
        "wrk",
        connections,
        seconds,
        data["requests"],
        [data["p50"] / 1000, data["p95"] / 1000, data["p99"] / 1000, data["max"] / 1000],
        statuses,
        socket_errors,
    )


def _result(target, tool, connections, seconds, requests, latencies_ms, statuses, sockets):
    expected = {str(code) for code in target.expect}
    errors = sum(count for status, count in statuses.items() if status not in expected) + sum(
        sockets.values()
    )
    p50, p95, p99, worst = latencies_ms
    return LoadResult(
        name=target.name,
        tool=tool,
        connections=connections,
        duration_s=round(seconds, 2),
        requests=requests,
        rps=round(requests / seconds, 1) if seconds else 0.0,
        p50_ms=round(p50, 2),
        p95_ms=round(p95, 2),
        p99_ms=round(p99, 2),
        max_ms=round(worst, 2),
        errors=errors,
        statuses=statuses,
        socket_errors=sockets,
    )


# -- the Python driver --------------------------------------------------------------------


class _Requests:
    """Makes the raw HTTP/1.1 requests of a target, the way the Lua script does."""

    def __init__(self, target: Target, port: int, connections: int):
        self.target = target
        self.base_headers = {"Host": f"{LOCALHOST}:{port}", **target.headers}
        self.sent = 0
        self.lines: dict[int, list[str]] = {}
        self.emails: list[str] = []
        self.exhausted = 0
        body = target.body
        if isinstance(body, JobsBody):
            self.emails = Path(body.emails_file).read_text().split()
        elif isinstance(body, FileBodies):
            for number in range(1, body.threads + 1):
                self.lines[number] = Path(f"{body.prefix}{number}.txt").read_text().splitlines()

    def next(self, slot: int) -> bytes | None:
        self.sent += 1
        body = self.target.body
        headers = dict(self.base_headers)
        method, payload = "GET", b""
        if isinstance(body, JobsBody):
            jobs = []
            for number in range(body.batch):
                turn = self.sent * body.batch + number
                jobs.append(
                    {
                        "external_id": f"{body.run_id}-py-{turn}",
                        "customer_email": self.emails[(turn * 7919) % len(self.emails)],
                        "operation": "upscale",
                        "credits": 1,
                    }
                )
            payload = json.dumps(jobs[0] if body.batch == 1 else {"jobs": jobs}).encode()
            method = "POST"
            headers.update(
                {"Content-Type": "application/json", "Authorization": f"Bearer {body.token}"}
            )
        elif isinstance(body, FileBodies):
            pool = self.lines[slot % body.threads + 1]
            if not pool:
                self.exhausted += 1
                return None
            line = pool.pop(0)
            head, _, text = line.partition("\t")
            for pair in head.split("|"):
                name, _, value = pair.partition(":")
                headers[name] = value
            headers["Content-Type"] = "application/json"
            payload = text.encode()
            method = "POST"
        if payload:
            headers["Content-Length"] = str(len(payload))
        lines = [f"{method} {self.target.path} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    closing = headers.get("connection", "").lower() == "close"
    return status, closing


async def _drive(port, maker: _Requests, deadline, connections):
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    sockets: dict[str, int] = {}

    async def connection(slot: int):
        reader = writer = None
        while time.perf_counter() < deadline:
            raw = maker.next(slot)
            if raw is None:
                break
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(LOCALHOST, port)
                started = time.perf_counter()
                writer.write(raw)
                await writer.drain()
                remaining = max(0.1, deadline + 10 - time.perf_counter())
                status, closing = await asyncio.wait_for(_read_response(reader), remaining)
                latencies.append(time.perf_counter() - started)
                statuses[str(status)] = statuses.get(str(status), 0) + 1
                if closing:
                    writer.close()
                    await writer.wait_closed()
                    writer = None
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as error:
                kind = "timeout" if isinstance(error, TimeoutError) else "read"
                sockets[kind] = sockets.get(kind, 0) + 1
                if writer is not None:
                    writer.close()
                writer = None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    started = time.perf_counter()
    await asyncio.gather(*(connection(slot) for slot in range(connections)))
    return latencies, statuses, sockets, time.perf_counter() - started


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


def run_python(port: int, target: Target, duration: float, connections: int = 16) -> LoadResult:
    """The same measurement as wrk, from a small asyncio client (slower: the ceiling it
    can reach is lower, so prefer wrk for real numbers)."""
    maker = _Requests(target, port, connections)
    deadline = time.perf_counter() + duration
    latencies, statuses, sockets, seconds = asyncio.run(_drive(port, maker, deadline, connections))
    if maker.exhausted:
        statuses["exhausted"] = maker.exhausted
    ms = [value * 1000 for value in latencies]
    return _result(
        target,
        "python",
        connections,
        min(seconds, duration) if latencies else seconds,
        len(latencies),
        [
            percentile(ms, 0.50),
            percentile(ms, 0.95),
            percentile(ms, 0.99),
            max(ms, default=0.0),
        ],
        statuses,
        sockets,
    )


# -- one long download (the CSV export) -----------------------------------------------------


@dataclass
class DownloadResult:
    status: int
    first_byte_ms: float
    total_s: float
    bytes: int
    rows: int
    rows_per_s: float


def download(port: int, path: str, headers: dict, timeout: float = 300) -> DownloadResult:
    """GET `path` once and read it to the end, timing the first body byte and the rest."""
    import http.client

    connection = http.client.HTTPConnection(LOCALHOST, port, timeout=timeout)
    try:
        started = time.perf_counter()
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        first = response.read(1)
        first_byte = time.perf_counter() - started
        size = len(first)
        lines = first.count(b"\n")
        while chunk := response.read(256 * 1024):
            size += len(chunk)
            lines += chunk.count(b"\n")
        total = time.perf_counter() - started
    finally:
        connection.close()
    rows = max(0, lines - 1)  # the header line is not a row
    return DownloadResult(
        status=response.status,
        first_byte_ms=round(first_byte * 1000, 1),
        total_s=round(total, 3),
        bytes=size,
        rows=rows,
        rows_per_s=round(rows / total, 1) if total else 0.0,
    )


# -- process memory ------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in kB (empty if it is gone)."""
    values = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, number = line.split(":", 1)
                values[name] = int(number.split()[0])
    except OSError:
        return {}
    return values


def cpu_ticks(pid: int) -> int:
    """User plus system CPU time of a process, in clock ticks."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


class RssSampler:
    """Polls the RSS of some processes in a thread, remembering each one's peak."""

    def __init__(self, pids: list[int], interval: float = 0.01):
        self.pids = pids
        self.interval = interval
        self.peak = {pid: proc_status(pid).get("VmRSS", 0) for pid in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for pid in self.pids:
                rss = proc_status(pid).get("VmRSS", 0)
                if rss > self.peak[pid]:
                    self.peak[pid] = rss
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def load_average() -> float:
    """The machine's 1-minute load average (other work on it skews every number)."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError):
        return 0.0


CSRF_INPUT = re.compile(
    r'name="csrf_token" type="hidden" value="([^"]+)"|value="([^"]+)"[^>]*name="csrf_token"'
)


def csrf_token_in(html: str) -> str:
    """The CSRF token of the first form in a page."""
    found = CSRF_INPUT.search(html)
    if not found:
        raise ValueError("no csrf_token in the page")
    return found.group(1) or found.group(2)


def postgres_pids() -> list[int]:
    """Every PostgreSQL server process on this machine (its backends do the SQL work)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in ("postgres", "postmaster"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has spent busy since boot (/proc/stat)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    # user nice system idle iowait irq softirq steal ...: idle and iowait are not work.
    busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)
    return busy / CpuMeter.TICK


def own_seconds() -> float:
    """CPU seconds of this process and of its children waited for (wrk, pgbench)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


class CpuMeter:
    """CPU seconds used by some processes between start and stop (noise-proof costs),
    and by everything else on the machine.

    Wall-clock numbers move with whatever else runs on the machine; CPU time per request
    does not (much), so it is what tells where a request's cost goes. `others` is the
    machine's busy time less the groups' and the benchmark's own (its process and the
    load tool it waited for): work that had nothing to do with the measurement, which
    is what says whether the machine was quiet.
    """

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, groups: dict[str, callable], poll: float | None = None):
        """`poll` (seconds): read the groups' processes that often while running, for
        processes that end before the meter stops (pgbench's server connections)."""
        self.groups = groups
        self.poll = poll
        self.start: dict[str, dict[int, int]] = {}
        self.latest: dict[str, dict[int, int]] = {}
        self.used: dict[str, float] = {}
        self.machine = self.own = self.seconds = 0.0
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def _read(self) -> None:
        for name, find in self.groups.items():
            latest = self.latest.setdefault(name, {})
            for pid in find():
                latest[pid] = max(latest.get(pid, 0), cpu_ticks(pid))

    def _poll(self) -> None:
        while not self._stop.wait(self.poll):
            self._read()

    def __enter__(self):
        self.start = {
            name: {pid: cpu_ticks(pid) for pid in find()} for name, find in self.groups.items()
        }
        self.latest = {name: dict(pids) for name, pids in self.start.items()}
        self._started = (time.monotonic(), machine_busy_seconds(), own_seconds())
        if self.poll:
            self._poller = threading.Thread(target=self._poll, daemon=True)
            self._poller.start()
        return self

    def __exit__(self, *exc):
        if self._poller is not None:
            self._stop.set()
            self._poller.join()
        self._read()
        for name in self.groups:
            before = self.start[name]
            ticks = sum(max(0, now - before.get(pid, 0)) for pid, now in self.latest[name].items())
            self.used[name] = ticks / self.TICK
        started, machine, own = self._started
        self.seconds = time.monotonic() - started
        self.machine = machine_busy_seconds() - machine
        self.own = own_seconds() - own

    @property
    def others_cores(self) -> float:
        """Cores' worth of CPU that other work used on average while the meter ran."""
        others = self.machine - self.own - sum(self.used.values())
        return round(max(0.0, others) / self.seconds, 3) if self.seconds else 0.0
