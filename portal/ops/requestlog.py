"""One log line per request: request id, user, route, status, duration.

JSON lines in production (for log shippers), plain text elsewhere. Never bodies, form
values, cookies or headers: card data, secrets and passwords stay out of the logs.
"""

import json
import logging
import time

from flask import Flask, g, request

log = logging.getLogger("portal.requests")


class JsonFormatter(logging.Formatter):
    """Format each record as one JSON object, keeping the structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        document.update(getattr(record, "fields", {}))
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


def _start_timer() -> None:
    g.request_started = time.perf_counter()


def _log_request(response):
    started = g.get("request_started")
    duration_ms = round((time.perf_counter() - started) * 1000, 1) if started else None
    # Only look at a user already loaded: loading one here would cost a query.
    user = g.get("_login_user")
    fields = {
        "request_id": g.get("request_id"),
        "method": request.method,
        "route": request.url_rule.rule if request.url_rule else None,
        "status": response.status_code,
        "duration_ms": duration_ms,
        "user_id": getattr(user, "id", None) if user is not None else None,
        "remote_addr": request.remote_addr,
    }
    log.info(
        "%s %s %s %sms",
        request.method,
        fields["route"] or request.path,
        response.status_code,
        duration_ms,
        extra={"fields": fields},
    )
    response.headers.setdefault("X-Request-ID", g.get("request_id") or "")
    return response


def register(app: Flask) -> None:
    app.before_request(_start_timer)
    app.after_request(_log_request)


def configure_logging(app: Flask) -> None:
    """Set up the root handler once: JSON lines in production, text otherwise."""
    root = logging.getLogger()
    if getattr(root, "_portal_configured", False):
        return
    handler = logging.StreamHandler()
    if app.config["PORTAL_ENV"] == "production":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # Alembic announces every plugin it loads at INFO: only its warnings matter here.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    root._portal_configured = True
