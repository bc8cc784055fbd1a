"""Response dates on the company calendar, incidents and the status page, the audit log
and its CSV export, and the overdue digest."""

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from portal.audit import AuditLogEntry
from portal.db import db
from portal.incidents import services as incidents
from portal.incidents.models import Incident
from portal.refunds.models import RequestStatus
from portal.timeutil import DATE_TIME_FORMAT, add_business_days, utcnow
from tests.factories import make_purchase, make_staff, make_user
from tests.html_text import visible_text
from tests.staff.helpers import (
    bulk_requests,
    client_for,
    detail_path,
    emails_to,
    file,
    staff_post,
    state_snapshot,
    text,
)

VANCOUVER = ZoneInfo("America/Vancouver")


def vancouver(*parts: int) -> datetime:
    """A wall-clock moment in Vancouver, in UTC."""
    return datetime(*parts, tzinfo=VANCOUVER).astimezone(UTC)


def end_of_day(year: int, month: int, day: int) -> datetime:
    return vancouver(year, month, day, 23, 59, 59)


# -- business days ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "days", "due"),
    [
        # An ordinary week, and across a weekend.
        (vancouver(2026, 3, 2, 9, 0), 5, end_of_day(2026, 3, 9)),
        (vancouver(2026, 3, 4, 9, 0), 3, end_of_day(2026, 3, 9)),
        (vancouver(2026, 3, 7, 12, 0), 1, end_of_day(2026, 3, 9)),  # Saturday
        (vancouver(2026, 3, 8, 12, 0), 1, end_of_day(2026, 3, 9)),  # Sunday
        (vancouver(2026, 3, 9, 9, 0), 0, end_of_day(2026, 3, 9)),
        # National Day for Truth and Reconciliation, Wednesday 2026-09-30.
        (vancouver(2026, 9, 25, 18, 0), 5, end_of_day(2026, 10, 5)),
        (vancouver(2026, 9, 29, 10, 0), 1, end_of_day(2026, 10, 1)),
        (vancouver(2026, 9, 30, 10, 0), 1, end_of_day(2026, 10, 1)),  # filed on the holiday
        # Remembrance Day, Wednesday 2026-11-11.
        (vancouver(2026, 11, 9, 10, 0), 5, end_of_day(2026, 11, 17)),
        (vancouver(2026, 11, 10, 16, 0), 1, end_of_day(2026, 11, 12)),
        # Christmas on a Friday; Boxing Day (Saturday) is not a BC statutory holiday.
        (vancouver(2026, 12, 23, 10, 0), 5, end_of_day(2026, 12, 31)),
        (vancouver(2026, 12, 24, 10, 0), 1, end_of_day(2026, 12, 28)),
        # New Year's Day 2027 is a Friday.
        (vancouver(2026, 12, 31, 10, 0), 5, end_of_day(2027, 1, 8)),
        (vancouver(2026, 12, 31, 10, 0), 1, end_of_day(2027, 1, 4)),
        # Days are counted in Vancouver, not in UTC: Thursday 20:00 PST is Friday in UTC.
        (vancouver(2026, 3, 5, 20, 0), 5, end_of_day(2026, 3, 12)),
        # ... and the end of the day follows daylight saving time (it starts 2026-03-08).
        (vancouver(2026, 3, 6, 19, 30), 5, end_of_day(2026, 3, 13)),
    ],
)
def test_add_business_days(start, days, due):
    assert add_business_days(start, days) == due


def test_the_end_of_the_day_is_in_vancouver_time():
    assert end_of_day(2026, 3, 13) == datetime(2026, 3, 14, 6, 59, 59, tzinfo=UTC)  # PDT
    assert end_of_day(2026, 3, 6) == datetime(2026, 3, 7, 7, 59, 59, tzinfo=UTC)  # PST


def test_a_request_filed_on_friday_evening_is_due_at_the_end_of_the_next_friday(app, staff_client):
    customer = make_user()
    friday_evening = vancouver(2026, 3, 6, 19, 30)  # already Saturday in UTC
    purchase = make_purchase(customer, paid_at=friday_evening - timedelta(hours=2))

    request = file(customer, purchase, now=friday_evening)

    assert request.due_at == end_of_day(2026, 3, 13)
    # Shown on the company's calendar, its zone named, whoever reads it.
    assert "Answer due Fri, Mar 13, 2026, 11:59 PM Vancouver time (PDT)" in text(
        staff_client.get(detail_path(request.id))
    )


# -- incidents and the status page --------------------------------------------------------


def _local_minute(moment: datetime) -> datetime:
    return moment.astimezone(VANCOUVER).replace(second=0, microsecond=0, tzinfo=None)


