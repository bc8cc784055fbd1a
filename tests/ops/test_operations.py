"""Health, readiness, metrics, request logs, deployment checks and periodic tasks."""

import json
import logging
from datetime import timedelta

import pytest
from sqlalchemy import select

from portal.db import db
from portal.ops import schedule
from portal.ops.deploycheck import deployment_problems
from portal.ops.models import ScheduledTask
from portal.ops.requestlog import JsonFormatter
from portal.timeutil import utcnow
from tests.factories import DEFAULT_PASSWORD, login_as, make_staff, make_user


def test_healthz_answers_without_authentication(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}


def test_readyz_checks_database_and_migrations(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json()["checks"] == {"database": "ok", "migrations": "ok"}


def test_readyz_fails_when_the_database_is_down(make_app):
    app = make_app(
        SQLALCHEMY_DATABASE_URI="postgresql+psycopg://nobody@127.0.0.1:9/none",
        SQLALCHEMY_ENGINE_OPTIONS={"connect_args": {"connect_timeout": 2}},
    )
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"]["database"] == "unreachable"
    assert "127.0.0.1" not in response.get_data(as_text=True)


def test_readyz_reports_a_lost_redis_without_leaving_the_load_balancer(make_app):
    # Every server sees the same Redis outage: a 503 would drop the whole fleet at once,
    # while the rate limits carry on in memory.
    app = make_app(REDIS_URL="redis://127.0.0.1:9/0")
    response = app.test_client().get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "degraded",
        "checks": {"database": "ok", "migrations": "ok", "redis": "degraded"},
    }


