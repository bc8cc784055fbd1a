"""Staff-side services: the audit log and messages to the staff team."""

from sqlalchemy import select

from portal.accounts.models import Role, User
from portal.extensions import db
from portal.notifications.services import queue_email
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


def notify_staff(subject: str, body: str) -> int:
    """E-mail every staff member, inside the caller's transaction; return how many."""
    addresses = db.session.scalars(select(User.email).where(User.role == Role.STAFF)).all()
    for address in addresses:
        queue_email(address, subject, body)
    return len(addresses)
