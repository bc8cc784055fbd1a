"""Staff's second factor: an authenticator app (TOTP), with one-time recovery codes.

Staff move money, so a password alone does not open the staff pages. At their first
log-in a staff member scans a QR code into an authenticator app and types a code back;
from then on every log-in asks for a fresh code, or for one of ten recovery codes. A lost
device is reset by another staff member, never by the one who lost it, and the reset is
in the audit log.
"""

import hashlib
import hmac
import io
import secrets
from datetime import datetime, timedelta

import pyotp
import segno
from sqlalchemy import delete

from portal import audit
from portal.accounts import sessions
from portal.accounts.models import RecoveryCode, Role, User
from portal.db import db, locked, transactional
from portal.errors import Conflict, NotFound, ValidationError

ISSUER = "AI Image Studio"
RECOVERY_CODE_COUNT = 10
# Codes of the step before and after now are taken too: phones' clocks drift.
CLOCK_DRIFT_STEPS = 1
WRONG_CODE = "That code is not right. Type the 6 digits your app shows now, or a recovery code."


def _digest(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def _normalised(code: str) -> str:
    return "".join(code.split()).replace("-", "").lower()


@transactional
def offer_secret(user_id: int) -> str:
    """The secret a staff member is about to enrol: made once, kept until confirmed."""
    user = locked(User, User.id == user_id)
    if user.totp_secret is None:
        user.totp_secret = pyotp.random_base32()
    return user.totp_secret


def provisioning_uri(secret: str, email: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=ISSUER)


def qr_code_svg(secret: str, email: str) -> str:
    """The enrolment QR code as an SVG document, drawn here: no script, no third party."""
    buffer = io.BytesIO()
    segno.make(provisioning_uri(secret, email), error="m").save(
        buffer, kind="svg", scale=5, dark="#111827", light="#ffffff"
    )
    return buffer.getvalue().decode()


def _step_of(secret: str, code: str, now: datetime) -> int | None:
    """The 30-second step whose code this is, if any near `now`."""
    totp = pyotp.TOTP(secret)
    for drift in range(-CLOCK_DRIFT_STEPS, CLOCK_DRIFT_STEPS + 1):
        moment = now + timedelta(seconds=totp.interval * drift)
        if hmac.compare_digest(totp.at(moment), code):
            return totp.timecode(moment)
    return None


@transactional
def enrol(user_id: int, code: str, now: datetime) -> list[str]:
    """Put the offered authenticator in force; return the recovery codes, shown once.

    :raises ValidationError: the code does not match the offered secret.
    :raises Conflict: the staff member is enrolled already.
    """
    user = locked(User, User.id == user_id)
    if user.totp_enrolled_at is not None:
        raise Conflict("Your authenticator is set up already.")
    step = _step_of(user.totp_secret or "", _normalised(code), now) if user.totp_secret else None
    if step is None:
        raise ValidationError(WRONG_CODE, field="code")
    user.totp_enrolled_at = now
    user.totp_last_step = step
    codes = [_new_recovery_code() for _ in range(RECOVERY_CODE_COUNT)]
    db.session.add_all(
        RecoveryCode(user_id=user.id, code_hash=_digest(_normalised(fresh))) for fresh in codes
    )
    audit.record("staff.second_factor_enrolled", "user", user.id, actor_id=user.id)
    return codes


def _new_recovery_code() -> str:
    # 50 random bits, written as two groups of five letters and digits.
    raw = secrets.token_hex(5)
    return f"{raw[:5]}-{raw[5:]}"


@transactional
def verify(user_id: int, code: str, now: datetime) -> User:
    """Accept a fresh authenticator code or an unused recovery code, each only once.

    :raises ValidationError: neither.
    """
    user = locked(User, User.id == user_id)
    code = _normalised(code)
    if user.totp_enrolled_at is None:
        raise ValidationError(WRONG_CODE, field="code")
    step = _step_of(user.totp_secret, code, now) if len(code) == 6 and code.isdigit() else None
    if step is not None and step > (user.totp_last_step or 0):
        user.totp_last_step = step
        return user
    recovery = locked(
        RecoveryCode,
        RecoveryCode.user_id == user.id,
        RecoveryCode.code_hash == _digest(code),
        RecoveryCode.used_at.is_(None),
    )
    if recovery is None:
        raise ValidationError(WRONG_CODE, field="code")
    recovery.used_at = now
    audit.record("staff.recovery_code_used", "user", user.id, actor_id=user.id)
    return user


@transactional
def reset(member_id: int, actor_id: int, now: datetime, ip_address: str | None) -> User:
    """Take away a staff member's authenticator after a lost device; they enrol again.

    Their sessions end with it. Nobody resets their own: that would let a stolen
    password replace the authenticator.

    :raises NotFound: no such staff member.
    :raises Conflict: the actor is the member.
    """
    if member_id == actor_id:
        raise Conflict("Another staff member has to reset your authenticator.")
    member = locked(User, User.id == member_id, User.role == Role.STAFF)
    if member is None:
        raise NotFound("no such staff member")
    member.totp_secret = None
    member.totp_enrolled_at = None
    member.totp_last_step = None
    db.session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == member.id))
    member.session_generation += 1
    sessions.end_all(member, now)
    audit.record(
        "staff.second_factor_reset", "user", member.id, actor_id=actor_id, ip_address=ip_address
    )
    return member
