"""The audit log: who did what, when, from where. Lines are only ever added."""

from portal.extensions import db
from portal.staff.models import AuditLogEntry


def audit(
    action: str,
    target_type: str,
    target_id: int | None,
    actor_id: int | None = None,
    before: dict | None = None,
    after: dict | None = None,
    ip_address: str | None = None,
) -> AuditLogEntry:
    """Add an audit log line to the caller's transaction (actor None = the portal itself)."""
    entry = AuditLogEntry(
        actor_id=actor_id,
        action=action,
        target_type=target_type,
        target_id=target_id,
        before=before,
        after=after,
        ip_address=ip_address,
    )
    db.session.add(entry)
    return entry
