"""SQL statements per request, counted in-process with the Flask test client.

Each page is asked for in several variants that differ only in data size (the heavy
customer against a small one) or page size (`per_page`, a later page): a page whose
statement count changes between its variants runs a query per row somewhere (N+1). An
SQLAlchemy `before_cursor_execute` listener on the app's engine counts every statement,
including the log-in check's (the user and the server-side session) and any session
touch on a connection of its own. Each variant is requested twice and the second
request is counted, so that one-off work (a session's first touch) is not.
"""

from __future__ import annotations

import contextvars
import logging
from dataclasses import dataclass

from flask import Flask
from sqlalchemy import event

from tests.bench.dataset import STAFF_AUTHENTICATOR
from tests.bench.loadgen import csrf_token_in


@dataclass(frozen=True)
class Variant:
    label: str
    who: str  # "heavy", "small" or "staff"
    url: str


def log_in(client, email: str, password: str) -> None:
    page = client.get("/login")
    token = csrf_token_in(page.get_data(as_text=True))
    # Over HTTPS (production), Flask-WTF also wants a Referer from this same site.
    response = client.post(
        "/login",
        data={"email": email, "password": password, "csrf_token": token},
        headers={"Referer": page.request.url},
    )
    if response.status_code != 303:
        raise RuntimeError(f"log-in of {email} answered {response.status_code}")
    if response.headers["Location"].endswith("/login/second-factor"):
        page = client.get("/login/second-factor")
        token = csrf_token_in(page.get_data(as_text=True))
        response = client.post(
            "/login/second-factor",
            data={"code": STAFF_AUTHENTICATOR.fresh_code(), "csrf_token": token},
            headers={"Referer": page.request.url},
        )
        if response.status_code != 303:
            raise RuntimeError(f"second factor of {email} answered {response.status_code}")


def count_statements(
    app: Flask,
    pages: dict[str, list[Variant]],
    emails: dict[str, str],
    password: str,
) -> dict:
    """Return, per page, the statements each variant ran and whether they agree."""
    from portal.db import db

    with app.app_context():
        engine = db.engine
    counter = {"n": 0, "statements": []}

    def count(conn, cursor, statement, parameters, context, executemany):
        counter["n"] += 1
        counter["statements"].append(statement.split("\n", 1)[0][:120])

    event.listen(engine, "before_cursor_execute", count)
    # One log line per request is the portal's business, not this report's.
    request_log = logging.getLogger("portal.requests")
    level = request_log.level
    request_log.setLevel(logging.WARNING)
    clients = {}
    try:
        for who, email in emails.items():
            client = app.test_client()
            contextvars.Context().run(log_in, client, email, password)
            clients[who] = client
        results = {}
        for page, variants in pages.items():
            counts = {}
            statuses = {}
            examples = {}
            for variant in variants:
                client = clients[variant.who]
                # A download is long: ask for it once, after a cheap request that takes any
                # session touch that is due; anything else twice, counting the second.
                repeats = 2
                if ".csv" in variant.url:
                    contextvars.Context().run(client.get, "/login", buffered=True)
                    repeats = 1
                for _ in range(repeats):
                    counter["n"] = 0
                    counter["statements"] = []
                    # buffered: a streamed body (the CSV) runs its queries while read,
                    # inside the request's own context.
                    response = contextvars.Context().run(client.get, variant.url, buffered=True)
                counts[variant.label] = counter["n"]
                statuses[variant.label] = response.status_code
                examples[variant.label] = list(counter["statements"])
            values = set(counts.values())
            results[page] = {
                "counts": counts,
                "statuses": statuses,
                "constant": len(values) == 1,
                "max": max(values),
                "statements": examples[max(counts, key=counts.get)],
            }
        return results
    finally:
        event.remove(engine, "before_cursor_execute", count)
        request_log.setLevel(level)
