"""Recording incidents, ending them, and listing the recent ones."""

from datetime import datetime

from sqlalchemy import or_, select

from portal import audit
from portal.audit import Actor
from portal.db import db, transactional
from portal.errors import NotFound, ValidationError
from portal.incidents.models import Incident


@transactional
def record_incident(
    actor: Actor, title: str, started_at: datetime, ended_at: datetime | None, note: str
) -> Incident:
    """Log a period of platform downtime (the pre-check's outage rule reads these).

    :raises ValidationError: it ends before it starts.
    """
    if ended_at is not None and ended_at < started_at:
        raise ValidationError("The end must come after the start.", field="ended_at")
    incident = Incident(
        title=title,
        started_at=started_at,
        ended_at=ended_at,
        note=note,
        created_by_id=actor.user.id,
    )
    db.session.add(incident)
    db.session.flush()
    audit.record(
        "incident.recorded",
        "incident",
        incident.id,
        actor_id=actor.user.id,
        after={
            "title": title,
            "started_at": started_at.isoformat(),
            "ended_at": ended_at.isoformat() if ended_at else None,
        },
        ip_address=actor.ip_address,
    )
    return incident


@transactional
def end_incident(incident_id: int, actor: Actor, ended_at: datetime) -> Incident:
    """Close an ongoing incident.

    :raises NotFound: no such incident.
    :raises ValidationError: it would end before it started.
    """
    incident = db.session.get(Incident, incident_id)
    if incident is None:
        raise NotFound("no such incident")
    if ended_at < incident.started_at:
        raise ValidationError("The end must come after the start.", field="ended_at")
    before = incident.ended_at
    incident.ended_at = ended_at
    audit.record(
        "incident.ended",
        "incident",
        incident.id,
        actor_id=actor.user.id,
        before={"ended_at": before.isoformat() if before else None},
        after={"ended_at": ended_at.isoformat()},
        ip_address=actor.ip_address,
    )
    return incident


def incidents_since(since: datetime) -> list[Incident]:
    """Incidents that started, or were still going on, since `since`, newest first."""
    return list(
        db.session.scalars(
            select(Incident)
            .where(
                or_(
                    Incident.started_at >= since,
                    Incident.ended_at.is_(None),
                    Incident.ended_at >= since,
                )
            )
            .order_by(Incident.started_at.desc())
        )
    )
