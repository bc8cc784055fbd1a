"""Import every feature's models so that the metadata (and Alembic) sees all tables."""

from portal.accounts.models import (
    AccountRequest,
    AccountStatus,
    PasswordResetToken,
    RecoveryCode,
    Role,
    User,
)
from portal.audit import AuditLogEntry
from portal.billing.models import (
    Dispute,
    DisputeStatus,
    Purchase,
    PurchaseStatus,
    Refund,
    RefundStatus,
    StripeEvent,
)
from portal.incidents.models import Incident
from portal.jobs.models import FailureReason, Job, JobStatus
from portal.ledger.models import CreditLot, EntryKind, LedgerEntry, LotAllocation, LotOrigin
from portal.notifications.models import OutboxEmail, OutboxStatus
from portal.ops.models import ScheduledTask
from portal.refunds.models import (
    Attachment,
    RefundRequest,
    RefundRequestEvent,
    RequestReason,
    RequestStatus,
    Verdict,
)
from portal.storage import StoredFile

__all__ = [
    "AccountRequest",
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
    "RecoveryCode",
    "Purchase",
    "PurchaseStatus",
    "Refund",
    "RefundRequest",
    "RefundRequestEvent",
    "RefundStatus",
    "RequestReason",
    "RequestStatus",
    "Role",
    "ScheduledTask",
    "StoredFile",
    "StripeEvent",
    "User",
    "Verdict",
]