def test_metrics_are_served_to_local_networks_only(client, make_app):
    client.get("/healthz")
    local = client.get("/metrics")
    assert local.status_code == 200
    body = local.get_data(as_text=True)
    for name in (
        "portal_request_seconds",
        "portal_refund_requests_open",
        "portal_refund_requests_overdue",
        "portal_outbox_backlog",
    ):
        assert name in body
    remote = client.get("/metrics", environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert remote.status_code == 404


def test_metrics_accept_the_bearer_token_from_anywhere(make_app):
    app = make_app(METRICS_TOKEN="scrape-token-that-is-long-enough")
    client = app.test_client()
    outside = {"REMOTE_ADDR": "203.0.113.9"}
    assert client.get("/metrics", environ_base=outside).status_code == 404
    answer = client.get(
        "/metrics",
        environ_base=outside,
        headers={"Authorization": "Bearer scrape-token-that-is-long-enough"},
    )
    assert answer.status_code == 200


def test_each_request_is_logged_once_with_its_id_and_never_with_secrets(client, caplog):
    user = make_user()
    with caplog.at_level(logging.INFO, logger="portal.requests"):
        login_as(client, user)
        client.get("/dashboard", headers={"X-Request-ID": "abc123"})
    lines = [record for record in caplog.records if record.name == "portal.requests"]
    dashboard = [record for record in lines if record.fields["route"] == "/dashboard"]
    assert len(dashboard) == 1
    assert dashboard[0].fields["request_id"] == "abc123"
    assert dashboard[0].fields["status"] == 200 and dashboard[0].fields["user_id"] == user.id
    everything = "\n".join(
        record.getMessage() + json.dumps(getattr(record, "fields", {}), default=str)
        for record in caplog.records
    )
    assert DEFAULT_PASSWORD not in everything and "test-secret-key" not in everything
    assert "whsec_sandbox" not in everything


def test_production_logs_are_json_lines():
    record = logging.LogRecord("portal.requests", logging.INFO, __file__, 1, "GET / 200", (), None)
    record.fields = {"request_id": "r1", "status": 200}
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "r1" and line["message"] == "GET / 200"


SAFE = {
    "PORTAL_ENV": "production",
    "PAYMENTS_MODE": "stripe",
    "SQLALCHEMY_DATABASE_URI": "postgresql+psycopg://portal@db/portal",
    "SECRET_KEY": "k" * 48,
    "STRIPE_WEBHOOK_SECRET": "whsec_live_0123456789",
    "SESSION_COOKIE_SECURE": True,
    "REMEMBER_COOKIE_SECURE": True,
    "SESSION_COOKIE_NAME": "__Host-portal-session",
    "PORTAL_SERVICE_TOKEN": "t" * 40,
    "PROXY_FIX_COUNT": 1,
    "MAIL_BACKEND": "smtp",
    "REDIS_URL": "redis://cache:6379/0",
    "PORTAL_BASE_URL": "https://portal.example",
    "TRUSTED_HOSTS": ["portal.example"],
    "PROMETHEUS_MULTIPROC_DIR": "/run/portal/metrics",
}


class FakeApp:
    def __init__(self, config, debug=False):
        self.config = config
        self.debug = debug


def test_check_deploy_accepts_safe_settings():
    assert deployment_problems(FakeApp(dict(SAFE))) == []


@pytest.mark.parametrize(
    ("setting", "value", "words"),
    [
        ("PORTAL_ENV", "development", "PORTAL_ENV"),
        ("PAYMENTS_MODE", "sandbox", "sandbox"),
        ("SQLALCHEMY_DATABASE_URI", "sqlite:///x.db", "SQLite"),
        ("SECRET_KEY", "short", "SECRET_KEY"),
        ("SECRET_KEY", "", "SECRET_KEY"),
        ("STRIPE_WEBHOOK_SECRET", "", "STRIPE_WEBHOOK_SECRET"),
        ("SESSION_COOKIE_SECURE", False, "Secure"),
        ("SESSION_COOKIE_NAME", "session", "__Host-"),
        ("PORTAL_SERVICE_TOKEN", "", "PORTAL_SERVICE_TOKEN"),
        ("PROXY_FIX_COUNT", 0, "PROXY_FIX_COUNT"),
        ("MAIL_BACKEND", "log", "MAIL_BACKEND"),
        ("REDIS_URL", "", "REDIS_URL"),
        ("PORTAL_BASE_URL", "http://portal.example", "PORTAL_BASE_URL"),
        ("TRUSTED_HOSTS", None, "TRUSTED_HOSTS"),
        ("PROMETHEUS_MULTIPROC_DIR", "", "PROMETHEUS_MULTIPROC_DIR"),
    ],
)
def test_check_deploy_catches_each_unsafe_setting(setting, value, words):
    problems = deployment_problems(FakeApp({**SAFE, setting: value}))
    assert len(problems) == 1 and words in problems[0]


def test_check_deploy_catches_debug_mode_and_fails_the_command(app):
    assert any("Debug" in problem for problem in deployment_problems(FakeApp(dict(SAFE), True)))
    result = app.test_cli_runner().invoke(args=["check-deploy"])
    assert result.exit_code != 0 and "PORTAL_ENV" in result.output


def test_periodic_tasks_run_once_per_period(app):
    runs = []
    task = schedule.Task("test_task", timedelta(hours=1), lambda now: runs.append(now) or "ok")
    now = utcnow()
    assert schedule.run_due_tasks(now, (task,)) == ["test_task"]
    assert schedule.run_due_tasks(now + timedelta(minutes=30), (task,)) == []
    assert schedule.run_due_tasks(now + timedelta(minutes=61), (task,)) == ["test_task"]
    assert len(runs) == 2
    row = db.session.scalar(select(ScheduledTask).where(ScheduledTask.name == "test_task"))
    assert row.last_outcome == "ok"


def test_a_failing_periodic_task_is_recorded_and_does_not_stop_the_others(app):
    def broken(now):
        raise RuntimeError("boom")

    tasks = (
        schedule.Task("broken", timedelta(hours=1), broken),
        schedule.Task("fine", timedelta(hours=1), lambda now: "done"),
    )
    assert schedule.run_due_tasks(utcnow(), tasks) == ["broken", "fine"]
    assert db.session.get(ScheduledTask, "broken").last_outcome.startswith("failed: boom")


def test_the_nightly_ledger_check_alerts_staff_when_the_books_break(app):
    from sqlalchemy import text

    from portal.notifications.models import OutboxEmail

    make_staff(email="ops@example.com")
    user = make_user()
    db.session.execute(text("UPDATE users SET credits_balance = 5 WHERE id = :id"), {"id": user.id})
    db.session.commit()
    task = next(task for task in schedule.TASKS if task.name == "ledger_check")
    assert schedule.run_due_tasks(utcnow(), (task,)) == ["ledger_check"]
    alert = db.session.scalars(
        select(OutboxEmail).where(OutboxEmail.to_address == "ops@example.com")
    ).one()
    assert "Ledger check found problems" in alert.subject and user.email in alert.body_text


def test_worker_once_runs_a_round(app):
    result = app.test_cli_runner().invoke(args=["worker", "--once"])
    assert result.exit_code == 0 and "refunds" in result.output
