"""Image-processing jobs charged by the processing platform through the jobs API."""

from datetime import datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from portal.db import UTCDateTime, db, enum_type
from portal.timeutil import utcnow


class JobStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class FailureReason(StrEnum):
    PLATFORM_ERROR = "platform_error"
    INVALID_INPUT = "invalid_input"

    @property
    def label(self) -> str:
        return {
            "platform_error": "Failed because of a problem on our side",
            "invalid_input": "Failed because the input could not be processed",
        }[self.value]


class Job(db.Model):
    """One processing job and the credits it cost."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint("credits > 0", name="credits_positive"),
        Index("ix_jobs_user_id_desc", "user_id", "id"),
        # A customer's jobs from a moment on (staff look around a purchase).
        Index("ix_jobs_user_created", "user_id", "created_at", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    # The platform's own id; a repeated POST with it returns the same job.
    external_id: Mapped[str] = mapped_column(String(255), unique=True)
    operation: Mapped[str] = mapped_column(String(100))
    credits: Mapped[int]
    status: Mapped[JobStatus] = mapped_column(enum_type(JobStatus), default=JobStatus.RUNNING)
    failure_reason: Mapped[FailureReason | None] = mapped_column(enum_type(FailureReason))
    failure_detail: Mapped[str | None] = mapped_column(Text)
    credits_restored: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    @property
    def charge_key(self) -> str:
        """The ledger key of charging this job: charged at most once."""
        return f"job:{self.id}:charge"

    @property
    def restore_key(self) -> str:
        """The ledger key of giving a failed job's credits back: at most once."""
        return f"job:{self.id}:restore"
