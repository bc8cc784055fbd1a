"""Purchases made through Stripe Checkout, refunds sent back, and Stripe events received."""

from datetime import datetime
from enum import StrEnum

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Index, String, Text, false, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.accounts.models import User
from portal.db import UTCDateTime, db, enum_type
from portal.timeutil import utcnow


class PurchaseStatus(StrEnum):
    PENDING = "pending"
    PAID = "paid"
    CREDITED = "credited"
    FAILED = "failed"
    EXPIRED = "expired"
    REFUNDED = "refunded"
    PARTIALLY_REFUNDED = "partially_refunded"
    DISPUTED = "disputed"


class PurchaseOrigin(StrEnum):
    # The customer bought it through Stripe Checkout.
    CHECKOUT = "checkout"
    # Auto-recharge charged the customer's saved card (a PaymentIntent, no session).
    AUTO_RECHARGE = "auto_recharge"


# How a receipt names the payment methods Stripe reports (card brands, bank accounts).
PAYMENT_METHOD_NAMES = {
    "visa": "Visa",
    "mastercard": "Mastercard",
    "amex": "American Express",
    "discover": "Discover",
    "jcb": "JCB",
    "diners": "Diners Club",
    "unionpay": "UnionPay",
    "us_bank_account": "Bank account",
}


