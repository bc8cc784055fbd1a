"""Prometheus metrics on /metrics, for configured networks or a bearer token only.

Counters and histograms are updated where things happen; the business gauges (open and
overdue requests, outbox backlog) are read from the database when Prometheus scrapes,
so every app server reports the same truth.

gunicorn's workers are processes, each with counters of its own: a scrape reaches one of
them. With PROMETHEUS_MULTIPROC_DIR set, prometheus_client keeps every process's counters
in files there and /metrics adds up the files of all workers, dead ones included, so the
totals only grow. gunicorn.conf.py empties the folder when the server starts (the files of
an earlier run would be counted again) and marks the workers that exit.
"""

import hmac
import ipaddress
import os
import time

from flask import Blueprint, Flask, Response, abort, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from portal.db import db
from portal.notifications.models import OutboxEmail, OutboxStatus
from portal.ops.counters import FULFILMENTS, REFUNDS, REQUEST_SECONDS, WEBHOOK_EVENTS
from portal.refunds.models import OPEN_STATUSES, RefundRequest
from portal.timeutil import utcnow

bp = Blueprint("metrics", __name__)


class BusinessCollector:
    """Gauges read from the database at scrape time."""

    def __init__(self, app: Flask):
        self.app = app

    def collect(self):
        with self.app.app_context():
            now = utcnow()
            open_requests = db.session.scalar(
                select(func.count())
                .select_from(RefundRequest)
                .where(RefundRequest.status.in_(OPEN_STATUSES))
            )
            overdue = db.session.scalar(
                select(func.count()).select_from(RefundRequest).where(RefundRequest.overdue(now))
            )
            backlog, oldest = db.session.execute(
                select(func.count(), func.min(OutboxEmail.created_at)).where(
                    OutboxEmail.status == OutboxStatus.PENDING
                )
            ).one()
            db.session.remove()
        yield GaugeMetricFamily(
            "portal_refund_requests_open", "Open refund requests", value=open_requests
        )
        yield GaugeMetricFamily(
            "portal_refund_requests_overdue", "Overdue refund requests", value=overdue
        )
        yield GaugeMetricFamily(
            "portal_outbox_backlog", "E-mails waiting to be sent", value=backlog
        )
        age = (now - oldest).total_seconds() if oldest else 0
        yield GaugeMetricFamily(
            "portal_outbox_oldest_seconds", "Age of the oldest unsent e-mail", value=age
        )


def _allowed() -> bool:
    token = current_app.config["METRICS_TOKEN"]
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if token and scheme == "Bearer" and hmac.compare_digest(given.encode(), token.encode()):
        return True
    try:
        address = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return False
    return any(address in network for network in current_app.config["METRICS_NETWORKS"])


@bp.get("/metrics")
def metrics():
    if not _allowed():
        abort(404)
    registry = current_app.extensions["metrics_registry"]
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def _start_clock():
    g.metrics_started = time.perf_counter()


def _observe(response):
    started = g.get("metrics_started")
    if started is not None and request.url_rule is not None:
        REQUEST_SECONDS.labels(
            request.url_rule.rule, request.method, str(response.status_code)
        ).observe(time.perf_counter() - started)
    return response


def register(app: Flask) -> None:
    # prometheus_client decides from the environment, not app.config, where counters live.
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        # A process started before gunicorn made it (`flask db upgrade`, the worker)
        # would otherwise fail on its first count.
        os.makedirs(folder, exist_ok=True)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=folder)
    else:
        registry = CollectorRegistry()
        for collector in (REQUEST_SECONDS, WEBHOOK_EVENTS, FULFILMENTS, REFUNDS):
            registry.register(collector)
    registry.register(BusinessCollector(app))
    app.extensions["metrics_registry"] = registry
    app.before_request(_start_clock)
    app.after_request(_observe)
    app.register_blueprint(bp)
