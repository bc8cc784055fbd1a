"""Liveness and readiness, for load balancers and orchestrators. No secrets in the output."""

from flask import Blueprint, current_app, jsonify
from sqlalchemy import inspect, text

from portal import schema
from portal.db import db

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():
    """The process is alive and answering."""
    return jsonify({"status": "ok"})


def _migrations_at_head() -> bool:
    with db.engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return False
        current = set(connection.execute(text("SELECT version_num FROM alembic_version")).scalars())
    return current == schema.heads()


def _redis_reachable(url: str) -> bool:
    # Imported only where Redis is configured: most development set-ups run without it.
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    finally:
        client.close()


@bp.get("/readyz")
def readyz():
    """Ready for traffic: database reachable and schema migrated.

    Redis is reported but does not decide: without it the rate limits fall back to each
    process's memory, and every server would see the same Redis outage, so answering 503
    for it would take the whole fleet out of the load balancer at once.
    """
    checks = {}
    try:
        with db.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
        checks["migrations"] = "ok" if _migrations_at_head() else "behind"
    except Exception:  # any failure here means "not ready", whatever raised it
        checks["database"] = "unreachable"
    redis_url = current_app.config["REDIS_URL"]
    if redis_url:
        try:
            checks["redis"] = "ok" if _redis_reachable(redis_url) else "degraded"
        except Exception:  # same: report, do not crash
            checks["redis"] = "degraded"
    ready = all(value == "ok" for name, value in checks.items() if name != "redis")
    if not ready:
        status = "not ready"
    elif any(value != "ok" for value in checks.values()):
        status = "degraded"
    else:
        status = "ready"
    return jsonify({"status": status, "checks": checks}), (200 if ready else 503)
