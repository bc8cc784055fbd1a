"""Accounts: sign-up, authentication, passwords, staff role and termination."""

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import available_timezones

from flask import current_app
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from portal.accounts import sessions
from portal.accounts.models import (
    AccountRequest,
    AccountRequestKind,
    AccountStatus,
    PasswordResetToken,
    Role,
    User,
)
from portal.accounts.passwords import (
    hash_password,
    needs_rehash,
    password_problems,
    verify_password,
)
from portal.db import MAX_ID, db, locked, transactional
from portal.errors import Conflict, ValidationError
from portal.notifications.services import queue_email
from portal.timeutil import utcnow

RESET_TOKEN_LIFETIME = timedelta(hours=1)
SIGN_UP_LINK_LIFETIME = timedelta(days=1)
# Answered requests are deleted after this, with the password hash of a sign-up never
# finished: long enough for the link to expire, no longer.
ACCOUNT_REQUESTS_KEPT = timedelta(days=2)


@dataclass(frozen=True)
class AccountLinks:
    """The links account e-mails carry. Routes belong to the web layer, which builds them."""

    log_in: Callable[[], str]
    finish_sign_up: Callable[[str], str]  # from the link's raw token
    reset_password: Callable[[str], str]


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def user_by_email(email: str) -> User | None:
    """Return the user with this e-mail (compared in lower case), if any."""
    return db.session.scalar(select(User).where(User.email == email.strip().lower()))


def user_by_id(user_id) -> User | None:
    """The user with this id, for ids the portal itself stored (a session's, say)."""
    if not isinstance(user_id, int) or not 0 < user_id <= MAX_ID:
        return None
    return db.session.get(User, user_id)


def load_user_from_session(session_id: str) -> User | None:
    """Resolve Flask-Login's `id:generation:token` value to a user with a live session.

    A stale generation (password changed) or an ended server-side session (log-out,
    timeout) gives None: the browser is logged out, whatever cookies it still holds.
    """
    user_id, generation, token = (session_id.split(":") + ["", ""])[:3]
    if not (user_id.isascii() and user_id.isdigit() and generation.isdigit() and token):
        return None
    if int(user_id) > MAX_ID:
        return None
    user = sessions.signed_in_user(int(user_id), token, utcnow())
    if user is None or user.session_generation != int(generation):
        return None
    user.session_token = token
    return user


@transactional
def log_in(user: User, ip_address: str | None, user_agent: str | None) -> str:
    """Open a server-side session for a user who just proved who they are."""
    token = sessions.start(user, utcnow(), ip_address, user_agent)
    return token


@transactional
def log_out(user: User) -> None:
    """End the user's current server-side session."""
    sessions.end(user.session_token, utcnow())


def register_user(email: str, password: str) -> User:
    """Create a customer account.

    :raises ValidationError: the e-mail is taken or the password is unacceptable.
    """
    email = email.strip().lower()
    problems = password_problems(password, email)
    if problems:
        raise ValidationError(" ".join(problems), field="password")
    user = User(email=email, password_hash=hash_password(password), role=Role.CUSTOMER)
    db.session.add(user)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise ValidationError(
            "An account with this e-mail already exists.", field="email"
        ) from None
    return user


# Verifying against a throwaway hash when the e-mail is unknown keeps the response time
# the same for known and unknown addresses, so timing does not reveal who has an account.
_DUMMY_HASH: dict[str, str] = {}


@transactional
def authenticate(email: str, password: str) -> User | None:
    """Return the user whose e-mail and password match, or None; rehash old hashes."""
    user = user_by_email(email)
    if user is None:
        profile = current_app.config["PASSWORD_HASH_PROFILE"]
        if profile not in _DUMMY_HASH:
            _DUMMY_HASH[profile] = hash_password(secrets.token_hex(16))
        verify_password(_DUMMY_HASH[profile], password)
        return None
    if not verify_password(user.password_hash, password):
        return None
    if needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    user.last_login_at = utcnow()
    return user


@transactional
def change_password(user: User, current_password: str, new_password: str) -> None:
    """Replace the user's password and end their other sessions.

    :raises ValidationError: the current password is wrong or the new one unacceptable.
    """
    if not verify_password(user.password_hash, current_password):
        raise ValidationError("Your current password is not correct.", field="current_password")
    _set_password(user, new_password)


