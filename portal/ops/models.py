"""What the operations side keeps in the database."""

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from portal.db import UTCDateTime, db


class ScheduledTask(db.Model):
    """When a periodic task (reconcile, digest, ledger check) last ran, fleet-wide."""

    __tablename__ = "scheduled_tasks"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_outcome: Mapped[str | None] = mapped_column(String(255))
