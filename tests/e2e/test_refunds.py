"""Journeys 4 and 5: a customer asks for a refund; staff handle it until the money is back."""

import re

from playwright.sync_api import expect

from tests.e2e.support import (
    STAFF_PASSWORD,
    create_staff,
    customer_with_partly_used_pro,
    log_in,
    main_nav,
    make_overdue,
    open_refund_form,
    purchase_of,
    request_id_from,
    run_refund_worker,
    stat,
    status_of,
    wait_until,
)

DETAILS = "The outage last week kept me from using most of my credits; please refund the rest."


def file_request(browse, page) -> str:
    """Fill in the refund form for the open purchase, review the pre-check, submit it."""
    page.get_by_label("What happened?").select_option(label="Something else")
    page.get_by_label("Tell us what happened").fill(DETAILS)
    page.get_by_role("button", name="Check my case").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "What the policy says about your case"
    )
    browse.check(page, "pre-check")
    page.get_by_role("button", name="Submit my request").click()
    page.wait_for_url(re.compile(r"/refunds/\d+$"))
    heading = page.get_by_role("heading", level=1)
    expect(heading).to_have_text(re.compile(r"^Refund request RR-\d{6}$"))
    return heading.inner_text().removeprefix("Refund request ")


def test_customer_requests_a_refund_for_a_partly_used_purchase(browse, live_server, platform):
    _, page = customer_with_partly_used_pro(browse, live_server, platform)

    open_refund_form(browse, page)
    expect(page.get_by_text("240 of 300 credits unused")).to_be_visible()
    expect(
        page.get_by_text(re.compile(r"Requests are accepted until \w+ \d+, \d{4}"))
    ).to_be_visible()
    browse.check(page, "refund form")

    page.get_by_label("What happened?").select_option(label="Something else")
    page.get_by_label("Tell us what happened").fill(DETAILS)
    page.get_by_role("button", name="Check my case").click()

    expect(page.get_by_role("heading", level=1)).to_have_text(
        "What the policy says about your case"
    )
    expect(page.locator(".badge").first).to_have_text("Needs a closer look")
    rules = page.locator("ul.rules li")
    expect(rules.filter(has=page.get_by_text("Unused credits", exact=True))).to_contain_text(
        "240 of the 300 credits are unused, worth $16.00 at this package's price."
    )
    expect(
        rules.filter(has=page.get_by_text("Requested within 30 days", exact=True))
    ).to_have_class("rule-pass")
    expect(
        page.get_by_text(re.compile(r"Estimated refund: \$16\.00\s+for 240 unused credits"))
    ).to_be_visible()
    expect(page.get_by_text("We answer within 3–5 business days.")).to_be_visible()
    expect(page.locator("dl.contact")).to_contain_text(DETAILS)
    browse.check(page, "pre-check")

    page.get_by_role("button", name="Submit my request").click()
    page.wait_for_url(re.compile(r"/refunds/\d+$"))
    reference = page.get_by_role("heading", level=1).inner_text().removeprefix("Refund request ")
    assert re.fullmatch(r"RR-\d{6}", reference), reference
    expect(page.get_by_role("status")).to_contain_text(f"Your request {reference} is filed.")
    expect(status_of(page)).to_have_text("Open")
    # The deadline on the company's calendar, its zone named.
    expect(stat(page, "Answer due by")).to_have_text(
        re.compile(r"^\w{3}, \w{3} \d{1,2}, \d{4}, 11:59 PM Vancouver time \(P[SD]T\)$")
    )
    timeline = page.locator("ol.timeline li")
    expect(timeline).to_have_count(2)
    expect(timeline.nth(0)).to_contain_text("Filed — Request filed: something else.")
    expect(timeline.nth(1)).to_contain_text("Pre-check — Staff will look at your case")
    expect(page.get_by_text("Estimated refund: $16.00.")).to_be_visible()
    browse.check(page, "the filed request and its timeline")

    main_nav(page).get_by_role("link", name="Refunds").click()
    row = page.get_by_role("row", name=re.compile(reference))
    expect(row).to_contain_text("Something else")
    expect(row).to_contain_text("Open")
    browse.check(page, "refund requests")


