"""Every staff route: anonymous users go to log-in, customers get 403, staff get in;
every POST without a CSRF token is refused with 400 and changes nothing."""

from datetime import timedelta
from urllib.parse import urlsplit

import pytest

from portal.billing.money_back import sending
from portal.incidents import services as incidents
from portal.timeutil import utcnow
from tests.factories import csrf_token, make_purchase
from tests.staff.helpers import actor, approve_now, client_for, file, state_snapshot

# A valid body for each POST route, so that the CSRF token is the only thing missing.
PAYLOADS = {
    "staff.take": {},
    "staff.assign": {"assignee": "nobody"},
    "staff.note": {"body": "An internal note."},
    "staff.message": {"body": "A message to the customer."},
    "staff.ask": {"body": "Which card did you pay with?"},
    "staff.deny": {"reason": "other", "message": "Because."},
    "staff.approve": {"amount": "5.00", "justification": "Goodwill."},
    "staff.credit_instead": {},
    "staff.undo_refund": {},
    "staff.retry_refund": {},
    "staff.incidents": {
        "title": "Queue stalled",
        "started_at": "2026-11-01T10:00",
        "ended_at": "2026-11-01T12:00",
        "note": "",
    },
    "staff.end_incident": {"ended_at": "2026-11-02T10:00"},
    "staff.close_customer": {},
    "staff.terminate_customer": {"reason": "Abuse of the service.", "confirm": "y"},
    "staff.reset_second_factor": {},
}


@pytest.fixture
def world(app, staff, other_staff, customer):
    """One of everything a staff URL can name: an open request, a scheduled refund that can
    still be undone, a failed refund that can be retried, an ongoing incident."""
    open_request = file(customer, make_purchase(customer))
    scheduled_request = file(customer, make_purchase(customer))
    scheduled = approve_now(scheduled_request, staff, 500, justification="test")
    failed_request = file(customer, make_purchase(customer))
    failed = approve_now(failed_request, staff, 500, justification="test")
    sending.refund_failed(failed.id, "card expired")
    incident = incidents.record_incident(
        actor(staff), "Ongoing outage", utcnow() - timedelta(hours=3), None, ""
    )
    ids = {
        "request_id": open_request.id,
        "refund_id": scheduled.id,
        "incident_id": incident.id,
        "user_id": customer.id,
        "member_id": other_staff.id,
    }
    return {
        "ids": ids,
        "refund_ids": {"staff.undo_refund": scheduled.id, "staff.retry_refund": failed.id},
        "request_of_refund": {
            "staff.undo_refund": scheduled_request.id,
            "staff.retry_refund": failed_request.id,
        },
    }


def staff_routes(app) -> list[tuple[str, str, str]]:
    """(endpoint, method, rule) of every staff route, HEAD and OPTIONS left out."""
    found = []
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("staff."):
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            found.append((rule.endpoint, method, rule.rule))
    return sorted(found)


def url_of(endpoint: str, rule: str, world) -> str:
    path = rule
    for name, value in world["ids"].items():
        if name == "refund_id":
            value = world["refund_ids"].get(endpoint, value)
        path = path.replace(f"<id:{name}>", str(value))
    assert "<" not in path, path
    return path


def body_of(endpoint: str, world) -> dict:
    data = dict(PAYLOADS[endpoint])
    if endpoint in world["request_of_refund"]:
        data["request_id"] = str(world["request_of_refund"][endpoint])
    return data


def call(client, endpoint, method, rule, world, token=None):
    path = url_of(endpoint, rule, world)
    if method == "GET":
        return client.get(path)
    data = body_of(endpoint, world)
    if token is not None:
        data["csrf_token"] = token
    return client.post(path, data=data)


def test_every_staff_route_is_listed_with_a_payload(app):
    routes = staff_routes(app)
    assert len(routes) >= 16, routes
    posts = {endpoint for endpoint, method, _ in routes if method == "POST"}
    assert posts == set(PAYLOADS)


def test_anonymous_users_are_sent_to_log_in(app, world):
    client = client_for(app)
    token = csrf_token(client, "/login")
    wrong = []
    for endpoint, method, rule in staff_routes(app):
        response = call(client, endpoint, method, rule, world, token)
        location = urlsplit(response.headers.get("Location", "")).path
        if response.status_code not in (302, 303) or location != "/login":
            wrong.append((endpoint, method, response.status_code, location))
    assert wrong == []


def test_customers_get_403_everywhere(app, world, customer):
    client = client_for(app, customer)
    token = csrf_token(client, "/credits/buy")
    before = state_snapshot()
    wrong = []
    for endpoint, method, rule in staff_routes(app):
        response = call(client, endpoint, method, rule, world, token)
        if response.status_code != 403:
            wrong.append((endpoint, method, response.status_code))
    assert wrong == []
    assert state_snapshot() == before


def test_staff_get_in_everywhere(app, world, staff):
    client = client_for(app, staff)
    token = csrf_token(client, "/staff/incidents")
    wrong = []
    for endpoint, method, rule in staff_routes(app):
        response = call(client, endpoint, method, rule, world, token)
        expected = (200,) if method == "GET" else (303,)
        if response.status_code not in expected:
            wrong.append((endpoint, method, response.status_code))
    assert wrong == []


def test_every_staff_post_without_csrf_token_is_refused_and_changes_nothing(app, world, staff):
    client = client_for(app, staff)
    before = state_snapshot()
    wrong = []
    for endpoint, method, rule in staff_routes(app):
        if method != "POST":
            continue
        response = call(client, endpoint, method, rule, world)
        if response.status_code != 400:
            wrong.append((endpoint, response.status_code))
    assert wrong == []
    assert state_snapshot() == before


def test_a_csrf_token_from_another_session_is_refused(app, world, staff, other_staff):
    thief = client_for(app, other_staff)
    stolen = csrf_token(thief, "/staff/incidents")
    client = client_for(app, staff)
    before = state_snapshot()
    path = f"/staff/requests/{world['ids']['request_id']}/approve"
    response = client.post(path, data={"amount": "5.00", "csrf_token": stolen})
    assert response.status_code == 400
    assert state_snapshot() == before
