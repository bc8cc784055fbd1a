import re
from datetime import date, timedelta

import pytest

from portal.billing.models import PurchaseStatus
from portal.db import db
from portal.jobs import services as job_services
from portal.jobs.models import FailureReason
from portal.ledger import services as ledger
from portal.ledger.chart import balance_chart
from portal.ledger.queries import balance_series
from portal.timeutil import utcnow
from tests.factories import QueryCounter, login_as, make_purchase, make_user, spend_history
from tests.html_text import visible_text

plain = visible_text


@pytest.fixture
def customer(client):
    user = make_user()
    login_as(client, user)
    return user


def test_dashboard_shows_balance_and_totals(client, customer):
    pro = make_purchase(customer, "pro")
    spend_history(customer, 10, credits=3, fail_every=5)
    ledger.claw_back(pro, 20, "test-claw-back")
    db.session.commit()
    text = plain(client.get("/dashboard"))
    # 300 bought, 30 charged, 6 returned (jobs 0 and 5), 20 refunded.
    assert "256 credits" in text
    assert "Credits bought 300" in text
    assert "Credits used 24" in text
    assert "Credits refunded 20" in text


def test_dashboard_chart_describes_the_balance_in_words(client, customer):
    make_purchase(customer, "premium", paid_at=utcnow() - timedelta(days=100))
    make_purchase(customer, "starter")
    page = client.get("/dashboard").get_data(as_text=True)
    assert "<svg" in page and "<polyline" in page
    assert "From 1,000 to 1,050 credits" in page


def test_dashboard_query_count_is_small_and_fixed(client, customer):
    make_purchase(customer, "premium")
    with QueryCounter(db.engine) as few:
        client.get("/dashboard")
    spend_history(customer, 40, fail_every=4)
    for _ in range(5):
        make_purchase(customer, "starter")
    with QueryCounter(db.engine) as many:
        client.get("/dashboard")
    assert few.count == many.count <= 8


def test_balance_series_carries_the_balance_across_quiet_days(customer):
    make_purchase(customer, "pro", paid_at=utcnow() - timedelta(days=200))
    series = balance_series(customer.id, 90, utcnow().date())
    assert len(series) == 90
    assert {balance for _, balance in series} == {300}
    assert series[-1][0] == utcnow().date()


def test_chart_scales_to_a_round_top_and_handles_an_empty_history():
    chart = balance_chart([(date(2026, 1, 1) + timedelta(days=i), i * 7) for i in range(90)])
    assert chart.y_ticks[-1].label == "1,000"
    assert chart.highest == 623 and chart.lowest == 0
    empty = balance_chart([(date(2026, 1, 1) + timedelta(days=i), 0) for i in range(90)])
    assert empty.end_balance == 0 and empty.line


def test_jobs_page_explains_failures_and_returned_credits(client, customer):
    make_purchase(customer, "pro")
    done, _ = job_services.charge_job("ok", customer.email, "upscale", 5)
    job_services.complete_job(done.id)
    lost, _ = job_services.charge_job("lost", customer.email, "colorize", 7)
    job_services.fail_job(lost.id, FailureReason.PLATFORM_ERROR, "GPU lost")
    bad, _ = job_services.charge_job("bad", customer.email, "denoise", 2)
    job_services.fail_job(bad.id, FailureReason.INVALID_INPUT, "not an image")
    text = plain(client.get("/jobs"))
    assert "problem on our side · credits returned" in text
    assert "input could not be processed" in text
    assert text.count("credits returned") == 1
    detail = plain(client.get(f"/jobs/{bad.id}"))
    assert "are not refunded" in detail


def test_jobs_page_query_count_is_fixed(client, customer):
    make_purchase(customer, "pro")
    spend_history(customer, 5)
    with QueryCounter(db.engine) as few:
        client.get("/jobs?per_page=2")
    spend_history(customer, 30)
    with QueryCounter(db.engine) as many:
        client.get("/jobs?per_page=50")
    assert few.count == many.count


def test_purchases_page_shows_unused_credits_and_refund_link(client, customer):
    pro = make_purchase(customer, "pro")
    make_purchase(customer, "starter", receipt_url="https://pay.stripe.com/receipts/x")
    spend_history(customer, 1, credits=212)
    text = plain(client.get("/purchases"))
    assert "Pro 300 88 $20.00" in text
    assert "Starter 50 50 $5.00" in text
    page = client.get("/purchases").get_data(as_text=True)
    assert f"/refunds/new?purchase_id={pro.id}" in page
    assert 'href="https://pay.stripe.com/receipts/x"' in page


@pytest.mark.parametrize(
    ("state", "words"),
    [
        pytest.param(
            {
                "status": PurchaseStatus.REFUNDED,
                "refunded_cents": 500,
                "committed_refund_cents": 500,
            },
            "Refunded in full",
            id="refunded in full",
        ),
        pytest.param(
            {"committed_refund_cents": 500},
            "Full refund on its way",
            id="approved in full, not yet at the bank",
        ),
        pytest.param({"status": PurchaseStatus.DISPUTED}, "Disputed with your bank", id="disputed"),
    ],
)
def test_a_purchase_with_nothing_left_to_refund_says_why_instead_of_offering_a_refund(
    client, customer, state, words
):
    purchase = make_purchase(customer, "starter", **state)
    link = f"/refunds/new?purchase_id={purchase.id}"

    listing = client.get("/purchases")
    assert link not in listing.get_data(as_text=True)
    assert "Request a refund" not in plain(listing)
    assert words in plain(listing)

    page = client.get(f"/purchases/{purchase.id}")
    assert link not in page.get_data(as_text=True)
    assert "Request a refund" not in plain(page)
    assert words in plain(page)


def test_a_partly_refunded_purchase_still_offers_a_refund_of_the_rest(client, customer):
    purchase = make_purchase(
        customer,
        "starter",
        status=PurchaseStatus.PARTIALLY_REFUNDED,
        refunded_cents=200,
        committed_refund_cents=200,
    )
    for path in ("/purchases", f"/purchases/{purchase.id}"):
        response = client.get(path)
        assert f"/refunds/new?purchase_id={purchase.id}" in response.get_data(as_text=True)
        assert "Refunded in full" not in plain(response)


@pytest.mark.parametrize(
    "path", ["/jobs/{job}", "/purchases/{purchase}", "/refunds/new?purchase_id={purchase}"]
)
def test_another_customers_objects_are_not_found(client, customer, path):
    stranger = make_user()
    purchase = make_purchase(stranger, "pro")
    job, _ = job_services.charge_job("theirs", stranger.email, "upscale", 1)
    response = client.get(path.format(job=job.id, purchase=purchase.id))
    assert response.status_code == 404
    assert stranger.email.encode() not in response.data


def test_own_purchase_and_job_pages_open(client, customer):
    purchase = make_purchase(customer, "basic")
    job, _ = job_services.charge_job("mine", customer.email, "upscale", 4)
    assert "Still unused 116" in plain(client.get(f"/purchases/{purchase.id}"))
    assert "Credits charged 4" in plain(client.get(f"/jobs/{job.id}"))


def test_the_navigation_marks_the_section_of_the_page(client, customer):
    purchase = make_purchase(customer, "pro")
    current = re.compile(r'<a href="([^"]+)" aria-current="page">')

    assert current.findall(client.get("/dashboard").get_data(as_text=True)) == ["/dashboard"]
    # A purchase's receipt belongs to Purchases.
    receipt = client.get(f"/purchases/{purchase.id}").get_data(as_text=True)
    assert current.findall(receipt) == ["/purchases"]