def test_staff_ask_the_customer_answers_staff_approve_and_the_refund_settles(
    browse, live_server, platform
):
    email, customer = customer_with_partly_used_pro(browse, live_server, platform)
    open_refund_form(browse, customer)
    browse.check(customer, "refund form")
    reference = file_request(browse, customer)
    request_id = request_id_from(customer)
    browse.check(customer, "filed")
    make_overdue(live_server, request_id)

    staff_email = create_staff(live_server)
    staff = browse.open("staff")
    log_in(browse, staff, staff_email, STAFF_PASSWORD)
    expect(staff.get_by_role("heading", level=1)).to_have_text("Refund queue")
    browse.check(staff, "queue")

    views = staff.get_by_role("navigation", name="Saved views")
    views.get_by_role("link", name="Overdue").click()
    staff.wait_for_url(re.compile(r"overdue=1"))
    row = staff.get_by_role("row", name=re.compile(reference))
    expect(row).to_contain_text(email)
    expect(row).to_contain_text("overdue")
    expect(row).to_contain_text("Needs a closer look")
    expect(row).to_contain_text("$16.00")
    browse.check(staff, "overdue view")

    views.get_by_role("link", name="Unassigned").click()
    staff.wait_for_url(re.compile(r"assignee=nobody"))
    row = staff.get_by_role("row", name=re.compile(reference))
    expect(row.get_by_role("cell").nth(6)).to_have_text("—")  # Assignee
    browse.check(staff, "unassigned view")

    row.get_by_role("link", name=reference).click()
    expect(staff.get_by_role("heading", level=1)).to_have_text(f"{reference} · Something else")
    expect(staff.get_by_text(DETAILS)).to_be_visible()
    browse.check(staff, "request detail")

    question = "Which days could you not use the service? Please list them."
    staff.get_by_label("Question").fill(question)
    staff.get_by_role("button", name="Ask for information").click()
    expect(staff.get_by_role("status")).to_contain_text("Question sent")
    expect(status_of(staff)).to_have_text("Waiting on customer")
    browse.check(staff, "question sent")

    main_nav(customer).get_by_role("link", name="Refunds").click()
    expect(customer.get_by_role("row", name=re.compile(reference))).to_contain_text(
        "Waiting on customer"
    )
    browse.check(customer, "requests waiting on me")
    customer.get_by_role("link", name=reference).click()
    expect(
        customer.get_by_role("heading", name="We need a little more information")
    ).to_be_visible()
    expect(customer.locator("ol.timeline")).to_contain_text(question)
    browse.check(customer, "the question")
    answer = "Monday to Thursday of last week: every job timed out."
    customer.get_by_label("Your answer").fill(answer)
    customer.get_by_role("button", name="Send my answer").click()
    expect(customer.get_by_role("status")).to_contain_text(
        "Thank you, your answer was sent to our team."
    )
    expect(status_of(customer)).to_have_text("In review")
    expect(customer.locator("ol.timeline")).to_contain_text(answer)
    browse.check(customer, "answer sent")

    staff.reload()
    expect(status_of(staff)).to_have_text("In review")
    expect(staff.locator("ol.timeline")).to_contain_text(answer)
    expect(staff.get_by_label("Amount to refund (USD)")).to_have_value("16.00")
    staff.get_by_role("button", name="Approve refund").click()
    expect(staff.get_by_role("status")).to_contain_text(
        "Approved. The refund is scheduled and can be undone for 10 minutes."
    )
    expect(status_of(staff)).to_have_text("Approved")
    expect(staff.get_by_role("button", name=re.compile(r"^Undo \(until"))).to_be_visible()
    browse.check(staff, "approved, undo window open")

    sandbox = live_server.sandbox
    _, intent, _ = purchase_of(live_server, email, "pro")
    assert not [r for r in sandbox.refunds.values() if r["payment_intent"] == intent]

    # The worker's run after the 10-minute undo window: the refund goes to Stripe once.
    assert run_refund_worker(live_server) == 1
    assert run_refund_worker(live_server) == 0

    def refunds_of_purchase():
        with sandbox.lock:
            return [dict(r) for r in sandbox.refunds.values() if r["payment_intent"] == intent]

    wait_until(
        lambda: [r["status"] for r in refunds_of_purchase()] == ["succeeded"],
        "the sandbox to settle the refund",
    )
    (refund,) = refunds_of_purchase()
    assert refund["amount"] == 1600 and refund["currency"] == "usd"

    main_nav(customer).get_by_role("link", name="Refunds").click()
    browse.check(customer, "requests after approval")
    customer.get_by_role("link", name=reference).click()
    settled = customer.locator("ol.timeline li", has_text="Refund settled")
    for _ in range(50):  # the settlement arrives as a webhook, a moment after Stripe's
        if settled.count():
            break
        customer.wait_for_timeout(200)
        customer.reload()
    expect(settled).to_contain_text("$16.00 was refunded to your original payment method.")
    expect(status_of(customer)).to_have_text("Approved")
    expect(customer.locator("ol.timeline")).to_contain_text(
        "Approved: $16.00 back to your original payment method; "
        "240 unused credits leave your balance."
    )
    # Decided: what was refunded, no longer the pre-check's estimate.
    expect(customer.get_by_role("region", name="Your refund")).to_contain_text(
        "$16.00 refunded to your original payment method."
    )
    expect(customer.get_by_text("Estimated refund")).to_have_count(0)
    browse.check(customer, "refund settled")

    customer.get_by_role("link", name="The purchase").click()
    expect(status_of(customer)).to_have_text("Partially refunded")
    expect(stat(customer, "Refunded")).to_have_text("$16.00")
    expect(stat(customer, "Still unused")).to_have_text("0 of 300")
    browse.check(customer, "the purchase, partly refunded")

    main_nav(customer).get_by_role("link", name="Dashboard").click()
    expect(customer.locator(".balance")).to_have_text(re.compile(r"^\s*0\s+credits\s*$"))
    browse.check(customer, "dashboard after the refund")

    staff.reload()
    refund_line = staff.get_by_role("listitem").filter(has_text="attempt 1")
    expect(refund_line).to_contain_text("$16.00")
    expect(refund_line).to_contain_text("Succeeded")
    expect(refund_line).to_contain_text(refund["id"])
    browse.check(staff, "request with the refund settled")
    assert len(refunds_of_purchase()) == 1


