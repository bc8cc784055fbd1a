"""Calling the portal's own WSGI app in-process, as if over HTTP.

Used by the sandbox's transport (the Stripe library's requests to the sandbox) and its
webhook sender. Each call runs in a fresh context, so it gets its own app context and
database session, exactly as a separate HTTP request would.
"""

import contextvars

from flask import Flask
from werkzeug.test import EnvironBuilder, run_wsgi_app

IN_PROCESS = "portal.in_process"


def call_app(
    app: Flask, method: str, url: str, headers: dict, body: bytes | None
) -> tuple[int, dict, bytes]:
    """Send one request to `app`; return (status code, headers, body)."""
    builder = EnvironBuilder(
        path=url, method=method, headers=headers, data=body, base_url="http://sandbox.invalid/"
    )
    environ = builder.get_environ()
    environ[IN_PROCESS] = True
    builder.close()

    def run():
        app_iter, status, response_headers = run_wsgi_app(app.wsgi_app, environ, buffered=True)
        try:
            content = b"".join(app_iter)
        finally:
            if hasattr(app_iter, "close"):
                app_iter.close()
        return int(status.split(" ", 1)[0]), dict(response_headers), content

    return contextvars.Context().run(run)
