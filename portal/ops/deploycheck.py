"""Settings that are unsafe in production: one list, read by two.

`flask check-deploy` prints every problem (in the spirit of Django's `check --deploy`),
and `create_app` refuses to start in production while any problem that `refuses_start`
remains, naming each; the others are logged as warnings at every start. Every problem is
a sentence saying what to do.
"""

import logging
from collections.abc import Iterator
from dataclasses import dataclass

from flask import Flask

from portal.config import ConfigError

MIN_SECRET_LENGTH = 32
SANDBOX_WEBHOOK_SECRET = "whsec_sandbox"  # noqa: S105  (the sandbox's public, fake secret)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    message: str
    # True where running on would put money, accounts or sessions at risk; False where a
    # deployment may have its reasons (TLS ended by gunicorn itself, one server only).
    refuses_start: bool


def _problems(app: Flask) -> Iterator[Problem]:
    config = app.config
    if config["PORTAL_ENV"] != "production":
        yield Problem("PORTAL_ENV is not 'production'.", False)
    if app.debug or config.get("DEBUG"):
        yield Problem("Debug mode is on: turn FLASK_DEBUG off.", True)
    if config["PAYMENTS_MODE"] == "sandbox":
        yield Problem("Payments run on the sandbox: set STRIPE_SECRET_KEY.", True)
    if config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        yield Problem("The database is SQLite: set DATABASE_URL to PostgreSQL.", True)
    # Length alone: no common password is this long (tests/test_config.py keeps it so),
    # and asking the list would load zxcvbn's dictionaries, 11 MB, into every worker.
    secret = config.get("SECRET_KEY") or ""
    if len(secret) < MIN_SECRET_LENGTH:
        yield Problem(
            f"SECRET_KEY is missing or weak: use at least {MIN_SECRET_LENGTH} random characters.",
            True,
        )
    if (
        not config.get("STRIPE_WEBHOOK_SECRET")
        or config["STRIPE_WEBHOOK_SECRET"] == SANDBOX_WEBHOOK_SECRET
    ):
        yield Problem("STRIPE_WEBHOOK_SECRET is not set: webhooks cannot be verified.", True)
    if not (config["SESSION_COOKIE_SECURE"] and config["REMEMBER_COOKIE_SECURE"]):
        yield Problem("Cookies are not marked Secure.", True)
    if not config["SESSION_COOKIE_NAME"].startswith("__Host-"):
        yield Problem("The session cookie lacks the __Host- prefix.", True)
    if len(config.get("PORTAL_SERVICE_TOKEN") or "") < MIN_SECRET_LENGTH:
        yield Problem(
            f"PORTAL_SERVICE_TOKEN is missing or shorter than {MIN_SECRET_LENGTH} characters.",
            True,
        )
    if not config.get("PORTAL_BASE_URL", "").startswith("https://"):
        yield Problem(
            "PORTAL_BASE_URL is not an https:// address: links in e-mails would "
            "follow the request's Host header.",
            True,
        )
    if not config["PROXY_FIX_COUNT"]:
        yield Problem(
            "PROXY_FIX_COUNT is 0: behind a TLS proxy, client addresses and HTTPS "
            "are not seen (rate limits would count the proxy).",
            False,
        )
    if config["MAIL_BACKEND"] != "smtp":
        yield Problem("MAIL_BACKEND is not 'smtp': e-mails would only be logged.", False)
    if not config.get("TRUSTED_HOSTS"):
        yield Problem("TRUSTED_HOSTS is not set: requests for any host name are answered.", False)
    if not config["REDIS_URL"]:
        yield Problem("REDIS_URL is not set: rate limits are counted per process.", False)
    if not config.get("PROMETHEUS_MULTIPROC_DIR"):
        yield Problem(
            "PROMETHEUS_MULTIPROC_DIR is not set: under gunicorn's several workers, "
            "/metrics counts only the worker that answers the scrape.",
            False,
        )


def deployment_problems(app: Flask) -> list[str]:
    """Return every unsafe production setting of `app`, or an empty list."""
    return [problem.message for problem in _problems(app)]


def refuse_unsafe_production(app: Flask) -> None:
    """In production, raise ConfigError naming every problem that refuses start.

    The remaining problems are logged as warnings. Outside production nothing is checked:
    development and the tests run on SQLite and the sandbox on purpose.
    """
    if app.config["PORTAL_ENV"] != "production":
        return
    problems = list(_problems(app))
    for problem in problems:
        if not problem.refuses_start:
            log.warning("Deployment: %s", problem.message)
    refusals = [problem.message for problem in problems if problem.refuses_start]
    if refusals:
        listed = "\n".join(f"- {message}" for message in refusals)
        raise ConfigError(
            f"Refusing to start in production: {len(refusals)} unsafe setting(s).\n{listed}"
        )
