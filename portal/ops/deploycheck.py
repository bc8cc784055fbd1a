"""What `flask check-deploy` looks for: settings that are unsafe in production.

In the spirit of Django's `check --deploy`: every problem is a sentence saying what to do.
"""

from flask import Flask

from portal.accounts.passwords import common_passwords

MIN_SECRET_LENGTH = 32
SANDBOX_WEBHOOK_SECRET = "whsec_sandbox"  # noqa: S105  (the sandbox's public, fake secret)


def deployment_problems(app: Flask) -> list[str]:
    """Return every unsafe production setting of `app`, or an empty list."""
    config = app.config
    problems = []
    if config["PORTAL_ENV"] != "production":
        problems.append("PORTAL_ENV is not 'production'.")
    if app.debug or config.get("DEBUG"):
        problems.append("Debug mode is on: turn FLASK_DEBUG off.")
    if config["PAYMENTS_MODE"] == "sandbox":
        problems.append("Payments run on the sandbox: set STRIPE_SECRET_KEY.")
    if config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        problems.append("The database is SQLite: set DATABASE_URL to PostgreSQL.")
    secret = config.get("SECRET_KEY") or ""
    if len(secret) < MIN_SECRET_LENGTH or secret.lower() in common_passwords():
        problems.append(
            f"SECRET_KEY is missing or weak: use at least {MIN_SECRET_LENGTH} random characters."
        )
    if (
        not config.get("STRIPE_WEBHOOK_SECRET")
        or config["STRIPE_WEBHOOK_SECRET"] == SANDBOX_WEBHOOK_SECRET
    ):
        problems.append("STRIPE_WEBHOOK_SECRET is not set: webhooks cannot be verified.")
    if not (config["SESSION_COOKIE_SECURE"] and config["REMEMBER_COOKIE_SECURE"]):
        problems.append("Cookies are not marked Secure.")
    if not config["SESSION_COOKIE_NAME"].startswith("__Host-"):
        problems.append("The session cookie lacks the __Host- prefix.")
    if len(config.get("PORTAL_SERVICE_TOKEN") or "") < MIN_SECRET_LENGTH:
        problems.append(
            f"PORTAL_SERVICE_TOKEN is missing or shorter than {MIN_SECRET_LENGTH} characters."
        )
    if not config["PROXY_FIX_COUNT"]:
        problems.append(
            "PROXY_FIX_COUNT is 0: behind a TLS proxy, client addresses and HTTPS "
            "are not seen (rate limits would count the proxy)."
        )
    if config["MAIL_BACKEND"] != "smtp":
        problems.append("MAIL_BACKEND is not 'smtp': e-mails would only be logged.")
    if not config.get("PORTAL_BASE_URL", "").startswith("https://"):
        problems.append(
            "PORTAL_BASE_URL is not an https:// address: links in e-mails would "
            "follow the request's Host header."
        )
    if not config.get("TRUSTED_HOSTS"):
        problems.append("TRUSTED_HOSTS is not set: requests for any host name are answered.")
    if not config["REDIS_URL"]:
        problems.append("REDIS_URL is not set: rate limits are counted per process.")
    return problems
