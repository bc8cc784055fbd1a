import csv
import io
import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from portal.db import db
from portal.ledger.models import LedgerEntry
from portal.timeutil import DATE_TIME_FORMAT
from tests.factories import QueryCounter, login_as, make_purchase, make_user, spend_history


@pytest.fixture
def customer(client):
    user = make_user()
    make_purchase(user, "premium")
    login_as(client, user)
    return user


def table(response) -> str:
    """The history table alone (the filter form repeats every label)."""
    page = response.get_data(as_text=True)
    return page[page.find("<tbody>") :] if "<tbody>" in page else ""


def test_history_lists_every_entry_newest_first_with_balance_after(client, customer):
    spend_history(customer, 3, credits=2)
    page = table(client.get("/history"))
    assert page.index("Job charged") < page.index("Credits bought")
    assert "+1,000" in page and "−2" not in page and "-2" in page
    assert ">994<" in page


def test_history_pages_by_cursor_without_gaps_or_repeats(client, customer):
    spend_history(customer, 12)
    seen = []
    response = client.get("/history?per_page=5")
    while True:
        ids = [int(i) for i in re.findall(r"job (\d+)</a>", response.get_data(as_text=True))]
        seen.extend(ids)
        older = re.search(
            r'href="([^"]*before=\d+[^"]*)" rel="next"', response.get_data(as_text=True)
        )
        if not older:
            break
        response = client.get(older.group(1).replace("&amp;", "&"))
    assert seen == sorted(set(seen), reverse=True)
    assert len(seen) == 12


def test_newer_link_returns_to_the_previous_page(client, customer):
    spend_history(customer, 8)
    first = client.get("/history?per_page=3").get_data(as_text=True)
    older = re.search(r'href="([^"]*)" rel="next"', first).group(1).replace("&amp;", "&")
    second = client.get(older).get_data(as_text=True)
    newer = re.search(r'href="([^"]*)" rel="prev"', second).group(1).replace("&amp;", "&")
    back = client.get(newer).get_data(as_text=True)
    assert re.findall(r"job (\d+)</a>", back) == re.findall(r"job (\d+)</a>", first)


def test_history_filters_by_kind(client, customer):
    spend_history(customer, 4, fail_every=2)
    page = table(client.get("/history?kind=job_refund"))
    assert page.count("Failed job: credits returned") == 2
    assert "Job charged" not in page


def test_history_filters_by_date_range_in_the_customers_timezone(client, customer):
    customer.timezone = "America/Vancouver"
    db.session.commit()
    spend_history(customer, 2)
    # 2026-03-10 06:30 UTC is still March 9 in Vancouver (23:30 PDT).
    db.session.execute(
        update(LedgerEntry)
        .where(LedgerEntry.job_id.is_not(None))
        .values(created_at=datetime(2026, 3, 10, 6, 30, tzinfo=UTC))
    )
    db.session.commit()
    march_9 = table(client.get("/history?start=2026-03-09&end=2026-03-09"))
    march_10 = table(client.get("/history?start=2026-03-10&end=2026-03-10"))
    assert march_9.count("Job charged") == 2
    assert "Job charged" not in march_10


def test_history_with_end_before_start_says_so(client, customer):
    response = client.get("/history?start=2026-03-10&end=2026-03-01")
    assert response.status_code == 400
    assert b"end date is before the start date" in response.data


@pytest.mark.parametrize(
    "query", ["kind=nonsense", "start=yesterday", "before=abc", "per_page=-4", "after=-1"]
)
def test_history_survives_bad_query_strings(client, customer, query):
    assert client.get(f"/history?{query}").status_code in (200, 400)


def test_history_query_count_does_not_grow_with_page_size_or_depth(client, customer):
    spend_history(customer, 60, fail_every=7)
    engine = db.engine
    counts = []
    for path in ("/history?per_page=5", "/history?per_page=200", "/history?per_page=5&before=20"):
        with QueryCounter(engine) as counter:
            assert client.get(path).status_code == 200
        counts.append(counter.count)
    assert len(set(counts)) == 1 and counts[0] <= 8


def test_csv_export_streams_the_filtered_history(client, customer):
    spend_history(customer, 5)
    response = client.get("/history.csv?kind=job_charge")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    assert rows[0][:4] == ["date", "what happened", "credits", "balance after"]
    assert len(rows) == 6
    assert {row[1] for row in rows[1:]} == {"Job charged"}
    assert [int(row[3]) for row in rows[1:]] == [995, 996, 997, 998, 999]


def test_csv_export_defuses_spreadsheet_formulas(client, customer):
    from portal.jobs import services

    services.charge_job("formula", customer.email, "=HYPERLINK(1)", 1)
    rows = list(csv.reader(io.StringIO(client.get("/history.csv").get_data(as_text=True))))
    assert rows[1][6] == "'=HYPERLINK(1)"


def test_history_shows_only_the_customers_own_entries(client, customer):
    stranger = make_user()
    make_purchase(stranger, "starter")
    spend_history(stranger, 3)
    page = table(client.get("/history"))
    csv_text = client.get("/history.csv").get_data(as_text=True)
    assert "Job charged" not in page and "Starter" not in page
    assert len(csv_text.strip().splitlines()) == 2


def test_history_times_follow_the_customers_timezone(client, customer):
    customer.timezone = "Asia/Tokyo"
    db.session.commit()
    entry = db.session.scalars(select(LedgerEntry)).one()
    tokyo = entry.created_at + timedelta(hours=9)
    page = client.get("/history").get_data(as_text=True)
    assert tokyo.strftime(DATE_TIME_FORMAT) in page
