"""The staff queue page: columns, filters, saved views, counts, sorting, keyset pages."""

import html
import re
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest

from portal import policy
from portal.db import db
from portal.refunds.eligibility import RequestReason, Verdict
from portal.refunds.models import RequestStatus
from portal.timeutil import utcnow
from tests.factories import QueryCounter, make_purchase, make_user
from tests.html_text import visible_text
from tests.staff.helpers import bulk_requests, file, text

_ROW = re.compile(
    r"<tr>\s*<td[^>]*><a href=\"/staff/requests/(\d+)\">(RR-\d{6})</a>(.*?)</td>(.*?)</tr>",
    re.S,
)
_CELL = re.compile(r"<td[^>]*>(.*?)</td>", re.S)


def rows(response) -> list[dict]:
    """The queue's rows: request id, reference and the visible text of the other cells."""
    assert response.status_code == 200, response.status_code
    found = []
    for request_id, reference, under, rest in _ROW.findall(response.get_data(as_text=True)):
        cells = [visible_text(under)] + [visible_text(cell) for cell in _CELL.findall(rest)]
        found.append({"id": int(request_id), "reference": reference, "cells": cells})
    return found


def ids(response) -> list[int]:
    return [row["id"] for row in rows(response)]


def next_link(response) -> str | None:
    match = re.search(r'<a href="([^"]+)" rel="next">', response.get_data(as_text=True))
    return html.unescape(match.group(1)) if match else None


def counts(response) -> dict[str, str]:
    page = response.get_data(as_text=True)
    block = page.split('aria-label="Requests by status"', 1)[1].split("</dl>", 1)[0]
    return dict(re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", block))


def walk(client, path: str) -> list[list[int]]:
    """Follow the Next links from `path`; return the ids of every page."""
    pages = []
    while path:
        response = client.get(path)
        pages.append(ids(response))
        path = next_link(response)
        assert len(pages) < 10, "pagination does not end"
    return pages


def test_the_queue_shows_each_open_request_with_its_columns(app, staff_client, staff):
    customer = make_user(email="pat@example.com")
    purchase = make_purchase(customer, "pro")
    now = utcnow()
    request = file(customer, purchase, now=now - timedelta(days=3, minutes=5))

    [row] = rows(staff_client.get("/staff/"))

    assert row["reference"] == request.reference
    age, email, bought, reason, verdict, due, assignee, status = row["cells"]
    assert age == "3 days old"
    assert email == "pat@example.com"
    assert bought == "Pro · $20.00"
    assert reason == "Something else"
    assert verdict == "Needs a closer look recommends $20.00"
    # The due day is the company's, whoever reads it.
    local_due = request.due_at.astimezone(ZoneInfo(policy.COMPANY_TIMEZONE))
    assert due == local_due.strftime("%a, %b %-d, %Y")
    assert assignee == "—"
    assert status == "Open"


def test_decided_requests_leave_the_default_view(app, staff_client, customer):
    open_ones = bulk_requests(customer, 2)
    bulk_requests(customer, 1, status=RequestStatus.APPROVED)
    bulk_requests(customer, 1, status=RequestStatus.DENIED)
    waiting = bulk_requests(customer, 1, status=RequestStatus.WAITING_ON_CUSTOMER)
    review = bulk_requests(customer, 1, status=RequestStatus.IN_REVIEW)

    shown = ids(staff_client.get("/staff/"))

    assert sorted(shown) == sorted(r.id for r in open_ones + waiting + review)


@pytest.fixture
def mixed(app, customer, staff, other_staff):
    """Requests that differ in one respect each, for the filters."""
    now = utcnow()
    made = {
        "plain": bulk_requests(customer, 1, due_at=lambda i: now + timedelta(days=4)),
        "mine": bulk_requests(customer, 1, assignee_id=staff.id, status=RequestStatus.IN_REVIEW),
        "theirs": bulk_requests(
            customer, 1, assignee_id=other_staff.id, status=RequestStatus.IN_REVIEW
        ),
        "eligible": bulk_requests(
            customer, 1, verdict=Verdict.LIKELY_ELIGIBLE, recommended_cents=2000
        ),
        "twice": bulk_requests(customer, 1, reason=RequestReason.CHARGED_TWICE),
        "overdue": bulk_requests(customer, 1, due_at=lambda i: now - timedelta(hours=2)),
        "waiting_overdue": bulk_requests(
            customer,
            1,
            status=RequestStatus.WAITING_ON_CUSTOMER,
            due_at=lambda i: now - timedelta(days=1),
        ),
        "denied": bulk_requests(customer, 1, status=RequestStatus.DENIED),
    }
    return {name: [r.id for r in requests] for name, requests in made.items()}


ALL_OPEN = ["plain", "mine", "theirs", "eligible", "twice", "overdue", "waiting_overdue"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ALL_OPEN),
        ("status=open", ["plain", "eligible", "twice", "overdue"]),
        ("status=in_review", ["mine", "theirs"]),
        ("status=waiting_on_customer", ["waiting_overdue"]),
        ("status=denied", ["denied"]),
        ("verdict=likely_eligible", ["eligible"]),
        ("verdict=needs_review", [n for n in ALL_OPEN if n != "eligible"]),
        ("reason=charged_twice", ["twice"]),
        ("assignee=me", ["mine"]),
        ("assignee=nobody", [n for n in ALL_OPEN if n not in ("mine", "theirs")]),
        ("assignee=anyone", ALL_OPEN),
        ("overdue=1", ["overdue"]),
        ("assignee=nobody&reason=charged_twice", ["twice"]),
    ],
)
def test_each_filter(staff_client, mixed, query, expected):
    shown = ids(staff_client.get(f"/staff/?{query}"))
    assert sorted(shown) == sorted(mixed[name][0] for name in expected)


