"""Import every feature's models so that the metadata (and Alembic) sees all tables."""

from portal.accounts.models import AccountStatus, PasswordResetToken, Role, User
from portal.billing.models import (
    Dispute,
    DisputeStatus,
    Purchase,
    PurchaseStatus,
    Refund,
    RefundStatus,
    StripeEvent,
)
from portal.jobs.models import FailureReason, Job, JobStatus
from portal.ledger.models import CreditLot, EntryKind, LedgerEntry, LotAllocation, LotOrigin
from portal.notifications.models import OutboxEmail, OutboxStatus
from portal.refunds.models import (
    Attachment,
    RefundRequest,
    RefundRequestEvent,
    RequestReason,
    RequestStatus,
    Verdict,
)
from portal.staff.models import AuditLogEntry, Incident

__all__ = [
    "AccountStatus",
    "Attachment",
    "AuditLogEntry",
    "CreditLot",
    "Dispute",
    "DisputeStatus",
    "EntryKind",
    "FailureReason",
    "Incident",
    "Job",
    "JobStatus",
    "LedgerEntry",
    "LotAllocation",
    "LotOrigin",
    "OutboxEmail",
    "OutboxStatus",
    "PasswordResetToken",
    "Purchase",
    "PurchaseStatus",
    "Refund",
    "RefundRequest",
    "RefundRequestEvent",
    "RefundStatus",
    "RequestReason",
    "RequestStatus",
    "Role",
    "StripeEvent",
    "User",
    "Verdict",
]
