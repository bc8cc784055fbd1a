"""Refund requests filed by customers, their timeline and their attachments."""

from datetime import datetime
from enum import StrEnum

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Index, String, Text, and_, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.billing.models import Refund, RefundStatus
from portal.db import UTCDateTime, db, enum_type
from portal.errors import Conflict
from portal.notifications.services import queue_email
from portal.refunds.eligibility import RequestReason, Verdict
from portal.timeutil import utcnow


class RequestStatus(StrEnum):
    OPEN = "open"
    IN_REVIEW = "in_review"
    WAITING_ON_CUSTOMER = "waiting_on_customer"
    APPROVED = "approved"
    DENIED = "denied"
    RESOLVED_AUTOMATICALLY = "resolved_automatically"
    CLOSED = "closed"


# Which status may follow which; `transition` refuses everything else.
ALLOWED_TRANSITIONS: dict[RequestStatus, set[RequestStatus]] = {
    RequestStatus.OPEN: {
        RequestStatus.IN_REVIEW,
        RequestStatus.WAITING_ON_CUSTOMER,
        RequestStatus.APPROVED,
        RequestStatus.DENIED,
        RequestStatus.CLOSED,
    },
    RequestStatus.IN_REVIEW: {
        RequestStatus.WAITING_ON_CUSTOMER,
        RequestStatus.APPROVED,
        RequestStatus.DENIED,
        RequestStatus.CLOSED,
    },
    RequestStatus.WAITING_ON_CUSTOMER: {
        RequestStatus.IN_REVIEW,
        RequestStatus.APPROVED,
        RequestStatus.DENIED,
        RequestStatus.CLOSED,
    },
    # Back to review when an approval is undone or its refund fails.
    RequestStatus.APPROVED: {RequestStatus.IN_REVIEW},
    RequestStatus.DENIED: set(),
    RequestStatus.RESOLVED_AUTOMATICALLY: set(),
    RequestStatus.CLOSED: set(),
}

OPEN_STATUSES = (RequestStatus.OPEN, RequestStatus.IN_REVIEW, RequestStatus.WAITING_ON_CUSTOMER)
# Waiting on the customer stops the response clock, so only these can be late.
CLOCK_RUNNING_STATUSES = (RequestStatus.OPEN, RequestStatus.IN_REVIEW)
OPEN_CONDITION = "status IN ({})".format(", ".join(f"'{status}'" for status in OPEN_STATUSES))


