"""Gunicorn servers for the benchmark: the portal, the hello-world ceiling, the Stripe stand-in.

All three listen on 127.0.0.1 only, on free ports, and are stopped by their own process
ids when the benchmark ends (or fails).
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.bench.loadgen import LOCALHOST, proc_status

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOCALHOST, 0))
        return probe.getsockname()[1]


PRODUCTION_CONFIG = ROOT / "gunicorn.conf.py"


@dataclass
class GunicornSettings:
    """The settings every server under load shares (the hello world gets the same).

    The project's production gunicorn.conf.py is loaded when there is one (its timeout,
    keep-alive and logging), with workers, threads and recycling set here: recycling
    (max_requests) is switched off so that 20-second measurements are not disturbed by
    workers restarting (the hello world would restart every few seconds), and because
    the Stripe stand-in keeps its state in its one worker.
    """

    workers: int = field(default_factory=lambda: os.cpu_count() or 2)
    threads: int = 4
    config: Path | None = field(
        default_factory=lambda: PRODUCTION_CONFIG if PRODUCTION_CONFIG.exists() else None
    )
    max_requests: int = 0

    def arguments(self, scratch: Path) -> list[str]:
        if self.config is None:
            empty = scratch / "gunicorn.empty.conf.py"
            empty.write_text("# no settings: gunicorn's defaults and the command line\n")
            config, extra = empty, ["--keep-alive", "5", "--timeout", "30"]
        else:
            config, extra = self.config, []
        worker_class = "gthread" if self.threads > 1 else "sync"
        return [
            "--config",
            str(config),
            *extra,
            "--workers",
            str(self.workers),
            "--worker-class",
            worker_class,
            "--threads",
            str(self.threads),
            "--max-requests",
            str(self.max_requests),
            "--log-level",
            "info",
        ]

    def describe(self) -> str:
        kind = f"gthread, {self.threads} threads" if self.threads > 1 else "sync"
        config = self.config.name if self.config else "no config file"
        return f"gunicorn ({config}) {self.workers} workers ({kind}), max_requests off"


class Server:
    """One gunicorn master and its workers."""

    def __init__(self, name: str, app: str, settings: GunicornSettings, env: dict, log_dir: Path):
        self.name = name
        self.port = free_port()
        self.settings = settings
        self.log_path = log_dir / f"{name}.log"
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            *settings.arguments(log_dir),
            "--bind",
            f"{LOCALHOST}:{self.port}",
            "--chdir",
            str(ROOT),
            app,
        ]
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(  # noqa: S603  (our own arguments)
            command, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT
        )

    def wait_ready(self, path: str = "/", timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: see {self.log_path}\n{self.log_tail()}")
            try:
                connection = http.client.HTTPConnection(LOCALHOST, self.port, timeout=5)
                try:
                    connection.request("GET", path)
                    connection.getresponse().read()
                finally:
                    connection.close()
                if len(self.worker_pids()) >= self.settings.workers:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not answer in {timeout} s\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def worker_pids(self) -> list[int]:
        """The master's children: the gunicorn workers."""
        try:
            text = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
        except OSError:
            return []
        return [int(pid) for pid in text.split()]

    def worker_memory(self) -> dict[int, dict[str, int]]:
        return {pid: proc_status(pid) for pid in self.worker_pids()}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def base_environment() -> dict:
    """The environment of every server: this one, less anything portal-specific."""
    portal_names = (
        "PORTAL_ENV",
        "SECRET_KEY",
        "DATABASE_URL",
        "STRIPE_",
        "PAYMENTS_MODE",
        "PORTAL_SERVICE_TOKEN",
        "SANDBOX_",
        "RATELIMIT_",
        "REDIS_URL",
        "MAIL_",
        "PROXY_FIX_COUNT",
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith(portal_names)}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


BENCH_SECRETS = {
    "SECRET_KEY": "bench-secret-key-not-for-production-0123456789abcdef",
    "STRIPE_SECRET_KEY": "sk_test_bench",
    "STRIPE_WEBHOOK_SECRET": "whsec_bench_secret",
    "PORTAL_SERVICE_TOKEN": "bench-service-token-0123456789abcdef",
}


def portal_environment(database_url: str, stripe_api_base: str) -> dict:
    """Production settings, with Stripe played by the stand-in at `stripe_api_base`.

    Production refuses SQLite at start; the miniature run the test suite makes on SQLite
    checks the benchmark's machinery, not the numbers, so it runs as development there.
    """
    return {
        **base_environment(),
        "PORTAL_ENV": "development" if database_url.startswith("sqlite") else "production",
        "DATABASE_URL": database_url,
        **BENCH_SECRETS,
        "STRIPE_API_BASE": stripe_api_base,
        # Production wants the https:// address links in e-mails are built from.
        "PORTAL_BASE_URL": "https://portal.bench.invalid",
        # Log-in is limited per address and account; the load comes from one address.
        "RATELIMIT_ENABLED": "false",
        "MAIL_BACKEND": "log",
    }


def stripe_standin_environment(scratch: Path) -> dict:
    """The portal's own Stripe sandbox, alone in one process, as "Stripe" for the portal.

    Sandbox state lives in one process, so it cannot be served by the portal's several
    workers; here it is one worker that every portal worker reaches over HTTP, as they
    would reach Stripe. It delivers no webhooks itself (SANDBOX_WEBHOOKS=off): the
    benchmark signs and sends them.
    """
    return {
        **base_environment(),
        "PORTAL_ENV": "development",
        "PAYMENTS_MODE": "sandbox",
        "SECRET_KEY": BENCH_SECRETS["SECRET_KEY"],
        # The sandbox answers only the secret key it is configured with: the portal's.
        "STRIPE_SECRET_KEY": BENCH_SECRETS["STRIPE_SECRET_KEY"],
        "DATABASE_URL": f"sqlite:///{scratch / 'stripe-standin.db'}",
        "STRIPE_WEBHOOK_SECRET": BENCH_SECRETS["STRIPE_WEBHOOK_SECRET"],
        "SANDBOX_WEBHOOKS": "off",
        "RATELIMIT_ENABLED": "false",
        "MAIL_BACKEND": "log",
    }
