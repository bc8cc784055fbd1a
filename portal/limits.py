"""Abuse limits: who is counted (the key) and how much they may do (from configuration).

Limits live in settings (RATELIMIT_*) so that operators can tune them and tests can make
them small. Counters are kept in Redis when REDIS_URL is set, so that every app server
shares them; in memory otherwise.
"""

import hashlib

from flask import current_app, request, session
from flask_login import current_user

DEFAULT_LIMITS = {
    "RATELIMIT_LOGIN_IP": "30 per 10 minutes",
    # Failed log-ins from one address to one account: the pauses grow with the failures
    # (a minute after 5, the rest of the hour after 10, the day after 20).
    "RATELIMIT_LOGIN_FAILURES": "5 per minute;10 per hour;20 per day",
    # Wrong authenticator codes for one staff member from one address.
    "RATELIMIT_SECOND_FACTOR": "5 per minute;20 per hour",
    "RATELIMIT_SIGNUP": "10 per hour",
    "RATELIMIT_PASSWORD_RESET": "5 per hour",
    "RATELIMIT_REFUND_REQUESTS": "5 per day",
    "RATELIMIT_CHECKOUT": "10 per minute",
    "RATELIMIT_JOBS_API": "6000 per minute",
}


def configured(name: str):
    """The limit named `name`, read from the app's settings when the request comes."""
    return lambda: current_app.config.get(name) or DEFAULT_LIMITS[name]


def client_address() -> str:
    return request.remote_addr or "unknown"


def login_pair() -> str:
    """The address and the account a log-in names, counted together.

    Counting per account alone would let anyone lock the owner out by failing on
    purpose; counting the pair slows the guesser and leaves the owner's own address be.
    """
    email = (request.form.get("email") or "").strip().lower()
    return f"login:{client_address()}:{hashlib.sha256(email.encode()).hexdigest()[:32]}"


def second_factor_attempt() -> str:
    """The staff member awaiting a second factor in this browser, and the address."""
    pending = session.get("second_factor")
    user_id = pending.get("user_id") if isinstance(pending, dict) else None
    return f"second-factor:{client_address()}:{user_id}"


def failed(response) -> bool:
    """Count only the attempts that were refused, not the ones that got in."""
    return response.status_code == 400


def customer() -> str:
    return f"user:{current_user.id}" if current_user.is_authenticated else client_address()


def service_token() -> str:
    token = request.headers.get("Authorization", "")
    return f"token:{hashlib.sha256(token.encode()).hexdigest()[:32]}"


def not_a_submission() -> bool:
    """Only the final submit of a refund request counts, not the review step."""
    return request.form.get("step") != "submit"
