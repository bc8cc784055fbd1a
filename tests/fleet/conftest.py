"""The fleet: two app servers on PostgreSQL and Redis, started by the test on loopback.

The fleet has a database of its own (portal_fleet, on the server TEST_DATABASE_URL names,
created when missing) whose schema is dropped and rebuilt by the migrations once per
module, and a Redis database of its own (REDIS_DB) for the shared rate-limit counters.
Both servers share the database and SECRET_KEY, and talk to the one Stripe sandbox there
is: the one in server A's memory (STRIPE_API_BASE points everyone at it).

Two fleet runs on one machine would fight over that database and Redis database, so a
run waits (a bounded time) for a PostgreSQL advisory lock that the other run holds.
"""

import contextlib
import os
import sys
import time
import uuid
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from tests.fleet.support import (
    HTTP_TIMEOUT,
    FleetTimeout,
    Process,
    Processes,
    SmtpSink,
    free_port,
    wait_until,
)

FLEET_DATABASE = "portal_fleet"
REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
REDIS_DB = 13
SECRET_KEY = "fleet-secret-key-shared-by-every-server-and-worker"
STRIPE_KEY = "sk_test_sandbox"
PASSWORD = "violet harbour lantern 4812 fleet"
FLEET_LOCK = zlib.crc32(b"portal fleet test")
FLEET_LOCK_WAIT_SECONDS = 120
STARTUP_SECONDS = 60
# How long a refund claimed by a worker that died mid-call waits before another sends it.
REFUND_RESEND_AFTER_SECONDS = 2


@pytest.fixture(autouse=True)
def _clean_database():
    """Replaces the root conftest's: the fleet never touches the shared test database."""
    yield


@dataclass
class Server:
    name: str
    port: int
    process: Process

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Fleet:
    a: Server
    b: Server
    app: object  # an in-process portal app on the fleet's database, for setting up data
    redis: object
    sink: SmtpSink
    processes: Processes
    base_environment: dict[str, str]

    @property
    def sandbox_base(self) -> str:
        """STRIPE_API_BASE for everyone: the sandbox in server A's memory."""
        return f"{self.a.url}/sandbox"

    def environment(self, stripe_api_base: str | None = None) -> dict[str, str]:
        return {**self.base_environment, "STRIPE_API_BASE": stripe_api_base or self.sandbox_base}

    def start_worker(self, name: str, stripe_api_base: str | None = None) -> Process:
        argv = [sys.executable, "-m", "flask", "--app", "portal", "worker", "--interval", "0.2"]
        return self.processes.start(name, argv, self.environment(stripe_api_base))

    def describe(self) -> str:
        return f"SMTP sink: {self.sink.count()} message(s)\n{self.processes.describe()}"

    @contextmanager
    def database(self) -> Iterator[None]:
        """An app context on the fleet's database (each use gets a fresh session)."""
        from portal.db import db

        with self.app.app_context():
            try:
                yield
            finally:
                db.session.remove()

    def flush_rate_limits(self) -> None:
        self.redis.flushdb()

    def rate_limit_counters(self) -> dict[str, str]:
        """What Redis holds for the rate limits, for failure messages."""
        counters = {}
        for key in sorted(self.redis.keys("*"))[:50]:
            kind = self.redis.type(key)
            counters[key.decode()] = (
                self.redis.get(key).decode() if kind == b"string" else kind.decode()
            )
        return counters

    def new_customer(self, label: str) -> str:
        from portal.accounts.services import register_user

        email = f"{label}-{uuid.uuid4().hex[:10]}@example.com"
        with self.database():
            register_user(email, PASSWORD)
        return email

    def new_staff(self, label: str) -> str:
        from portal.accounts.services import create_or_promote_staff

        email = f"{label}-{uuid.uuid4().hex[:10]}@example.com"
        with self.database():
            create_or_promote_staff(email, PASSWORD)
        return email

    def stripe(self, path: str) -> dict:
        """GET the sandbox's Stripe API on server A (e.g. "/events?type=refund.created")."""
        response = requests.get(
            f"{self.sandbox_base}/v1{path}",
            headers={"Authorization": f"Bearer {STRIPE_KEY}"},
            timeout=HTTP_TIMEOUT,
        )
        assert response.status_code == 200, f"GET {path} at the sandbox: {response.status_code}"
        return response.json()


