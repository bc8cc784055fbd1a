"""Under gunicorn.conf.py with several workers, /metrics counts the requests of them all.

Each worker is a process with counters of its own. The test starts the portal under the
production gunicorn file with three workers and PROMETHEUS_MULTIPROC_DIR, sends requests
that land on different workers (one connection each: with SO_REUSEPORT the kernel spreads
connections), and reads the total from one scrape. The folder holds the counts of a run
that ended before, which the server must not add to its own.
"""

import importlib.util
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "gunicorn.conf.py"
WORKERS = 3
REQUESTS = 30
STALE_REQUESTS = 1000  # counted by a run that ended before this one
HEALTH = {"route": "/healthz", "method": "GET", "status": "200"}

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="relies on SO_REUSEPORT spreading connections (Linux)"
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _environment(tmp_path: Path, metrics_dir: Path) -> dict:
    inherited = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
    environment = {name: os.environ[name] for name in inherited if name in os.environ}
    environment.update(
        {
            "PYTHONPATH": str(ROOT),
            "FLASK_SKIP_DOTENV": "1",
            "PORTAL_ENV": "development",
            "SECRET_KEY": "metrics-test-secret-key-0123456789abcdef",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'portal.db'}",
            "PAYMENTS_MODE": "sandbox",
            "SANDBOX_WEBHOOKS": "off",
            "RATELIMIT_ENABLED": "false",
            "MAIL_BACKEND": "log",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        }
    )
    return environment


def _run(argv: list[str], environment: dict) -> None:
    done = subprocess.run(  # noqa: S603  (our own arguments)
        argv, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout}\n{done.stderr}"


def _count_left_by_an_earlier_run(environment: dict) -> None:
    """A process that counts STALE_REQUESTS health checks into the folder and exits."""
    code = (
        "from portal.ops.counters import REQUEST_SECONDS\n"
        f"for _ in range({STALE_REQUESTS}):\n"
        "    REQUEST_SECONDS.labels('/healthz', 'GET', '200').observe(0.001)\n"
    )
    _run([sys.executable, "-c", code], environment)


def _health_checks_counted(body: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == "portal_request_seconds_count" and sample.labels == HEALTH:
                total += sample.value
    return total


def _wait_until_up(server: subprocess.Popen, url: str, log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert server.poll() is None, f"gunicorn exited:\n{log_path.read_text()[-3000:]}"
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    pytest.fail(f"gunicorn did not answer {url} within 60 s:\n{log_path.read_text()[-3000:]}")


def test_metrics_add_up_the_requests_of_every_worker_and_forget_an_earlier_run(tmp_path):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    environment = _environment(tmp_path, metrics_dir)
    _run([sys.executable, "-m", "flask", "--app", "portal", "db", "upgrade"], environment)
    _count_left_by_an_earlier_run(environment)
    assert list(metrics_dir.glob("histogram_*.db")), "the earlier run left no counts"

    port = _free_port()
    environment.update({"GUNICORN_BIND": f"127.0.0.1:{port}", "GUNICORN_WORKERS": str(WORKERS)})
    log_path = tmp_path / "gunicorn.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(  # noqa: S603  (our own arguments)
            [sys.executable, "-m", "gunicorn", "-c", str(CONF), "portal:create_app()"],
            cwd=ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        # Not /healthz: the request that finds the server up must not count.
        _wait_until_up(server, f"{base}/readyz", log_path)
        for _ in range(REQUESTS):
            # A new connection each time, so that the kernel picks a worker each time.
            assert requests.get(f"{base}/healthz", timeout=10).status_code == 200
        scrape = requests.get(f"{base}/metrics", timeout=10)
        assert scrape.status_code == 200
        counted = _health_checks_counted(scrape.text)
        workers_that_counted = len(list(metrics_dir.glob("histogram_*.db")))
    finally:
        server.terminate()
        server.wait(timeout=30)

    assert workers_that_counted >= 2, "every request landed on one worker: nothing shown"
    assert counted == REQUESTS


def _gunicorn_conf():
    spec = importlib.util.spec_from_file_location("portal_gunicorn_conf_metrics", CONF)
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    return conf


class _Server:
    """What the hooks use of gunicorn's arbiter."""

    def __init__(self, workers: int):
        self.cfg = type("Config", (), {"workers": workers})()
        self.log = logging.getLogger("test.gunicorn")


def test_starting_creates_the_metrics_folder_and_removes_stale_counts(tmp_path, monkeypatch):
    conf = _gunicorn_conf()
    missing = tmp_path / "new" / "metrics"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(missing))
    conf.on_starting(_Server(workers=2))
    assert missing.is_dir()

    folder = tmp_path / "metrics"
    folder.mkdir()
    for name in ("counter_4242.db", "histogram_4242.db", "gauge_livesum_4243.db"):
        (folder / name).write_bytes(b"\0" * 16)
    (folder / "README").write_text("not prometheus_client's")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
    conf.on_starting(_Server(workers=2))
    assert sorted(path.name for path in folder.iterdir()) == ["README"]


def test_starting_several_workers_without_a_metrics_folder_warns(monkeypatch, caplog):
    conf = _gunicorn_conf()
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    with caplog.at_level(logging.WARNING, logger="test.gunicorn"):
        conf.on_starting(_Server(workers=1))
        assert caplog.records == []
        conf.on_starting(_Server(workers=3))
    assert "PROMETHEUS_MULTIPROC_DIR" in caplog.records[0].getMessage()


def test_a_production_fleet_of_workers_does_not_start_without_redis(monkeypatch):
    # Finding 10: without Redis, 4 workers let 120 log-in attempts through where 30 are
    # allowed, each counting on its own.
    conf = _gunicorn_conf()
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setenv("PORTAL_ENV", "production")
    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(RuntimeError, match="REDIS_URL is not set and 4 workers"):
        conf.on_starting(_Server(workers=4))
    conf.on_starting(_Server(workers=1))
    monkeypatch.setenv("RATELIMIT_ENABLED", "false")
    conf.on_starting(_Server(workers=4))
    monkeypatch.delenv("RATELIMIT_ENABLED")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    conf.on_starting(_Server(workers=4))
    monkeypatch.setenv("PORTAL_ENV", "development")
    monkeypatch.delenv("REDIS_URL")
    conf.on_starting(_Server(workers=4))