def test_asking_about_a_job_that_failed_on_its_input(browse, live_server, platform):
    """ "Ask about this job" opens a form about that job, whatever else is open; a second
    job of the same purchase is told about the open request, with a link to it."""
    email, page = customer_with_partly_used_pro(browse, live_server, platform)
    first = platform.charge(email, 10, "colorize")
    platform.fail(first["id"], "not an image", reason="invalid_input")
    second = platform.charge(email, 5, "sharpen")
    platform.fail(second["id"], "empty file", reason="invalid_input")
    not_refunded = "failed because its input could not be processed; the policy refunds only "

    main_nav(page).get_by_role("link", name="Jobs").click()
    browse.check(page, "jobs")
    page.get_by_role("row", name=re.compile(r"colorize")).get_by_role("link").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Job {first['id']}: colorize")
    browse.check(page, "the job that failed on its input")
    page.get_by_role("link", name="Ask about this job").click()

    expect(page.get_by_role("heading", level=1)).to_have_text("Request a refund")
    reason = page.get_by_label("What happened?")
    expect(reason).to_have_value("job_failed")
    expect(page.get_by_text(f"Job {first['id']} {not_refunded}")).to_be_visible()
    expect(page.get_by_text("The refund policy sets no deadline for failed jobs")).to_be_visible()
    browse.check(page, "the job's form")

    # Sent without saying what happened: the form comes back (400) as it was filled in.
    browse.allow_console_error(r"Failed to load resource: .*status of 400")
    page.get_by_role("button", name="Check my case").click()
    expect(page.get_by_text("Tell us in a few words what happened.")).to_be_visible()
    expect(reason).to_have_value("job_failed")
    expect(page.get_by_text(f"About job {first['id']} (colorize), which failed.")).to_be_visible()
    browse.check(page, "the job's form after a missing answer")

    page.get_by_label("Tell us what happened").fill("The file was a PNG that opens everywhere.")
    page.get_by_role("button", name="Check my case").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "What the policy says about your case"
    )
    expect(page.locator(".badge").first).to_have_text("Likely not eligible")
    browse.check(page, "the job's pre-check")
    page.get_by_role("button", name="Submit anyway").click()
    page.wait_for_url(re.compile(r"/refunds/\d+$"))
    reference = page.get_by_role("heading", level=1).inner_text().removeprefix("Refund request ")
    browse.check(page, "the job's request")

    # The same purchase now has an open request: the second job is told so, not sent to it.
    browse.allow_console_error(r"Failed to load resource: .*status of 409")
    page.goto(f"/jobs/{second['id']}")
    browse.check(page, "the second job")
    page.get_by_role("link", name="Ask about this job").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("A refund cannot be requested here")
    expect(page.get_by_text(f"Job {second['id']} {not_refunded}")).to_be_visible()
    expect(page.locator("main")).to_contain_text(
        f"already has an open request, {reference} (about job {first['id']})."
    )
    expect(page.locator("main")).to_contain_text(
        f"A purchase has one open request at a time, so you can ask about this job once "
        f"{reference} is answered."
    )
    browse.check(page, "the second job, its purchase already asked about")
    page.get_by_role("link", name="See your open request").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Refund request {reference}")
    browse.check(page, "the open request")