class Purchase(db.Model):
    """One Checkout Session for one credit package."""

    __tablename__ = "purchases"
    __table_args__ = (
        CheckConstraint("credits > 0", name="credits_positive"),
        CheckConstraint("amount_cents >= 0", name="amount_not_negative"),
        CheckConstraint(
            "refunded_cents >= 0 AND refunded_cents <= amount_cents",
            name="refunded_within_amount",
        ),
        # Refunds the portal has approved (scheduled, sent or settled) can never add up to
        # more than was paid: the database refuses the approval that would cross the line.
        CheckConstraint(
            "committed_refund_cents >= 0 AND committed_refund_cents <= amount_cents",
            name="committed_refunds_within_amount",
        ),
        Index("ix_purchases_user_created", "user_id", "created_at"),
        # The purchases pages list a customer's purchases newest first, by id.
        Index("ix_purchases_user_id_desc", "user_id", "id"),
        # At most one auto-recharge in flight per customer, whatever races to start one.
        Index(
            "uq_purchases_one_recharge_in_flight",
            "user_id",
            unique=True,
            postgresql_where=text("origin = 'auto_recharge' AND status = 'pending'"),
            sqlite_where=text("origin = 'auto_recharge' AND status = 'pending'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    package_code: Mapped[str] = mapped_column(String(32))
    credits: Mapped[int]
    amount_cents: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3), default="usd")
    status: Mapped[PurchaseStatus] = mapped_column(
        enum_type(PurchaseStatus), default=PurchaseStatus.PENDING
    )
    origin: Mapped[PurchaseOrigin] = mapped_column(
        enum_type(PurchaseOrigin), default=PurchaseOrigin.CHECKOUT, server_default="checkout"
    )
    # An auto-recharge whose bank asked for the cardholder: since when it has waited for
    # them to confirm it on-session (None otherwise).
    needs_customer_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    stripe_checkout_session_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    stripe_charge_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    receipt_url: Mapped[str | None] = mapped_column(Text)
    # How it was paid, as Stripe's charge reports it: "visa" (or "us_bank_account"), the
    # last four digits for the receipt, and the fingerprint that is the same for the same
    # card, which tells a duplicate charge from a second purchase on another card.
    payment_method_brand: Mapped[str | None] = mapped_column(String(32))
    payment_method_last4: Mapped[str | None] = mapped_column(String(4))
    payment_method_fingerprint: Mapped[str | None] = mapped_column(String(64))
    # Whether the customer asked to save their card: part of the Checkout Session's
    # parameters, so a second click reuses this pending purchase only with the same choice
    # (Stripe refuses an idempotency key sent again with other parameters).
    saves_card: Mapped[bool] = mapped_column(default=False, server_default=false())
    # The invoice Checkout made for the payment (`invoice_creation`): its number, and
    # Stripe's hosted page and PDF, which the receipt links to.
    stripe_invoice_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    invoice_number: Mapped[str | None] = mapped_column(String(64))
    invoice_url: Mapped[str | None] = mapped_column(Text)
    invoice_pdf_url: Mapped[str | None] = mapped_column(Text)
    refunded_cents: Mapped[int] = mapped_column(default=0)
    committed_refund_cents: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    credited_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship()
    refunds: Mapped[list["Refund"]] = relationship(back_populates="purchase")

    @property
    def credit_key(self) -> str:
        """The ledger key of adding this purchase's credits: at most once, whoever does it."""
        return f"purchase:{self.id}:credit"

    def outside_refund_key(self, number: int) -> str:
        """The ledger key of the `number`th credit change for refunds made outside the portal."""
        return f"purchase:{self.id}:outside-refund:{number}"

    @property
    def refund_can_be_requested(self) -> bool:
        """Paid, not disputed with the bank, and not already refunded in full."""
        return self.paid_at is not None and self.nothing_to_refund_because is None

    @property
    def nothing_to_refund_because(self) -> str | None:
        """Why a paid purchase has nothing left to ask a refund of, in a few words; None
        while something is left (or it was never paid)."""
        if self.paid_at is None:
            return None
        if self.status == PurchaseStatus.DISPUTED:
            return "Disputed with your bank"
        if self.refunded_cents >= self.amount_cents:
            return "Refunded in full"
        # Approved in full but still on its way (the undo window, or at the bank).
        if self.committed_refund_cents >= self.amount_cents:
            return "Full refund on its way"
        return None

    @property
    def is_recharge(self) -> bool:
        return self.origin == PurchaseOrigin.AUTO_RECHARGE

    @property
    def history_memo(self) -> str:
        """How the balance history names the credits this purchase added."""
        package = f"{self.package_code.capitalize()} package"
        return f"{package}, auto-recharge" if self.is_recharge else package

    @property
    def payment_method_words(self) -> str | None:
        """The payment method as a receipt names it ("Visa ending in 4242"); None when
        Stripe did not say."""
        if not self.payment_method_last4:
            return None
        brand = PAYMENT_METHOD_NAMES.get(self.payment_method_brand or "")
        brand = brand or (self.payment_method_brand or "Card").replace("_", " ").title()
        return f"{brand} ending in {self.payment_method_last4}"

    def __repr__(self) -> str:
        return f"<Purchase {self.id} {self.package_code} {self.status}>"


class RefundStatus(StrEnum):
    SCHEDULED = "scheduled"
    PENDING = "pending"
    REQUIRES_ACTION = "requires_action"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


# Why Stripe says a refund failed (a refund's `failure_reason`), as the customer reads it.
REFUND_FAILURE_WORDS = {
    "expired_or_canceled_card": "the card you paid with has expired or was cancelled",
    "lost_or_stolen_card": "the card you paid with was reported lost or stolen",
    "declined": "your bank declined it",
    "insufficient_funds": "our payment provider could not send it yet",
    "merchant_request": "we stopped it",
    "charge_for_pending_refund_disputed": "the payment is disputed with your bank",
    "unknown": "the bank did not say why",
}


class Refund(db.Model):
    """Money sent back to the original payment method of a purchase, through Stripe."""

    __tablename__ = "refunds"
    __table_args__ = (
        CheckConstraint("amount_cents > 0", name="amount_positive"),
        # The worker looks for scheduled refunds that are due.
        Index("ix_refunds_status_scheduled", "status", "scheduled_for"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    purchase_id: Mapped[int] = mapped_column(ForeignKey("purchases.id"), index=True)
    refund_request_id: Mapped[int | None] = mapped_column(
        ForeignKey("refund_requests.id"), index=True
    )
    amount_cents: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3), default="usd")
    status: Mapped[RefundStatus] = mapped_column(
        enum_type(RefundStatus), default=RefundStatus.SCHEDULED
    )
    # Stripe's reason: duplicate, fraudulent or requested_by_customer.
    reason: Mapped[str] = mapped_column(String(32), default="requested_by_customer")
    stripe_refund_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    # A refusal by Stripe is final for its key; a retry after one uses the next attempt.
    attempt: Mapped[int] = mapped_column(default=1)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    scheduled_for: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    purchase: Mapped[Purchase] = relationship(back_populates="refunds")

    @property
    def failure_words(self) -> str:
        """Why the refund failed, in plain words; staff see Stripe's own code or message
        beside them. Anything but a known code (a provider's error message) is not for
        the customer."""
        return REFUND_FAILURE_WORDS.get(
            self.failure_reason or "", "our payment provider could not complete it"
        )

    @property
    def attempt_key(self) -> str:
        """Stripe's idempotency key for this attempt (a retry is a new attempt: Stripe's
        refusal is final for the key it refused)."""
        return f"refund-{self.id}-{self.created_at:%Y%m%dT%H%M%S%f}-attempt-{self.attempt}"

    @property
    def claw_back_key(self) -> str:
        """The ledger key of the credits this attempt took out of the balance."""
        return f"refund:{self.id}:attempt-{self.attempt}:claw-back"


class DisputeStatus(StrEnum):
    """Stripe's dispute statuses. `warning_*` is an inquiry: no money has moved."""

    WARNING_NEEDS_RESPONSE = "warning_needs_response"
    WARNING_UNDER_REVIEW = "warning_under_review"
    WARNING_CLOSED = "warning_closed"
    NEEDS_RESPONSE = "needs_response"
    UNDER_REVIEW = "under_review"
    WON = "won"
    LOST = "lost"


OPEN_DISPUTE_STATUSES = frozenset(
    {
        DisputeStatus.WARNING_NEEDS_RESPONSE,
        DisputeStatus.WARNING_UNDER_REVIEW,
        DisputeStatus.NEEDS_RESPONSE,
        DisputeStatus.UNDER_REVIEW,
    }
)


class Dispute(db.Model):
    """A payment disputed with the cardholder's bank, as Stripe last told us it stands."""

    __tablename__ = "disputes"
    __table_args__ = (CheckConstraint("amount_cents >= 0", name="amount_not_negative"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    purchase_id: Mapped[int] = mapped_column(ForeignKey("purchases.id"), index=True)
    stripe_dispute_id: Mapped[str] = mapped_column(String(255), unique=True)
    amount_cents: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3), default="usd")
    reason: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[DisputeStatus] = mapped_column(enum_type(DisputeStatus))
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_DISPUTE_STATUSES

    def hold_keys(self, number: int) -> tuple[str, str]:
        """The ledger keys of this dispute's `number`th hold of credits and of its release
        (the first hold keeps the key used before disputes had rows)."""
        suffix = "" if number == 1 else f":{number}"
        return (
            f"dispute:{self.stripe_dispute_id}:hold{suffix}",
            f"dispute:{self.stripe_dispute_id}:release{suffix}",
        )

    @property
    def is_lost(self) -> bool:
        return self.status == DisputeStatus.LOST


class StripeEvent(db.Model):
    """A webhook event received from Stripe; the unique id makes redelivery a no-op."""

    __tablename__ = "stripe_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    stripe_event_id: Mapped[str] = mapped_column(String(255), unique=True)
    type: Mapped[str] = mapped_column(String(100), index=True)
    payload: Mapped[dict] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    outcome: Mapped[str | None] = mapped_column(String(255))


class AutoRecharge(db.Model):
    """A customer's auto-recharge: the package to buy, the most to spend in a month, and
    the card they set up for charges made without them.

    Whether it is on, and below which balance it starts, lives on the account
    (`User.auto_recharge_below`), where the ledger decides under the balance's own lock.
    This row keeps everything else, and the customer's choices while it is off.
    """

    __tablename__ = "auto_recharges"
    __table_args__ = (
        CheckConstraint("threshold > 0", name="threshold_positive"),
        CheckConstraint("monthly_cap_cents > 0", name="monthly_cap_positive"),
        CheckConstraint("failures_in_a_row >= 0", name="failures_not_negative"),
    )

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    threshold: Mapped[int]
    package_code: Mapped[str] = mapped_column(String(32))
    monthly_cap_cents: Mapped[int]
    # The card saved for off-session charges (a setup-mode Checkout Session), as Stripe
    # names it, and as the page names it to the customer.
    payment_method_id: Mapped[str | None] = mapped_column(String(255))
    card_brand: Mapped[str | None] = mapped_column(String(32))
    card_last4: Mapped[str | None] = mapped_column(String(4))
    # The setup session the customer was last sent to, until it is applied: only that one
    # may set the card, so a late event cannot bring back an older card, nor switch on
    # what was switched off since (switching off forgets it).
    setup_session_id: Mapped[str | None] = mapped_column(String(255))
    # Declined recharges since the last one paid; at auto_recharge.FAILURES_BEFORE_OFF
    # it switches itself off.
    failures_in_a_row: Mapped[int] = mapped_column(default=0)
    # Why it last switched itself off, for the page; cleared when switched on again.
    switched_off_because: Mapped[str | None] = mapped_column(Text)
    # The company-calendar month ("2026-12") whose cap the customer was last told of, so
    # that reaching it is one e-mail a month.
    cap_told_for: Mapped[str | None] = mapped_column(String(7))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    user: Mapped[User] = relationship()

    @property
    def card_words(self) -> str | None:
        """The card as the page names it ("Visa ending in 4242"); None before one is set up."""
        if not self.card_last4:
            return None
        brand = PAYMENT_METHOD_NAMES.get(self.card_brand or "", "Card")
        return f"{brand} ending in {self.card_last4}"
