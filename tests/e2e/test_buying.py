"""Journeys 1 and 2: a new visitor buys Pro; a declined card credits nothing; and a payment
the bank disputes holds its credits until the dispute is won."""

import re

from playwright.sync_api import expect

from tests.e2e.support import (
    CARD_DECLINED,
    CARD_DISPUTED,
    CARD_OK,
    PASSWORD,
    create_customer,
    emailed_link,
    log_in,
    main_nav,
    pay_in_sandbox,
    purchase_of,
    unique_email,
)


def test_new_visitor_reads_the_offer_signs_up_and_buys_pro(browse, live_server):
    page = browse.open("visitor")

    page.goto("/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Credits for AI image processing")
    pro = page.locator("#packages li.package").filter(has=page.get_by_role("heading", name="Pro"))
    expect(pro).to_contain_text("300 credits")
    expect(pro).to_contain_text("$20.00")
    browse.check(page, "landing with the packages")

    main_nav(page).get_by_role("link", name="Refund policy").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Refund policy")
    expect(page.get_by_role("heading", name="Eligibility for refunds")).to_be_visible()
    expect(page.get_by_role("heading", name="Contact information")).to_be_visible()
    expect(
        page.get_by_role("row", name=re.compile(r"Pro\s+300 credits\s+\$20\.00 USD"))
    ).to_be_visible()
    browse.check(page, "refund policy")

    main_nav(page).get_by_role("link", name="Sign up").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Create your account")
    browse.check(page, "sign-up form")
    email = unique_email("visitor")
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Repeat password").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    page.wait_for_url(re.compile(r"/login$"))
    expect(page.get_by_role("status")).to_contain_text("Check your inbox")
    browse.check(page, "check your inbox")

    page.goto(emailed_link(live_server, email))
    expect(page.get_by_role("heading", level=1)).to_have_text("Finish creating your account")
    browse.check(page, "finish sign-up")
    page.get_by_role("button", name="Create my account").click()
    page.wait_for_url(re.compile(r"/dashboard$"))
    # A new account reports the browser's timezone once, then the page reloads in it.
    page.wait_for_function("() => !document.querySelector('meta[name=\"report-timezone\"]')")
    expect(page.locator(".balance")).to_have_text(re.compile(r"^\s*0\s+credits\s*$"))
    browse.check(page, "empty dashboard")

    pay_in_sandbox(browse, page, "Pro", CARD_OK, "$20.00")

    page.wait_for_url(re.compile(r"/credits/success\?session_id=cs_"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Credits added")
    expect(
        page.get_by_text("300 credits from your Pro purchase are in your account.")
    ).to_be_visible()
    expect(page.get_by_text("Your balance is now 300 credits.")).to_be_visible()
    browse.check(page, "success page")

    page.get_by_role("link", name="Go to the dashboard").click()
    expect(page.locator(".balance")).to_have_text(re.compile(r"^\s*300\s+credits\s*$"))
    expect(page.get_by_role("row", name=re.compile(r"Pro\s+300 of 300\s+Credited"))).to_be_visible()

    chart = page.get_by_role("img", name="Closing balance each day")
    expect(chart).to_be_visible()
    box = chart.bounding_box()
    assert box and box["width"] > 300 and box["height"] > 100, box
    points = page.locator("svg polyline.chart-line").get_attribute("points").split()
    assert len(points) >= 2, points
    # The line ends higher than it starts: the balance went from 0 to 300 today.
    first_y, last_y = float(points[0].split(",")[1]), float(points[-1].split(",")[1])
    assert last_y < first_y, points
    expect(page.locator("#chart-desc")).to_contain_text("From 0 to 300 credits")
    browse.check(page, "dashboard with 300 credits and the chart")

    _, intent, status = purchase_of(live_server, email, "pro")
    assert status == "credited" and intent


def test_declined_card_credits_nothing_and_shows_the_purchase_failed(browse, live_server):
    email = create_customer(live_server)
    page = browse.open("customer")
    log_in(browse, page, email)
    browse.check(page, "dashboard before buying")

    pay_in_sandbox(browse, page, "Starter", CARD_DECLINED, "$5.00")

    page.wait_for_url(re.compile(r"/sandbox/checkout/cs_\w+\?declined=1$"))
    expect(page.get_by_role("alert")).to_have_text(
        "Your card was declined. Try another card or go back."
    )
    browse.check(page, "card declined")

    page.get_by_role("button", name="Cancel and go back").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("No payment was made")
    expect(page.get_by_text("nothing was charged and no credits were added")).to_be_visible()
    browse.check(page, "checkout left")

    main_nav(page).get_by_role("link", name="Purchases").click()
    row = page.get_by_role("row", name=re.compile(r"Starter"))
    # The bank's decline reaches the portal as a webhook, a moment after the redirect.
    for _ in range(50):
        if "Failed" in row.inner_text():
            break
        page.wait_for_timeout(200)
        page.reload()
    expect(row.get_by_role("cell").nth(5)).to_have_text("Failed")
    expect(row).not_to_contain_text("Request a refund")
    expect(row.get_by_role("button", name="Cancel checkout")).to_have_count(0)
    browse.check(page, "purchases with the failed one")

    main_nav(page).get_by_role("link", name="Dashboard").click()
    expect(page.locator(".balance")).to_have_text(re.compile(r"^\s*0\s+credits\s*$"))
    expect(page.get_by_role("row", name=re.compile(r"Starter\s+0 of 50\s+Failed"))).to_be_visible()
    browse.check(page, "dashboard still at 0 credits")

    assert purchase_of(live_server, email, "starter")[2] == "failed"


def test_a_disputed_payment_holds_its_credits_until_the_bank_decides(browse, live_server):
    email = create_customer(live_server)
    page = browse.open("customer")
    log_in(browse, page, email)

    pay_in_sandbox(browse, page, "Starter", CARD_DISPUTED, "$5.00")
    page.wait_for_url(re.compile(r"/credits/success\?session_id=cs_"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Credits added")
    browse.check(page, "success page of the payment the bank will dispute")

    main_nav(page).get_by_role("link", name="Purchases").click()
    row = page.get_by_role("row", name=re.compile(r"Starter"))
    # The bank's dispute reaches the portal as a webhook, a moment after the payment.
    for _ in range(50):
        if "Disputed" in row.inner_text():
            break
        page.wait_for_timeout(200)
        page.reload()
    expect(row).to_contain_text("Disputed")
    expect(row).not_to_contain_text("Request a refund")
    browse.check(page, "purchases with the disputed one")
    main_nav(page).get_by_role("link", name="Dashboard").click()
    expect(page.locator(".balance")).to_have_text(re.compile(r"^\s*0\s+credits\s*$"))
    browse.check(page, "dashboard while the payment is disputed")

    bank = browse.open("bank")
    bank.goto("/sandbox/")
    header = bank.get_by_role("columnheader", name="Dispute")
    disputes = bank.get_by_role("table").filter(has=header)
    open_one = disputes.get_by_role("row").filter(has_text="needs_response")
    expect(open_one).to_have_count(1)
    browse.check(bank, "sandbox with an open dispute")
    open_one.get_by_role("button", name="Won").click()
    expect(disputes.get_by_role("row").filter(has_text="won")).to_have_count(1)
    browse.check(bank, "sandbox with the dispute won")

    for _ in range(50):
        page.reload()
        if "50" in page.locator(".balance").inner_text():
            break
        page.wait_for_timeout(200)
    expect(page.locator(".balance")).to_have_text(re.compile(r"^\s*50\s+credits\s*$"))
    browse.check(page, "dashboard after the dispute was won")
    assert purchase_of(live_server, email, "starter")[2] == "credited"
