"""Settings from environment variables, with defaults that are safe to run locally.

`load_config(environ, instance_path)` returns a plain dict for `app.config`; nothing is
read at import time, so tests build apps with their own environment.
"""

import ipaddress
import os
import secrets
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

from portal.limits import DEFAULT_LIMITS

ENVIRONMENTS = ("development", "production", "testing")
PAYMENTS_MODES = ("sandbox", "stripe")


class ConfigError(RuntimeError):
    """A setting is missing or unsafe for the environment the app runs in."""


def flag(value: str | None, default: bool = False) -> bool:
    """A yes/no setting: 1, true, yes or on; `default` when unset or empty."""
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def database_url(url: str) -> str:
    """Return `url` with the psycopg 3 driver named, as SQLAlchemy needs it."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _development_secret_key(instance_path: Path) -> str:
    """Read the secret key kept under instance/, making one on first run."""
    key_file = instance_path / "secret_key"
    if key_file.exists():
        return key_file.read_text().strip()
    instance_path.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    key_file.write_text(key)
    key_file.chmod(0o600)
    return key


def load_config(environ: Mapping[str, str], instance_path: Path) -> dict:
    """Build the app's settings from `environ`; raise ConfigError when one is invalid.

    Whether the settings are safe for production is judged on the built app, with every
    override applied, by `portal.ops.deploycheck` (one list for `create_app` and for
    `flask check-deploy`).
    """
    env = environ.get("PORTAL_ENV", "development")
    if env not in ENVIRONMENTS:
        raise ConfigError(f"PORTAL_ENV must be one of {', '.join(ENVIRONMENTS)}")
    production = env == "production"

    secret_key = environ.get("SECRET_KEY", "")
    if not secret_key and not production:
        # Production never makes one up: it refuses to start without (deploycheck).
        secret_key = _development_secret_key(instance_path)

    base_url = environ.get("PORTAL_BASE_URL", "").rstrip("/")

    stripe_key = environ.get("STRIPE_SECRET_KEY", "")
    payments_mode = environ.get("PAYMENTS_MODE") or ("stripe" if stripe_key else "sandbox")
    if payments_mode not in PAYMENTS_MODES:
        raise ConfigError(f"PAYMENTS_MODE must be one of {', '.join(PAYMENTS_MODES)}")

    default_db = f"sqlite:///{instance_path / 'portal.db'}"
    redis_url = environ.get("REDIS_URL", "")

    limits = {name: environ.get(name) or default for name, default in DEFAULT_LIMITS.items()}
    return {
        **limits,
        "PORTAL_ENV": env,
        "TESTING": env == "testing",
        "SECRET_KEY": secret_key,
        "SQLALCHEMY_DATABASE_URI": database_url(environ.get("DATABASE_URL", default_db)),
        # pre_ping turns a restarted database into one failed check, not a failed request.
        "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True},
        "PAYMENTS_MODE": payments_mode,
        "STRIPE_SECRET_KEY": stripe_key or "sk_test_sandbox",
        "STRIPE_WEBHOOK_SECRET": environ.get("STRIPE_WEBHOOK_SECRET", "")
        or ("whsec_sandbox" if payments_mode == "sandbox" else ""),
        # The previous secret stays valid while the endpoint secret is being rotated.
        "STRIPE_WEBHOOK_SECRET_PREVIOUS": environ.get("STRIPE_WEBHOOK_SECRET_PREVIOUS", ""),
        "STRIPE_API_BASE": environ.get("STRIPE_API_BASE", ""),
        # Sandbox only: how events reach the webhook (thread, inline or off) and how long
        # a delayed payment or a refund takes to settle.
        "SANDBOX_WEBHOOKS": environ.get("SANDBOX_WEBHOOKS", "thread"),
        "SANDBOX_DELAYED_SECONDS": float(environ.get("SANDBOX_DELAYED_SECONDS", "15")),
        "SANDBOX_REFUND_SECONDS": float(environ.get("SANDBOX_REFUND_SECONDS", "5")),
        # A refund claimed by a worker that died before Stripe answered is sent again
        # (same idempotency key) after this long.
        "REFUND_RESEND_AFTER_SECONDS": float(environ.get("REFUND_RESEND_AFTER_SECONDS", "60")),
        "PORTAL_SERVICE_TOKEN": environ.get("PORTAL_SERVICE_TOKEN", ""),
        "SUPPORT_EMAIL": environ.get("SUPPORT_EMAIL", "support@aiimagestudio.example"),
        "MAIL_BACKEND": environ.get("MAIL_BACKEND", "smtp" if production else "log"),
        "MAIL_SERVER": environ.get("MAIL_SERVER", "localhost"),
        "MAIL_PORT": int(environ.get("MAIL_PORT", "25")),
        "MAIL_USERNAME": environ.get("MAIL_USERNAME", ""),
        "MAIL_PASSWORD": environ.get("MAIL_PASSWORD", ""),
        "MAIL_USE_TLS": flag(environ.get("MAIL_USE_TLS")),
        "MAIL_FROM": environ.get("MAIL_FROM", "AI Image Studio <no-reply@aiimagestudio.example>"),
        "REDIS_URL": redis_url,
        "RATELIMIT_STORAGE_URI": redis_url or "memory://",
        # A lost Redis must not take log-in or the jobs API down: each process counts in
        # memory until Redis answers again, and a dead Redis is given up on within a second.
        "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED": True,
        "RATELIMIT_STORAGE_OPTIONS": (
            {"socket_connect_timeout": 1, "socket_timeout": 1} if redis_url else {}
        ),
        "RATELIMIT_ENABLED": flag(environ.get("RATELIMIT_ENABLED"), default=env != "testing"),
        "RATELIMIT_HEADERS_ENABLED": True,
        # Argon2id with OWASP's minimum (19 MiB, 2 passes, 1 lane); tests use a cheap profile.
        "PASSWORD_HASH_PROFILE": "fast-for-tests" if env == "testing" else "owasp",
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": production,
        # "Keep me logged in" survives closing the browser, never the 12-hour session limit.
        "REMEMBER_COOKIE_DURATION": timedelta(hours=12),
        # __Host- cookies are only accepted over HTTPS, for this exact host, on path /.
        "SESSION_COOKIE_NAME": "__Host-portal-session" if production else "portal-session",
        "REMEMBER_COOKIE_NAME": "__Host-portal-remember" if production else "portal-remember",
        "REMEMBER_COOKIE_HTTPONLY": True,
        "REMEMBER_COOKIE_SAMESITE": "Lax",
        "REMEMBER_COOKIE_SECURE": production,
        "PREFERRED_URL_SCHEME": "https" if production else "http",
        "MAX_CONTENT_LENGTH": 16 * 1024 * 1024,
        "WTF_CSRF_TIME_LIMIT": None,
        "PROXY_FIX_COUNT": int(environ.get("PROXY_FIX_COUNT", "0")),
        # The address customers use, for links in e-mails and Stripe's return URLs; taken
        # from the request when unset (development), never from it in production.
        "PORTAL_BASE_URL": base_url,
        "TRUSTED_HOSTS": [
            host.strip() for host in environ.get("TRUSTED_HOSTS", "").split(",") if host.strip()
        ]
        or None,
        # /metrics answers these networks, or anyone with the bearer token.
        "METRICS_TOKEN": environ.get("METRICS_TOKEN", ""),
        "METRICS_NETWORKS": [
            ipaddress.ip_network(network.strip())
            for network in environ.get("METRICS_NETWORKS", "127.0.0.1/32,::1/128").split(",")
            if network.strip()
        ],
        # Where earlier releases kept refund screenshots on disk. Read once, by the
        # migration that moves them into the database; nothing else uses it.
        "UPLOAD_FOLDER": environ.get("UPLOAD_FOLDER") or str(instance_path / "uploads"),
        # Where gunicorn's workers keep their counters so that /metrics adds them up
        # (prometheus_client reads the variable itself; kept here for check-deploy).
        "PROMETHEUS_MULTIPROC_DIR": environ.get("PROMETHEUS_MULTIPROC_DIR", ""),
    }


def instance_path_default() -> Path:
    """Return the instance/ folder beside the package."""
    return Path(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) / "instance"
