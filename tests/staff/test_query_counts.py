"""The queue and the request page run a small, fixed number of SQL statements.

Each page is asked for about a customer with little history and about one with a lot
(jobs, ledger entries, requests, refunds, incidents, a purchase whose credits are all
spent); a count that moved between the two would be a query per row somewhere.
"""

from datetime import timedelta

from portal.db import db
from portal.incidents import services as incidents
from portal.jobs import services as job_services
from portal.jobs.models import FailureReason
from portal.ledger.services import unused_credits
from portal.refunds import services as refunds
from portal.refunds.eligibility import RequestReason
from portal.refunds.models import RequestStatus
from portal.staff import queries as staff_queries
from portal.staff import services as staff_services
from portal.timeutil import utcnow
from tests.factories import QueryCounter, make_purchase, make_staff, make_user, spend_history
from tests.staff.helpers import actor, bulk_requests, detail_path, file

# What a page may cost, the log-in check's own statements included.
PAGE_BUDGET = 8


def statements(client, path: str) -> int:
    client.get(path)  # the first view may fill what later views reuse
    with QueryCounter(db.engine) as counter:
        response = client.get(path)
    assert response.status_code == 200, path
    return counter.count


def short_and_long_requests(staff):
    """A request of a newcomer, and one of a regular with history, incidents and notes."""
    newcomer = make_user()
    short = file(newcomer, make_purchase(newcomer, "pro"))

    regular = make_user()
    spent = make_purchase(regular, "starter", paid_at=utcnow() - timedelta(days=3))
    spend_history(regular, 50)  # the starter's credits are all spent
    for _ in range(4):
        file(regular, make_purchase(regular, "pro"))
    make_purchase(regular, "starter")
    failed, _ = job_services.charge_job("regular-lost", regular.email, "upscale", 2)
    job_services.fail_job(failed.id, FailureReason.PLATFORM_ERROR, "worker lost")
    make_staff()
    for number in range(3):
        incidents.record_incident(
            actor(staff),
            f"Outage {number}",
            utcnow() - timedelta(days=2, hours=number * 5),
            utcnow() - timedelta(days=2, hours=number * 5 - 4),
            "",
        )
    long = refunds.file_request(
        regular, spent, RequestReason.JOB_FAILED, "Lost.", "", failed, False, [], utcnow()
    )
    for number in range(6):
        staff_services.add_note(long.id, actor(staff), f"Looked at it ({number}).")
    assert unused_credits(spent) == 0
    return short, long


def test_request_page_costs_the_same_for_a_short_and_a_long_history(staff_client, staff):
    short, long = short_and_long_requests(staff)

    few = statements(staff_client, detail_path(short.id))
    many = statements(staff_client, detail_path(long.id))

    assert few == many <= PAGE_BUDGET


def test_the_page_recommends_what_approving_will_check(app, staff):
    # The page re-runs the pre-check from rows it loaded together; approval re-runs it
    # through recommendation_now. Both must reach the same figures.
    now = utcnow()
    for filed in short_and_long_requests(staff):
        detail = staff_queries.request_detail(filed.id, now)
        assert detail.current == staff_services.recommendation_now(detail.request, now)


def test_queue_views_cost_the_same_few_statements(staff_client, staff, customer):
    now = utcnow()
    bulk_requests(customer, 60)
    bulk_requests(customer, 5, assignee_id=staff.id, status=RequestStatus.IN_REVIEW)
    bulk_requests(customer, 8, status=RequestStatus.APPROVED, decided_at=now)
    views = [
        "/staff/",
        "/staff/?sort=age",
        "/staff/?verdict=needs_review&assignee=nobody",
        "/staff/?verdict=likely_eligible&assignee=me",
        "/staff/?status=waiting_on_customer&reason=charged_twice",
        "/staff/?status=approved&sort=age",
        "/staff/?overdue=1",
    ]

    counts = {view: statements(staff_client, view) for view in views}

    assert len(set(counts.values())) == 1, counts
    assert max(counts.values()) <= PAGE_BUDGET


def test_a_new_staff_member_can_be_handed_requests_at_once(staff_client, customer):
    request = file(customer, make_purchase(customer, "pro"))
    staff_client.get(detail_path(request.id))
    newcomer = make_staff(email="newcomer@example.com")

    page = staff_client.get(detail_path(request.id)).get_data(as_text=True)

    assert f'<option value="{newcomer.id}">newcomer@example.com</option>' in page