def test_saved_views(staff_client, mixed):
    page = staff_client.get("/staff/").get_data(as_text=True)
    nav = page.split('aria-label="Saved views"', 1)[1].split("</nav>", 1)[0]
    links = {
        name.strip(): html.unescape(href)
        for href, name in re.findall(r'<a href="([^"]+)">([^<]+)</a>', nav)
    }
    expected = {
        "Mine": ["mine"],
        "Unassigned": [n for n in ALL_OPEN if n not in ("mine", "theirs")],
        "Overdue": ["overdue"],
        "Likely eligible": ["eligible"],
        "Waiting on customer": ["waiting_overdue"],
    }
    for name, names in expected.items():
        assert name in links, links
        shown = ids(staff_client.get(links[name]))
        assert sorted(shown) == sorted(mixed[n][0] for n in names), name


def test_an_invalid_filter_is_a_400_page_not_a_crash(staff_client, mixed):
    response = staff_client.get("/staff/?status=bogus&assignee=everyone&sort=random")
    assert response.status_code == 400
    assert "Refund queue" in text(response)


def test_counts_open_requests_by_status_and_last_weeks_decisions(staff_client, customer):
    now = utcnow()
    bulk_requests(customer, 3)
    bulk_requests(customer, 2, status=RequestStatus.IN_REVIEW)
    bulk_requests(customer, 1, status=RequestStatus.WAITING_ON_CUSTOMER)
    bulk_requests(customer, 4, status=RequestStatus.APPROVED, decided_at=now - timedelta(days=6))
    bulk_requests(customer, 5, status=RequestStatus.DENIED, decided_at=now - timedelta(hours=1))
    # Decided before the week: history, not today's work.
    bulk_requests(customer, 7, status=RequestStatus.APPROVED, decided_at=now - timedelta(days=8))
    bulk_requests(customer, 2, status=RequestStatus.DENIED, decided_at=now - timedelta(days=30))
    bulk_requests(customer, 1, status=RequestStatus.CLOSED, decided_at=now)

    shown = counts(staff_client.get("/staff/"))

    assert shown == {
        "Open": "3",
        "In review": "2",
        "Waiting on customer": "1",
        "Approved (last 7 days)": "4",
        "Denied (last 7 days)": "5",
    }


def test_sort_by_due_date_and_by_age(staff_client, customer):
    now = utcnow()
    # The oldest request is due last, so the two orders are each other's reverse.
    made = bulk_requests(
        customer,
        5,
        created_at=lambda i: now - timedelta(days=10 - i),
        due_at=lambda i: now + timedelta(days=10 - i),
    )
    by_age = [r.id for r in made]

    assert ids(staff_client.get("/staff/")) == list(reversed(by_age))
    assert ids(staff_client.get("/staff/?sort=due")) == list(reversed(by_age))
    assert ids(staff_client.get("/staff/?sort=age")) == by_age


