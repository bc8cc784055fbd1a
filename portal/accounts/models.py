"""Users: customers and staff, their credentials and account status."""

from datetime import datetime
from enum import StrEnum

from flask_login import UserMixin
from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, String, Text, false
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.db import UTCDateTime, db, enum_type
from portal.timeutil import utcnow


class Role(StrEnum):
    CUSTOMER = "customer"
    STAFF = "staff"


class AccountStatus(StrEnum):
    ACTIVE = "active"
    TERMINATED = "terminated"
    # Closed at the customer's request: personal data erased, financial records kept.
    CLOSED = "closed"


class User(UserMixin, db.Model):
    """A person who signs in: a customer holding a credit balance, or a staff member.

    The row doubles as the customer's account: `credits_balance` is locked with
    SELECT ... FOR UPDATE by every balance change, which serialises them per customer,
    and the ledger keeps the account's running totals on it too.
    """

    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint("credits_balance >= 0", name="balance_not_negative"),
        CheckConstraint(
            "low_balance_threshold IS NULL OR low_balance_threshold > 0",
            name="low_balance_threshold_positive",
        ),
        CheckConstraint(
            "auto_recharge_below IS NULL OR auto_recharge_below > 0",
            name="auto_recharge_below_positive",
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[Role] = mapped_column(enum_type(Role), default=Role.CUSTOMER)
    status: Mapped[AccountStatus] = mapped_column(
        enum_type(AccountStatus), default=AccountStatus.ACTIVE
    )
    terminated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    termination_reason: Mapped[str | None] = mapped_column(Text)
    credits_balance: Mapped[int] = mapped_column(default=0)
    # Running totals kept by the ledger beside the balance, so that the dashboard never
    # sums a long history: bought, used on jobs (net of failed jobs given back), taken
    # back by refunds (net of refunds that did not go through), and granted.
    credits_bought: Mapped[int] = mapped_column(default=0, server_default="0")
    credits_used: Mapped[int] = mapped_column(default=0, server_default="0")
    credits_refunded: Mapped[int] = mapped_column(default=0, server_default="0")
    credits_granted: Mapped[int] = mapped_column(default=0, server_default="0")
    # The low-balance alert (portal/ledger/alerts.py): None is off. "Armed" means the
    # balance has been at or above the threshold since the last alert was sent, so the
    # next job charge that leaves it below sends one. Both change only under the row lock
    # every balance change takes, which is what makes one crossing one e-mail.
    low_balance_threshold: Mapped[int | None]
    low_balance_alert_armed: Mapped[bool] = mapped_column(default=False, server_default=false())
    # Auto-recharge's trigger (portal/ledger/recharge_trigger.py): the balance below which
    # a job charge asks for a recharge, None while auto-recharge is off; and whether one
    # has been asked for and not yet taken up by the worker. Set under the same row lock
    # as the balance, so twenty charges crossing the threshold at once ask once.
    auto_recharge_below: Mapped[int | None]
    auto_recharge_wanted: Mapped[bool] = mapped_column(default=False, server_default=false())
    # None until the browser reports one or the customer picks one; pages then use UTC.
    timezone: Mapped[str | None] = mapped_column(String(64))
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    # Bumped whenever credentials change; sessions carrying an older value are refused.
    session_generation: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Staff's authenticator (base32 TOTP secret): offered at first log-in, in force once
    # a code from it was typed back (`totp_enrolled_at`). The last 30-second step used
    # is kept so that a code, once used, cannot be used again.
    totp_secret: Mapped[str | None] = mapped_column(String(64))
    totp_enrolled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)

    reset_tokens: Mapped[list["PasswordResetToken"]] = relationship(
        back_populates="user", cascade="all, delete-orphan"
    )

    @property
    def is_staff(self) -> bool:
        return self.role == Role.STAFF

    @property
    def below_low_balance_threshold(self) -> bool:
        """The customer set a low-balance alert and the balance is under it now."""
        threshold = self.low_balance_threshold
        return threshold is not None and self.credits_balance < threshold

    @property
    def is_terminated(self) -> bool:
        return self.status == AccountStatus.TERMINATED

    @property
    def known_to_the_platform(self) -> bool:
        """A customer the processing platform may name: not staff, not a closed account.

        A closed account's data is erased; its placeholder address must not become a
        way to spend the credits it still holds.
        """
        return self.role == Role.CUSTOMER and self.status != AccountStatus.CLOSED

    # The server-side session this request belongs to (set at log-in and by the loader).
    session_token = None

    def get_id(self) -> str:
        # What Flask-Login keeps in the session and the remember cookie: the generation
        # dies with a password change, the token with the server-side session.
        return f"{self.id}:{self.session_generation}:{self.session_token or ''}"

    def __repr__(self) -> str:
        return f"<User {self.id} {self.role}>"


class RecoveryCode(db.Model):
    """A one-time code that stands in for a staff member's lost authenticator; stored hashed."""

    __tablename__ = "recovery_codes"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AccountRequestKind(StrEnum):
    SIGN_UP = "sign_up"
    PASSWORD_RESET = "password_reset"  # noqa: S105  (a kind of request, not a secret)


class AccountRequest(db.Model):
    """A sign-up or reset asked for by whoever holds an e-mail address, answered by mail.

    The web answer only writes this row: the same work whether or not the address has an
    account, so neither the answer nor how long it takes says which. The worker then looks
    the address up and writes the e-mail that fits. A sign-up keeps its password's hash
    and, once e-mailed, the digest of the link that finishes it.
    """

    __tablename__ = "account_requests"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[AccountRequestKind] = mapped_column(enum_type(AccountRequestKind))
    email: Mapped[str] = mapped_column(String(254))
    password_hash: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class PasswordResetToken(db.Model):
    """A single-use, expiring password reset token; only its SHA-256 digest is stored."""

    __tablename__ = "password_reset_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship(back_populates="reset_tokens")


class UserSession(db.Model):
    """A signed-in browser: revocable on the server, unlike a cookie alone.

    The cookie carries a random token; only its SHA-256 digest is stored.
    """

    __tablename__ = "user_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ip_address: Mapped[str | None] = mapped_column(String(45))
    user_agent: Mapped[str | None] = mapped_column(String(255))