def _set_password(user: User, new_password: str) -> None:
    """The one place a password changes: every session elsewhere and every reset link end.

    A reset link proves access to the mailbox at the time it was sent; once the password
    has moved on, by that link, another one or the account page, none may set it again.
    """
    problems = password_problems(new_password, user.email)
    if problems:
        raise ValidationError(" ".join(problems), field="password")
    now = utcnow()
    user.password_hash = hash_password(new_password)
    user.session_generation += 1
    sessions.end_all(user, now)
    db.session.execute(
        update(PasswordResetToken)
        .where(PasswordResetToken.user_id == user.id, PasswordResetToken.used_at.is_(None))
        .values(used_at=now)
    )


@transactional
def ask_to_sign_up(email: str, password: str) -> None:
    """Record a sign-up; the worker e-mails the address a link to finish it.

    The answer is the same whether the address is free or already has an account
    (then the e-mail says so instead): sign-up reveals no one.

    :raises ValidationError: the password is unacceptable.
    """
    email = email.strip().lower()
    problems = password_problems(password, email)
    if problems:
        raise ValidationError(" ".join(problems), field="password")
    db.session.add(
        AccountRequest(
            kind=AccountRequestKind.SIGN_UP, email=email, password_hash=hash_password(password)
        )
    )


@transactional
def ask_for_password_reset(email: str) -> None:
    """Record a reset request; the worker e-mails a link if the address has an account."""
    db.session.add(
        AccountRequest(kind=AccountRequestKind.PASSWORD_RESET, email=email.strip().lower())
    )