@pytest.mark.parametrize("sort", ["due", "age"])
def test_keyset_pagination_over_120_requests_has_no_repeats_and_no_gaps(
    staff_client, customer, sort
):
    now = utcnow()
    # Many requests share a due date, so the id must break ties.
    made = bulk_requests(
        customer,
        120,
        created_at=lambda i: now - timedelta(days=30, minutes=-i),
        due_at=lambda i: now + timedelta(days=i % 7),
    )
    expected = (
        [r.id for r in sorted(made, key=lambda r: (r.due_at, r.id))]
        if sort == "due"
        else [r.id for r in made]
    )

    pages = walk(staff_client, f"/staff/?sort={sort}")

    assert [len(page) for page in pages] == [50, 50, 20]
    flat = [request_id for page in pages for request_id in page]
    assert len(flat) == len(set(flat)), "a request appears twice"
    assert flat == expected


def test_pages_keep_the_filters(staff_client, customer, staff):
    now = utcnow()
    mine = bulk_requests(
        customer,
        60,
        assignee_id=staff.id,
        status=RequestStatus.IN_REVIEW,
        due_at=lambda i: now + timedelta(hours=i),
    )
    bulk_requests(customer, 30, due_at=lambda i: now + timedelta(minutes=30 + 60 * i))

    pages = walk(staff_client, "/staff/?assignee=me")

    assert [len(page) for page in pages] == [50, 10]
    assert [i for page in pages for i in page] == [r.id for r in mine]


def test_exactly_one_full_page_has_no_next_link(staff_client, customer):
    bulk_requests(customer, 50)
    response = staff_client.get("/staff/")
    assert len(ids(response)) == 50
    assert next_link(response) is None


def test_overdue_and_due_soon_are_marked(staff_client, customer):
    now = utcnow()
    late = bulk_requests(customer, 1, due_at=lambda i: now - timedelta(hours=1))[0]
    soon = bulk_requests(customer, 1, due_at=lambda i: now + timedelta(hours=12))[0]
    later = bulk_requests(customer, 1, due_at=lambda i: now + timedelta(days=3))[0]
    paused = bulk_requests(
        customer,
        1,
        status=RequestStatus.WAITING_ON_CUSTOMER,
        due_at=lambda i: now - timedelta(days=2),
        clock_paused_at=now - timedelta(days=3),
    )[0]

    page = staff_client.get("/staff/")
    due = {row["id"]: row["cells"][5] for row in rows(page)}
    source = page.get_data(as_text=True)

    assert due[late.id].endswith("· overdue")
    assert due[soon.id].endswith("· due soon")
    assert "overdue" not in due[later.id] and "soon" not in due[later.id]
    assert "overdue" not in due[paused.id]
    overdue_cells = re.findall(r'<td data-label="Due" class="overdue">', source)
    assert len(overdue_cells) == 1


MALFORMED_CURSORS = [
    "abc",
    "-",
    "1-2-3",
    "-5",
    "5-",
    "1.5-2",
    "١٢٣-١",
    "999999999999999999-1",
    "9999999999999999999999-1",
    "1700000000000000-0",
    "1700000000000000-99999999999",
    "0-1",
    "12345678901",
    "x" * 5000,
]


@pytest.mark.parametrize("sort", ["due", "age"])
def test_a_malformed_cursor_does_not_crash(staff_client, customer, sort):
    made = bulk_requests(customer, 3)
    for cursor in MALFORMED_CURSORS:
        response = staff_client.get("/staff/", query_string={"cursor": cursor, "sort": sort})
        assert response.status_code == 200, cursor
        assert len(ids(response)) in (0, len(made)), cursor
    with_nul = staff_client.get("/staff/", query_string={"cursor": "1\x00", "sort": sort})
    assert with_nul.status_code == 400


def test_queue_query_count_does_not_grow_with_the_number_of_requests(
    app, staff_client, customer, staff, other_staff
):
    def queries_for_page() -> int:
        staff_client.get("/staff/")  # warm up: the first request may load more
        with QueryCounter(db.engine) as counter:
            response = staff_client.get("/staff/")
        assert response.status_code == 200
        return counter.count

    def add(count: int) -> None:
        bulk_requests(customer, count)
        bulk_requests(customer, count, assignee_id=staff.id, status=RequestStatus.IN_REVIEW)
        bulk_requests(
            make_user(), count, assignee_id=other_staff.id, status=RequestStatus.IN_REVIEW
        )

    add(1)
    few = queries_for_page()
    add(15)
    many = queries_for_page()

    assert len(ids(staff_client.get("/staff/"))) == 48
    assert many == few, f"{few} queries for 3 requests, {many} for 48"
