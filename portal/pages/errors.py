"""Error pages that say what happened and nothing about the server's insides."""

import logging
import uuid

from flask import Flask, g, jsonify, render_template, request
from sqlalchemy.exc import InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException, InternalServerError

from portal.db import roll_back
from portal.extensions import login_manager

log = logging.getLogger(__name__)

TITLES = {
    400: "That request could not be understood",
    401: "Please log in",
    403: "You do not have access to this page",
    404: "Page not found",
    405: "That action is not allowed here",
    409: "That conflicts with the current state",
    413: "That upload is too large",
    429: "Too many requests",
    500: "Something went wrong on our side",
    503: "The portal is briefly unavailable",
}


# Machine-readable error names for API and webhook callers.
ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    429: "rate_limited",
    500: "server_error",
    503: "unavailable",
}


def _wants_json() -> bool:
    return request.path.startswith(("/api/", "/webhooks/"))


def _render(status: int, description: str | None = None, retry_after: str | None = None):
    title = TITLES.get(status, "Something went wrong")
    if _wants_json():
        body = {"error": ERROR_CODES.get(status, "error"), "message": description or title}
        if retry_after:
            body["retry_after"] = retry_after
        response = jsonify(body)
        response.status_code = status
        return response
    return (
        render_template(
            "errors/error.html",
            status=status,
            title=title,
            description=description,
            retry_after=retry_after,
            request_id=g.get("request_id"),
        ),
        status,
    )


def _wait_words(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} second{'' if seconds == 1 else 's'}"
    if seconds < 7200:
        return f"{seconds // 60} minutes"
    return f"{seconds // 3600} hours"


def handle_http_error(error: HTTPException):
    if error.code is None or error.code < 400:
        return error
    if error.code >= 500:
        return handle_unexpected(error)
    retry_after = None
    window = getattr(getattr(error, "limit", None), "limit", None)
    if error.code == 429 and window is not None:
        # The window's length is the longest anyone waits for the count to clear.
        retry_after = _wait_words(window.get_expiry())
    description = error.description if error.code in (400, 409, 413) else None
    if error.code == 400 and "CSRF" in (error.description or ""):
        description = "The form expired or was sent from elsewhere. Reload the page and try again."
    return _render(error.code, description, retry_after)


def handle_database_unavailable(error: Exception):
    """The database went away (restart, failover): a 503 the client may retry, not a 500."""
    request_id = g.get("request_id") or uuid.uuid4().hex[:12]
    g.request_id = request_id
    log.error("database unavailable in request %s: %s", request_id, error)
    roll_back()
    # Render as a visitor: looking the user up would need the database that just failed.
    g._login_user = login_manager.anonymous_user()
    response = _render(503)
    if isinstance(response, tuple):
        return response[0], 503, {"Retry-After": "5"}
    response.headers["Retry-After"] = "5"
    return response


def handle_unexpected(error: Exception):
    request_id = g.get("request_id") or uuid.uuid4().hex[:12]
    g.request_id = request_id
    original = getattr(error, "original_exception", None) or error
    log.error("unhandled error in request %s", request_id, exc_info=original)
    status = 503 if isinstance(error, HTTPException) and error.code == 503 else 500
    return _render(status)


def _assign_request_id():
    # A proxy's id is kept so one request can be followed across machines.
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming[:64] if incoming.isalnum() else uuid.uuid4().hex[:12]


def register(app: Flask) -> None:
    app.before_request(_assign_request_id)
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(InternalServerError, handle_unexpected)
    app.register_error_handler(Exception, handle_unexpected)
    app.register_error_handler(OperationalError, handle_database_unavailable)
    app.register_error_handler(InterfaceError, handle_database_unavailable)
