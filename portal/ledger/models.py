"""Credit lots, the append-only ledger, and which lots each entry drew from."""

from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.db import UTCDateTime, db, enum_type
from portal.timeutil import utcnow


class LotOrigin(StrEnum):
    PURCHASE = "purchase"
    GRANT = "grant"


class CreditLot(db.Model):
    """A block of credits from one origin; spending draws from the oldest lot first."""

    __tablename__ = "credit_lots"
    __table_args__ = (
        CheckConstraint("credits_granted > 0", name="granted_positive"),
        CheckConstraint(
            "credits_remaining >= 0 AND credits_remaining <= credits_granted",
            name="remaining_within_granted",
        ),
        # FIFO spending scans a customer's lots that still hold credits, oldest first.
        Index("ix_credit_lots_user_fifo", "user_id", "created_at", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    origin: Mapped[LotOrigin] = mapped_column(enum_type(LotOrigin))
    # At most one lot per purchase: the database refuses a second crediting.
    purchase_id: Mapped[int | None] = mapped_column(ForeignKey("purchases.id"), unique=True)
    credits_granted: Mapped[int]
    credits_remaining: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class EntryKind(StrEnum):
    PURCHASE_CREDIT = "purchase_credit"
    JOB_CHARGE = "job_charge"
    JOB_REFUND = "job_refund"
    REFUND_CLAW_BACK = "refund_claw_back"
    CLAW_BACK_REVERSAL = "claw_back_reversal"
    GRANT = "grant"
    ADJUSTMENT = "adjustment"
    DISPUTE_HOLD = "dispute_hold"
    DISPUTE_RELEASE = "dispute_release"


class LedgerEntry(db.Model):
    """One change of a customer's balance. Never updated or deleted."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        CheckConstraint("credits <> 0", name="credits_not_zero"),
        CheckConstraint("balance_after >= 0", name="balance_after_not_negative"),
        # History pages page through a customer's entries newest first, by id.
        Index("ix_ledger_entries_user_id_desc", "user_id", "id"),
        Index("ix_ledger_entries_user_kind", "user_id", "kind", "id"),
        # Date-range filters (history) and entries around a date (staff request page).
        Index("ix_ledger_entries_user_created", "user_id", "created_at", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[EntryKind] = mapped_column(enum_type(EntryKind))
    credits: Mapped[int]
    balance_after: Mapped[int]
    purchase_id: Mapped[int | None] = mapped_column(ForeignKey("purchases.id"), index=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), index=True)
    refund_id: Mapped[int | None] = mapped_column(ForeignKey("refunds.id"), index=True)
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    memo: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    allocations: Mapped[list["LotAllocation"]] = relationship(back_populates="entry")


class DayEndBalance(db.Model):
    """A customer's balance at the end of a UTC day on which it changed.

    Kept by the ledger as it posts entries, so that the dashboard's chart reads at most
    a few dozen rows instead of looking through a long history.
    """

    __tablename__ = "day_end_balances"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    day: Mapped[date] = mapped_column(primary_key=True)
    balance: Mapped[int]


class LotAllocation(db.Model):
    """How many credits an entry moved into or out of one lot (same sign as the entry).

    A lot's remaining credits always equal the sum of its allocations, which is how the
    portal can say how much of a given purchase is still unused.
    """

    __tablename__ = "lot_allocations"
    __table_args__ = (CheckConstraint("credits <> 0", name="credits_not_zero"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    ledger_entry_id: Mapped[int] = mapped_column(ForeignKey("ledger_entries.id"), index=True)
    lot_id: Mapped[int] = mapped_column(ForeignKey("credit_lots.id"), index=True)
    credits: Mapped[int]

    entry: Mapped[LedgerEntry] = relationship(back_populates="allocations")
    lot: Mapped[CreditLot] = relationship()