def _redis_or_skip():
    import redis

    client = redis.Redis(
        host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB, socket_connect_timeout=1, socket_timeout=5
    )
    try:
        client.ping()
    except redis.RedisError as error:
        client.close()
        pytest.skip(f"the fleet test needs Redis on {REDIS_HOST}:{REDIS_PORT}: {error}")
    return client


def _urls() -> tuple[str, str]:
    """(the server's maintenance database, the fleet's database), from TEST_DATABASE_URL."""
    from portal.config import database_url

    url = make_url(database_url(os.environ["TEST_DATABASE_URL"]))
    assert url.get_backend_name() == "postgresql", "the fleet test needs PostgreSQL"
    render = lambda u: u.render_as_string(hide_password=False)  # noqa: E731
    return render(url.set(database="postgres")), render(url.set(database=FLEET_DATABASE))


def _hold_fleet_lock(stack: ExitStack, admin_url: str) -> None:
    """Wait (bounded) for the advisory lock that keeps two fleet runs apart; keep it."""
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    stack.callback(engine.dispose)
    connection = engine.connect()
    stack.callback(connection.close)
    deadline = time.monotonic() + FLEET_LOCK_WAIT_SECONDS
    for _ in range(FLEET_LOCK_WAIT_SECONDS * 2 + 1):
        if connection.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": FLEET_LOCK}):
            stack.callback(
                connection.execute, text("SELECT pg_advisory_unlock(:key)"), {"key": FLEET_LOCK}
            )
            break
        if time.monotonic() >= deadline:
            pytest.fail(f"another fleet run kept {FLEET_DATABASE} for over 2 minutes")
        time.sleep(0.5)
    exists = connection.scalar(
        text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": FLEET_DATABASE}
    )
    if not exists:
        # Created meanwhile by someone else (not a fleet run): fine.
        with contextlib.suppress(ProgrammingError):
            connection.execute(text(f'CREATE DATABASE "{FLEET_DATABASE}"'))


def _portal_app(database_url: str, instance_path: Path, smtp_port: int, sandbox_base: str):
    """An app in the test process on the fleet's database (users, requests, approvals)."""
    from portal import create_app

    with pytest.MonkeyPatch.context() as patch:
        # The developer's own environment must not turn this into another kind of app.
        for name in ("PORTAL_ENV", "SECRET_KEY", "PAYMENTS_MODE", "STRIPE_SECRET_KEY"):
            patch.delenv(name, raising=False)
        patch.setenv("PORTAL_ENV", "development")
        patch.setenv("SECRET_KEY", SECRET_KEY)
        patch.setenv("PAYMENTS_MODE", "sandbox")
        return create_app(
            {
                "INSTANCE_PATH": str(instance_path),
                "SQLALCHEMY_DATABASE_URI": database_url,
                "STRIPE_API_BASE": sandbox_base,
                "STRIPE_SECRET_KEY": STRIPE_KEY,
                "STRIPE_WEBHOOK_SECRET": "whsec_sandbox",
                "SANDBOX_WEBHOOKS": "off",
                # Queued e-mails stay pending for the workers, as on the servers.
                "MAIL_BACKEND": "smtp",
                "MAIL_SERVER": "127.0.0.1",
                "MAIL_PORT": smtp_port,
                "PASSWORD_HASH_PROFILE": "owasp",
                "REDIS_URL": "",
                "RATELIMIT_STORAGE_URI": "memory://",
                "RATELIMIT_ENABLED": False,
            }
        )


