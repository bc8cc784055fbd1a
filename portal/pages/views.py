"""Public pages: the packages, the refund policy in plain words, contact details."""

from datetime import timedelta

from flask import Blueprint, render_template

from portal import policy
from portal.incidents.models import Incident
from portal.incidents.services import incidents_since
from portal.timeutil import utcnow

bp = Blueprint("pages", __name__)


@bp.get("/")
def landing():
    return render_template("pages/landing.html", packages=policy.PACKAGES)


@bp.get("/refund-policy")
def refund_policy():
    return render_template("pages/refund_policy.html", packages=policy.PACKAGES)


@bp.get("/contact")
def contact():
    return render_template("pages/contact.html")


STATUS_PAGE_DAYS = 90


def _lasted(incident: Incident) -> str:
    """How long an ended incident lasted, to the minute.

    Whole hours alone would show an outage of 48 h 59 min as "48 h", which reads as not
    more than the 48 consecutive hours the refund policy speaks of.
    """
    hours, minutes = divmod(
        int((incident.ended_at - incident.started_at).total_seconds()) // 60, 60
    )
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


@bp.get("/status")
def status():
    incidents = incidents_since(utcnow() - timedelta(days=STATUS_PAGE_DAYS))
    return render_template(
        "pages/status.html",
        incidents=incidents,
        ongoing=[incident for incident in incidents if incident.ended_at is None],
        lasted={incident.id: _lasted(incident) for incident in incidents if incident.ended_at},
    )
