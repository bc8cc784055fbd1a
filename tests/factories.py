"""Plain factory functions with valid defaults, and helpers for logging in."""

import itertools
import re

import pyotp
from flask.testing import FlaskClient
from sqlalchemy import select, update

from portal.accounts.models import Role, User
from portal.accounts.passwords import hash_password
from portal.db import db
from portal.timeutil import utcnow

DEFAULT_PASSWORD = "correct horse battery staple"
_sequence = itertools.count(1)


def make_user(**overrides) -> User:
    """Create and commit a customer (or whatever `overrides` say)."""
    password = overrides.pop("password", DEFAULT_PASSWORD)
    number = next(_sequence)
    values = {
        "email": f"customer{number}@example.com",
        "password_hash": hash_password(password),
        "role": Role.CUSTOMER,
    }
    values.update(overrides)
    user = User(**values)
    db.session.add(user)
    db.session.commit()
    return user


def make_staff(**overrides) -> User:
    """A staff member with an authenticator already set up (its secret on the row)."""
    overrides.setdefault("role", Role.STAFF)
    overrides.setdefault("email", f"staff{next(_sequence)}@example.com")
    overrides.setdefault("totp_secret", pyotp.random_base32())
    overrides.setdefault("totp_enrolled_at", utcnow())
    return make_user(**overrides)


def authenticator_code(email: str) -> str:
    """What the staff member's authenticator app shows now.

    Each log-in in a test stands for one in another 30-second step: the guard against a
    code used twice is forgotten here, and has tests of its own.
    """
    db.session.execute(update(User).where(User.email == email).values(totp_last_step=None))
    db.session.commit()
    secret = db.session.scalar(select(User.totp_secret).where(User.email == email))
    return pyotp.TOTP(secret).now()


_CSRF = re.compile(r'name="(?:[\w-]+-)?csrf_token" type="hidden" value="([^"]+)"')


def csrf_token(client: FlaskClient, path: str) -> str:
    """Fetch `path` and return the CSRF token of its first form."""
    page = client.get(path)
    match = _CSRF.search(page.get_data(as_text=True))
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def login_as(client: FlaskClient, user: User, password: str = DEFAULT_PASSWORD):
    """Log `user` in through the real log-in form (and, for staff, the code form)."""
    email = user.email
    token = csrf_token(client, "/login")
    response = client.post(
        "/login", data={"email": email, "password": password, "csrf_token": token}
    )
    assert response.status_code == 303, response.get_data(as_text=True)
    if response.headers["Location"].endswith("/login/second-factor"):
        token = csrf_token(client, "/login/second-factor")
        response = client.post(
            "/login/second-factor",
            data={"code": authenticator_code(email), "csrf_token": token},
        )
        assert response.status_code == 303, response.get_data(as_text=True)
    return response


def make_purchase(user: User, package: str = "pro", credited: bool = True, **overrides):
    """Create a paid purchase of `package`, credited through the ledger unless told not to."""
    from portal import policy
    from portal.billing.models import Purchase, PurchaseStatus
    from portal.ledger import services as ledger
    from portal.timeutil import utcnow

    chosen = policy.PACKAGES_BY_CODE[package]
    number = next(_sequence)
    now = overrides.pop("paid_at", None) or utcnow()
    values = {
        "user_id": user.id,
        "package_code": chosen.code,
        "credits": chosen.credits,
        "amount_cents": chosen.price_cents,
        "currency": chosen.currency,
        "status": PurchaseStatus.CREDITED if credited else PurchaseStatus.PAID,
        "stripe_checkout_session_id": f"cs_test_{number}",
        "stripe_payment_intent_id": f"pi_test_{number}",
        "created_at": now,
        "paid_at": now,
        "credited_at": now if credited else None,
    }
    values.update(overrides)
    purchase = Purchase(**values)
    db.session.add(purchase)
    db.session.flush()
    if credited:
        ledger.credit_purchase(purchase, f"purchase:{purchase.id}:credit", at=now)
    db.session.commit()
    return purchase


class QueryCounter:
    """Count the SQL statements an engine runs while the counter is active."""

    def __init__(self, engine):
        self.engine = engine
        self.statements: list[str] = []

    def _record(self, conn, cursor, statement, parameters, context, executemany):
        self.statements.append(statement)

    def __enter__(self):
        from sqlalchemy import event

        event.listen(self.engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *exc):
        from sqlalchemy import event

        event.remove(self.engine, "before_cursor_execute", self._record)

    @property
    def count(self) -> int:
        return len(self.statements)


def spend_history(user: User, jobs: int, credits: int = 1, fail_every: int = 0) -> None:
    """Charge `jobs` jobs through the jobs service (restoring every `fail_every`-th one)."""
    from portal.jobs import services as job_services
    from portal.jobs.models import FailureReason

    for number in range(jobs):
        job, _ = job_services.charge_job(f"hist-{user.id}-{number}", user.email, "upscale", credits)
        if fail_every and number % fail_every == 0:
            job_services.fail_job(job.id, FailureReason.PLATFORM_ERROR, "lost worker")


def quiet_sandbox(app, monkeypatch, webhooks: str):
    """Start a test with a clean Stripe sandbox: no faults left to inject by an earlier
    test, events delivered as `webhooks` says ("off" or "inline": never from a background
    thread), and no pauses between the Stripe library's retries. Returns the store."""
    import stripe

    store = app.extensions["stripe_sandbox"]
    with store.lock:
        store.failures_to_inject = 0
    monkeypatch.setitem(app.config, "SANDBOX_WEBHOOKS", webhooks)
    monkeypatch.setattr(stripe.HTTPClient, "_sleep_time_seconds", lambda self, retries: 0)
    return store
