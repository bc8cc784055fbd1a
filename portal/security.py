"""Security headers, the staff guard and safe redirects."""

from urllib.parse import urlsplit

from flask import Flask, abort, request
from flask_login import current_user

from portal.extensions import login_manager

# Views build their e-mail and Stripe links from here; services, which may not import
# this module (it brings the web extensions), take them from portal.links.
from portal.links import external_url as external_url

# Checkout's hosted page is the one other place a form of ours may lead to.
STRIPE_CHECKOUT_ORIGIN = "https://checkout.stripe.com"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
        f"form-action 'self' {STRIPE_CHECKOUT_ORIGIN}",
    ]
)


def is_safe_next(target: str | None) -> bool:
    """Accept only a relative path on this site as a place to go after log-in."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return False
    if "\\" in target or any(ord(ch) < 32 for ch in target):
        return False
    parts = urlsplit(target)
    return not parts.scheme and not parts.netloc


def require_staff() -> None:
    """Guard a whole blueprint: anonymous users go to log-in, customers get 403."""
    if not current_user.is_authenticated:
        abort(login_manager.unauthorized())
    if not current_user.is_staff:
        abort(403)


def _refuse_nul_bytes():
    # No text column accepts NUL (PostgreSQL refuses it outright), and no honest form
    # or link contains one: answer 400 before any view can pass it to the database.
    values = [*request.args.values(), *(request.view_args or {}).values()]
    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        values += request.form.values()
    if any(isinstance(value, str) and "\x00" in value for value in values):
        abort(400)


SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "strict-origin-when-cross-origin"),
    ("Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=()"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
)
# Pages show balances and personal data: never keep them in shared caches.
NOT_STORED = (*SECURITY_HEADERS, ("Cache-Control", "no-store"))


def _set_security_headers(response):
    """Every header above that the view did not set itself.

    Added together, the names already present looked up once: Headers.setdefault
    searches the whole list for each name, four times the cost on every response.
    """
    headers = response.headers
    wanted = NOT_STORED
    if not request.endpoint or request.endpoint.startswith("static"):
        wanted = SECURITY_HEADERS
    present = {name.lower() for name, _ in headers}  # Headers yields (name, value) pairs
    headers.extend([(name, value) for name, value in wanted if name.lower() not in present])
    return response


def _set_hsts(response):
    response.headers.setdefault("Strict-Transport-Security", "max-age=63072000; includeSubDomains")
    return response


def register(app: Flask) -> None:
    app.before_request(_refuse_nul_bytes)
    app.after_request(_set_security_headers)
    if app.config["PORTAL_ENV"] == "production":
        app.after_request(_set_hsts)