def test_incidents_are_recorded_in_the_staff_members_timezone_and_shown_on_status(
    app, staff_client, staff
):
    start = _local_minute(utcnow() - timedelta(days=5)).replace(hour=10, minute=15)
    end = start + timedelta(hours=50)

    response = staff_post(
        staff_client,
        "/staff/incidents",
        {
            "title": "Image workers down",
            "started_at": start.strftime("%Y-%m-%dT%H:%M"),
            "ended_at": end.strftime("%Y-%m-%dT%H:%M"),
            "note": "GPU pool lost.",
        },
    )

    assert response.status_code == 303
    [incident] = db.session.scalars(db.select(Incident)).all()
    assert incident.started_at == start.replace(tzinfo=VANCOUVER).astimezone(UTC)
    assert incident.ended_at == end.replace(tzinfo=VANCOUVER).astimezone(UTC)
    assert incident.created_by_id == staff.id
    [logged] = db.session.scalars(
        db.select(AuditLogEntry).where(AuditLogEntry.action == "incident.recorded")
    ).all()
    assert logged.actor_id == staff.id
    staff_page = text(staff_client.get("/staff/incidents"))
    assert f"Image workers down GPU pool lost. {start.strftime(DATE_TIME_FORMAT)}" in staff_page
    assert "an outage of more than 48 consecutive hours, counted only while" in staff_page

    status = text(client_for(app).get("/status"))  # anonymous: times in UTC
    assert "All systems are running normally." in status
    started_utc = incident.started_at.strftime(DATE_TIME_FORMAT)
    ended_utc = incident.ended_at.strftime(DATE_TIME_FORMAT)
    assert f"Image workers down : {started_utc} – {ended_utc} (50 h)" in status


def test_an_ongoing_incident_is_ended_from_the_incidents_page(app, staff_client):
    start = _local_minute(utcnow() - timedelta(hours=6))
    staff_post(
        staff_client,
        "/staff/incidents",
        {"title": "Uploads failing", "started_at": start.strftime("%Y-%m-%dT%H:%M")},
    )
    [incident] = db.session.scalars(db.select(Incident)).all()
    assert incident.ended_at is None
    status = text(client_for(app).get("/status"))
    assert "We are working on an ongoing problem: Uploads failing." in status
    assert "– ongoing" in status

    too_early = start - timedelta(hours=1)
    before = state_snapshot()
    staff_post(
        staff_client,
        f"/staff/incidents/{incident.id}/end",
        {"ended_at": too_early.strftime("%Y-%m-%dT%H:%M")},
    )
    assert "The end must come after the start." in text(staff_client.get("/staff/incidents"))
    assert state_snapshot() == before

    end = start + timedelta(hours=2, minutes=30)
    response = staff_post(
        staff_client,
        f"/staff/incidents/{incident.id}/end",
        {"ended_at": end.strftime("%Y-%m-%dT%H:%M")},
    )

    assert response.status_code == 303
    db.session.expire_all()
    incident = db.session.get(Incident, incident.id)
    assert incident.ended_at == end.replace(tzinfo=VANCOUVER).astimezone(UTC)
    status = text(client_for(app).get("/status"))
    assert "All systems are running normally." in status
    # To the minute: whole hours would hide whether an outage lasted more than 48 hours.
    assert "Uploads failing" in status and "(2 h 30 min)" in status


def test_an_incident_that_ends_before_it_starts_is_refused(app, staff_client):
    before = state_snapshot()
    response = staff_post(
        staff_client,
        "/staff/incidents",
        {
            "title": "Backwards",
            "started_at": "2026-11-20T10:00",
            "ended_at": "2026-11-20T09:00",
        },
    )
    assert response.status_code == 400
    assert "The end must come after the start." in text(response)
    assert state_snapshot() == before


def test_the_status_page_lists_only_the_last_90_days(app, staff):
    from tests.staff.helpers import actor

    now = utcnow()
    incidents.record_incident(
        actor(staff), "Old outage", now - timedelta(days=120), now - timedelta(days=119), ""
    )
    incidents.record_incident(
        actor(staff), "Recent outage", now - timedelta(days=10), now - timedelta(days=9), ""
    )
    status = text(client_for(app).get("/status"))
    assert "Recent outage" in status
    assert "Old outage" not in status


# -- the audit log ------------------------------------------------------------------------


@pytest.fixture
def logged(app, staff, other_staff):
    """Audit lines around midnight in Vancouver, from two staff members and the portal."""

    def at(day: int, hour: int, minute: int = 0) -> datetime:
        return datetime(2026, 11, day, hour, minute, tzinfo=UTC)

    rows = [
        ("incident.recorded", "incident", staff.id, at(10, 7, 30)),  # Nov 9, 23:30 local
        ("refund_request.denied", "refund_request", other_staff.id, at(10, 9)),  # Nov 10, 01:00
        ("refund.succeeded", "refund", None, at(11, 7)),  # Nov 10, 23:00 local
        ("incident.ended", "incident", staff.id, at(11, 8, 30)),  # Nov 11, 00:30 local
    ]
    for action, target_type, actor_id, created_at in rows:
        db.session.add(
            AuditLogEntry(
                action=action,
                target_type=target_type,
                target_id=7,
                actor_id=actor_id,
                after={"note": action},
                ip_address="10.0.0.1" if actor_id else None,
                created_at=created_at,
            )
        )
    db.session.commit()
    return rows