class RefundRequest(db.Model):
    """A customer's request for a refund of one purchase (or of one job's credits)."""

    __tablename__ = "refund_requests"
    __table_args__ = (
        CheckConstraint("recommended_cents >= 0", name="recommended_cents_not_negative"),
        CheckConstraint("recommended_credits >= 0", name="recommended_credits_not_negative"),
        # The staff queue's default view: open requests by due date.
        Index("ix_refund_requests_status_due", "status", "due_at", "id"),
        Index("ix_refund_requests_assignee_status", "assignee_id", "status", "due_at"),
        Index("ix_refund_requests_user_created", "user_id", "created_at"),
        # The queue's views of open requests (a small share of all): by due date, oldest
        # first, one assignee's, one verdict's.
        Index(
            "ix_refund_requests_open_due",
            "due_at",
            "id",
            sqlite_where=text(OPEN_CONDITION),
            postgresql_where=text(OPEN_CONDITION),
        ),
        Index(
            "ix_refund_requests_open_age",
            "id",
            sqlite_where=text(OPEN_CONDITION),
            postgresql_where=text(OPEN_CONDITION),
        ),
        Index(
            "ix_refund_requests_open_assignee",
            "assignee_id",
            "due_at",
            "id",
            sqlite_where=text(OPEN_CONDITION),
            postgresql_where=text(OPEN_CONDITION),
        ),
        Index(
            "ix_refund_requests_open_verdict",
            "verdict",
            "due_at",
            "id",
            sqlite_where=text(OPEN_CONDITION),
            postgresql_where=text(OPEN_CONDITION),
        ),
        # The queue counts the decisions of the last few days.
        Index("ix_refund_requests_decided", "decided_at"),
        # One open request per purchase, enforced by the database against double submits.
        Index(
            "uq_refund_requests_open_purchase",
            "purchase_id",
            unique=True,
            sqlite_where=text(OPEN_CONDITION),
            postgresql_where=text(OPEN_CONDITION),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    purchase_id: Mapped[int] = mapped_column(ForeignKey("purchases.id"), index=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), index=True)
    reason: Mapped[RequestReason] = mapped_column(enum_type(RequestReason))
    details: Mapped[str] = mapped_column(Text, default="")
    transaction_ids: Mapped[str] = mapped_column(String(500), default="")
    status: Mapped[RequestStatus] = mapped_column(
        enum_type(RequestStatus), default=RequestStatus.OPEN
    )
    verdict: Mapped[Verdict] = mapped_column(enum_type(Verdict))
    # Every rule's outcome and sentence as computed when the request was filed.
    precheck: Mapped[dict] = mapped_column(JSON)
    recommended_cents: Mapped[int] = mapped_column(default=0)
    recommended_credits: Mapped[int] = mapped_column(default=0)
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # While waiting on the customer the response clock is paused from this moment.
    clock_paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    decision_reason: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    decided_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    events: Mapped[list["RefundRequestEvent"]] = relationship(
        back_populates="request", order_by="RefundRequestEvent.id"
    )
    attachments: Mapped[list["Attachment"]] = relationship(back_populates="request")
    # The money staff approved for this request; written only by billing.money_back.
    refunds: Mapped[list[Refund]] = relationship(viewonly=True, order_by=Refund.id)

    @property
    def reference(self) -> str:
        return f"RR-{self.id:06d}"

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def money_back(self) -> list[Refund]:
        """The refunds that stand: approved and not taken back (undone, or the bank
        returned the payment instead)."""
        return [refund for refund in self.refunds if refund.status != RefundStatus.CANCELED]

    def is_overdue(self, now: datetime) -> bool:
        """Past its answer date with the clock running: the one Python form of "overdue"."""
        return self.status in CLOCK_RUNNING_STATUSES and self.due_at < now

    @classmethod
    def overdue(cls, now: datetime):
        """The SQL form of `is_overdue`, for queries."""
        return and_(cls.status.in_(CLOCK_RUNNING_STATUSES), cls.due_at < now)

    def reopen(self) -> None:
        """Take back a decision (undone, or its refund did not go through): back to review."""
        self.transition(RequestStatus.IN_REVIEW)
        self.decided_at = None
        self.decided_by_id = None

    def transition(self, new_status: RequestStatus) -> None:
        """Move to `new_status` if the status table allows it.

        :raises Conflict: the move is not allowed from the current status.
        """
        if new_status not in ALLOWED_TRANSITIONS[self.status]:
            raise Conflict(
                f"A {self.status.value.replace('_', ' ')} request cannot become "
                f"{new_status.value.replace('_', ' ')}."
            )
        self.status = new_status


class RefundRequestEvent(db.Model):
    """One step on a request's timeline. Append-only."""

    __tablename__ = "refund_request_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("refund_requests.id"), index=True)
    kind: Mapped[str] = mapped_column(String(50))
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    visible_to_customer: Mapped[bool] = mapped_column(default=True)
    body: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    request: Mapped[RefundRequest] = relationship(back_populates="events")


class Attachment(db.Model):
    """A screenshot sent with a request, stored outside static/."""

    __tablename__ = "attachments"
    __table_args__ = (CheckConstraint("size_bytes > 0", name="size_positive"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("refund_requests.id"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(50))
    size_bytes: Mapped[int]
    storage_key: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    request: Mapped[RefundRequest] = relationship(back_populates="attachments")


def add_event(
    request: RefundRequest,
    kind: str,
    body: str,
    actor_id: int | None = None,
    visible_to_customer: bool = True,
    now: datetime | None = None,
) -> RefundRequestEvent:
    """Put a step on the request's timeline, in the caller's transaction."""
    event = RefundRequestEvent(
        request_id=request.id,
        kind=kind,
        body=body,
        actor_id=actor_id,
        visible_to_customer=visible_to_customer,
    )
    if now is not None:
        event.created_at = now
    db.session.add(event)
    return event


def email_customer(request: RefundRequest, address: str, subject: str, body: str) -> None:
    """E-mail the customer about their request, in the caller's transaction: the request's
    reference in the subject and a pointer to its page at the end."""
    queue_email(
        address,
        f"{request.reference}: {subject}",
        f"{body}\n\nOpen {request.reference} in the portal under Refunds to see the details.",
    )