@transactional
def answer_account_requests(now: datetime, links: AccountLinks, limit: int = 100) -> int:
    """E-mail what fits each unanswered request; forget old ones. Return how many answered.

    Several workers may run: each claims rows no other holds.
    """
    requests = db.session.scalars(
        select(AccountRequest)
        .where(AccountRequest.answered_at.is_(None))
        .order_by(AccountRequest.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    for request in requests:
        user = user_by_email(request.email)
        if request.kind == AccountRequestKind.SIGN_UP:
            _answer_sign_up(request, user, now, links)
        elif user is not None:
            _send_reset_link(user, now, links)
        request.answered_at = now
    db.session.execute(
        delete(AccountRequest).where(AccountRequest.created_at < now - ACCOUNT_REQUESTS_KEPT)
    )
    return len(requests)


def _answer_sign_up(
    request: AccountRequest, user: User | None, now: datetime, links: AccountLinks
) -> None:
    if user is not None:
        request.password_hash = None
        queue_email(
            request.email,
            "You already have an account",
            "Someone (hopefully you) tried to sign up for AI Image Studio with this e-mail, "
            "but it already has an account.\n\n"
            f"Log in: {links.log_in()}\n\n"
            "If you forgot the password, ask for a reset link there. "
            "If it was not you, you can ignore this e-mail: nothing has changed.",
        )
        return
    token = secrets.token_urlsafe(32)
    request.token_hash = _token_digest(token)
    request.expires_at = now + SIGN_UP_LINK_LIFETIME
    queue_email(
        request.email,
        "Finish creating your account",
        "Someone (hopefully you) asked to create an AI Image Studio account with this "
        "e-mail.\n\n"
        f"Open this link within a day to finish:\n{links.finish_sign_up(token)}"
        "\n\nIf it was not you, ignore this e-mail and no account will be created.",
    )


def _send_reset_link(user: User, now: datetime, links: AccountLinks) -> None:
    token = secrets.token_urlsafe(32)
    db.session.add(
        PasswordResetToken(
            user=user,
            token_hash=_token_digest(token),
            created_at=now,
            expires_at=now + RESET_TOKEN_LIFETIME,
        )
    )
    minutes = int(RESET_TOKEN_LIFETIME.total_seconds() // 60)
    link = links.reset_password(token)
    queue_email(
        user.email,
        "Reset your password",
        "Someone (hopefully you) asked to reset the password of your AI Image Studio account.\n\n"
        f"Open this link within {minutes} minutes to choose a new password:\n{link}\n\n"
        "The link works once. If you did not ask for it, you can ignore this e-mail.",
    )


def pending_sign_up(token: str, now: datetime) -> AccountRequest | None:
    """The sign-up a link finishes, if the link is live."""
    request = db.session.scalar(
        select(AccountRequest).where(
            AccountRequest.token_hash == _token_digest(token),
            AccountRequest.kind == AccountRequestKind.SIGN_UP,
        )
    )
    if request is None or request.used_at is not None or request.expires_at <= now:
        return None
    return request


@transactional
def finish_sign_up(token: str, now: datetime) -> User:
    """Create the account a sign-up link stands for; the link then works no more.

    :raises ValidationError: the link is invalid, used or expired.
    :raises Conflict: the address got an account in the meantime.
    """
    request = locked(AccountRequest, AccountRequest.token_hash == _token_digest(token))
    if (
        request is None
        or request.kind != AccountRequestKind.SIGN_UP
        or request.used_at is not None
        or request.expires_at <= now
    ):
        raise ValidationError("This link is invalid or has expired.", field="token")
    if user_by_email(request.email) is not None:
        raise Conflict("You already have an account with this e-mail: log in.")
    user = User(email=request.email, password_hash=request.password_hash, role=Role.CUSTOMER)
    db.session.add(user)
    try:
        db.session.flush()
    except IntegrityError:
        # Another link for the same address was used at the same moment.
        raise Conflict("You already have an account with this e-mail: log in.") from None
    request.used_at = now
    request.password_hash = None
    return user


def reset_token_user(token: str) -> User | None:
    """Return the user a reset token belongs to, if it is unused and unexpired."""
    row = db.session.scalar(
        select(PasswordResetToken).where(PasswordResetToken.token_hash == _token_digest(token))
    )
    if row is None or row.used_at is not None or row.expires_at <= utcnow():
        return None
    return row.user


@transactional
def reset_password(token: str, new_password: str) -> User:
    """Set a new password through a reset token, using the token up.

    :raises ValidationError: the token is invalid, used or expired, or the password weak.
    """
    row = db.session.scalar(
        select(PasswordResetToken)
        .where(PasswordResetToken.token_hash == _token_digest(token))
        .with_for_update()
    )
    if row is None or row.used_at is not None or row.expires_at <= utcnow():
        raise ValidationError("This reset link is invalid or has expired.", field="token")
    _set_password(row.user, new_password)
    return row.user


@transactional
def create_or_promote_staff(email: str, password: str | None) -> tuple[User, bool]:
    """Give `email` the staff role, creating the account if needed; return (user, created).

    :raises ValidationError: a new account's password is unacceptable.
    """
    email = email.strip().lower()
    user = user_by_email(email)
    created = user is None
    if created:
        if password is None:
            raise ValidationError("A password is needed for a new account.", field="password")
        problems = password_problems(password, email)
        if problems:
            raise ValidationError(" ".join(problems), field="password")
        user = User(email=email, password_hash=hash_password(password))
        db.session.add(user)
    elif password is not None:
        _set_password(user, password)
    user.role = Role.STAFF
    if not created:
        # A change of privilege starts every session of the user afresh.
        user.session_generation += 1
        sessions.end_all(user, utcnow())
    return user, created


@transactional
def terminate_account(user: User, reason: str, now: datetime | None = None) -> None:
    """Terminate an account for a terms violation, as a transaction of its own."""
    mark_terminated(user, reason, now or utcnow())


def mark_terminated(user: User, reason: str, now: datetime) -> None:
    """Terminate an account for a terms violation, in the caller's transaction.

    The account keeps read access to its history, but every session it had ends: the
    customer logs in again and meets the notice, rather than carrying on in a browser
    that still believes it can buy.
    """
    user.status = AccountStatus.TERMINATED
    user.termination_reason = reason
    user.terminated_at = now
    user.session_generation += 1
    sessions.end_all(user, now)


@transactional
def update_timezone(user: User, timezone: str) -> None:
    """Store the timezone the customer's pages show times in.

    :raises ValidationError: `timezone` is not an IANA timezone name.
    """
    if timezone not in available_timezones():
        raise ValidationError("Choose a timezone from the list.", field="timezone")
    user.timezone = timezone