def audit_actions(response) -> list[str]:
    assert response.status_code == 200
    cells = re.findall(
        r'<td data-label="Action"><code>(.*?)</code></td>', response.get_data(as_text=True)
    )
    return [visible_text(cell) for cell in cells]


def csv_rows(response) -> list[list[str]]:
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    return list(csv.reader(io.StringIO(response.get_data(as_text=True))))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ["incident.ended", "refund.succeeded", "refund_request.denied", "incident.recorded"]),
        ("action=incident.recorded", ["incident.recorded"]),
        ("target_type=incident", ["incident.ended", "incident.recorded"]),
        # Dates are days in the staff member's timezone (Vancouver).
        ("start=2026-11-10&end=2026-11-10", ["refund.succeeded", "refund_request.denied"]),
        ("start=2026-11-11", ["incident.ended"]),
        ("end=2026-11-09", ["incident.recorded"]),
        ("target_type=incident&start=2026-11-10", ["incident.ended"]),
    ],
)
def test_audit_page_filters_and_csv_export(staff_client, logged, query, expected):
    assert audit_actions(staff_client.get(f"/staff/audit?{query}")) == expected

    header, *lines = csv_rows(staff_client.get(f"/staff/audit.csv?{query}"))

    assert header[:3] == ["time (UTC)", "actor", "action"]
    assert [line[2] for line in lines] == expected


def test_audit_csv_names_the_actor_and_the_portal(staff_client, staff, logged):
    header, *lines = csv_rows(staff_client.get("/staff/audit.csv"))
    by_action = {line[2]: line for line in lines}
    assert by_action["incident.recorded"][1] == staff.email
    assert by_action["incident.recorded"][0] == "2026-11-10T07:30:00+00:00"
    assert by_action["incident.recorded"][5] == "10.0.0.1"
    assert by_action["refund.succeeded"][1] == "portal"
    assert by_action["refund.succeeded"][3:5] == ["refund", "7"]


def test_staff_actions_reach_the_audit_page(staff_client, staff, customer):
    request = file(customer, make_purchase(customer))
    staff_post(staff_client, f"/staff/requests/{request.id}/take", request_id=request.id)

    page = staff_client.get("/staff/audit?action=refund_request.assigned")

    assert audit_actions(page) == ["refund_request.assigned"]
    assert staff.email in text(page)
    # What changed, field by field, rather than the stored JSON.
    assert f"Assignee id: — → {staff.id}" in text(page)
    assert "{" not in text(page).split("Changes", 1)[1]


# -- the overdue digest -------------------------------------------------------------------


def test_flask_digest_emails_staff_only_the_overdue_requests(app, staff, customer):
    other = make_staff()
    now = utcnow()
    late = bulk_requests(customer, 1, due_at=lambda i: now - timedelta(days=2))[0]
    late_in_review = bulk_requests(
        customer, 1, status=RequestStatus.IN_REVIEW, due_at=lambda i: now - timedelta(hours=1)
    )[0]
    waiting = bulk_requests(
        customer,
        1,
        status=RequestStatus.WAITING_ON_CUSTOMER,
        due_at=lambda i: now - timedelta(days=1),
        clock_paused_at=now - timedelta(days=3),
    )[0]
    decided = bulk_requests(
        customer, 1, status=RequestStatus.APPROVED, due_at=lambda i: now - timedelta(days=5)
    )[0]
    not_yet = bulk_requests(customer, 1, due_at=lambda i: now + timedelta(hours=3))[0]

    result = app.test_cli_runner().invoke(args=["digest"])

    assert result.exit_code == 0, result.output
    assert "2 overdue request(s)" in result.output
    for member in (staff, other):
        [email] = emails_to(member.email)
        assert "2 overdue refund request(s)" in email.subject
        assert late.reference in email.body_text
        assert late_in_review.reference in email.body_text
        for excluded in (waiting, decided, not_yet):
            assert excluded.reference not in email.body_text
    assert emails_to(customer.email) == []


def test_no_digest_when_nothing_is_overdue(app, staff, customer):
    bulk_requests(customer, 2, due_at=lambda i: utcnow() + timedelta(days=1))

    result = app.test_cli_runner().invoke(args=["digest"])

    assert result.exit_code == 0
    assert "0 overdue request(s)" in result.output
    assert emails_to(staff.email) == []


def test_audit_csv_defuses_cells_a_spreadsheet_would_run_as_formulas(staff_client, staff):
    # Anyone can sign up with this address; its log lines then reach the staff's CSV.
    signed_up = make_user(email="=1+2@example.com")
    db.session.add(
        AuditLogEntry(
            action="account.exported",
            target_type="user",
            target_id=signed_up.id,
            actor_id=signed_up.id,
            ip_address="-1",
            created_at=utcnow(),
        )
    )
    db.session.commit()

    _, line = csv_rows(staff_client.get("/staff/audit.csv"))

    assert line[1] == "'=1+2@example.com"
    assert line[2:5] == ["account.exported", "user", str(signed_up.id)]
    assert line[5] == "'-1"