def _reset_schema(app) -> None:
    from portal import schema
    from portal.db import db

    with app.app_context():
        with db.engine.begin() as connection:
            connection.execute(text("SET LOCAL lock_timeout = '15s'"))
            connection.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
        schema.upgrade()
        db.session.remove()


def _environment(database_url: str, smtp_port: int) -> dict[str, str]:
    """Settings of every server and worker (STRIPE_API_BASE is added per process)."""
    inherited = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
    environment = {name: os.environ[name] for name in inherited if name in os.environ}
    environment.update(
        {
            "PYTHONUNBUFFERED": "1",
            "FLASK_SKIP_DOTENV": "1",
            "PORTAL_ENV": "development",
            "SECRET_KEY": SECRET_KEY,
            "DATABASE_URL": database_url,
            "PAYMENTS_MODE": "sandbox",
            "SANDBOX_WEBHOOKS": "thread",
            "SANDBOX_REFUND_SECONDS": "0.5",
            "REDIS_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}",
            "RATELIMIT_ENABLED": "true",
            "RATELIMIT_LOGIN_IP": "3 per minute",
            "RATELIMIT_CHECKOUT": "1000 per minute",
            "MAIL_BACKEND": "smtp",
            "MAIL_SERVER": "127.0.0.1",
            "MAIL_PORT": str(smtp_port),
            "REFUND_RESEND_AFTER_SECONDS": str(REFUND_RESEND_AFTER_SECONDS),
        }
    )
    return environment


def _start_server(
    processes: Processes, name: str, port: int, environment: dict, instance_path: Path
) -> Server:
    """Start one app server; its instance folder is its own, as on a machine of its own."""
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "/dev/null",  # not the repository's production gunicorn.conf.py
        "--worker-class",
        "gthread",
        "--threads",
        "4",  # server A calls its own sandbox over HTTP while serving
        "--workers",
        "1",
        "--bind",
        f"127.0.0.1:{port}",
        f"portal:create_app({{'INSTANCE_PATH': {str(instance_path)!r}}})",
    ]
    return Server(name, port, processes.start(name, argv, environment))


def _ready(server: Server) -> bool:
    if not server.process.alive():
        raise FleetTimeout(f"{server.name} exited:\n{server.process.tail()}")
    try:
        return requests.get(f"{server.url}/readyz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[Fleet]:
    redis_client = _redis_or_skip()
    with ExitStack() as stack:
        stack.callback(redis_client.close)
        admin_url, database_url = _urls()
        _hold_fleet_lock(stack, admin_url)

        sink = SmtpSink()
        smtp_port = sink.start()
        stack.callback(sink.stop)

        a_port, b_port = free_port(), free_port()
        for _ in range(10):
            if b_port != a_port:
                break
            b_port = free_port()
        sandbox_base = f"http://127.0.0.1:{a_port}/sandbox"
        app = _portal_app(
            database_url, tmp_path_factory.mktemp("fleet-instance"), smtp_port, sandbox_base
        )

        def dispose_engine():
            from portal.db import db

            with app.app_context():
                db.engine.dispose()

        stack.callback(dispose_engine)
        _reset_schema(app)
        redis_client.flushdb()

        processes = Processes(tmp_path_factory.mktemp("fleet-logs"))
        stack.callback(processes.stop_all)
        environment = _environment(database_url, smtp_port)
        environment_of_servers = {**environment, "STRIPE_API_BASE": sandbox_base}
        a, b = (
            _start_server(
                processes, name, port, environment_of_servers, tmp_path_factory.mktemp(name)
            )
            for name, port in (("server-a", a_port), ("server-b", b_port))
        )
        fleet = Fleet(a, b, app, redis_client, sink, processes, environment)
        for server in (a, b):
            wait_until(
                lambda server=server: _ready(server),
                STARTUP_SECONDS,
                f"{server.name} to answer /readyz",
                fleet.describe,
            )
        yield fleet
