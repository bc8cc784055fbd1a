"""Phone-sized screens (390×844): the main pages fit without scrolling sideways."""

import re

from playwright.sync_api import expect

from tests.e2e.support import (
    PHONE_CONTEXT,
    STAFF_PASSWORD,
    create_staff,
    customer_with_partly_used_pro,
    log_in,
    main_nav,
    open_refund_form,
)


def test_dashboard_history_refund_form_and_queue_fit_a_phone(browse, live_server, platform):
    email, page = customer_with_partly_used_pro(browse, live_server, platform, **PHONE_CONTEXT)
    job = platform.charge(email, 5, "colorize")
    platform.fail(job["id"], "GPU worker lost")

    main_nav(page).get_by_role("link", name="Dashboard").click()
    expect(page.get_by_role("img", name="Closing balance each day")).to_be_visible()
    browse.check_phone_width(page, "dashboard")

    main_nav(page).get_by_role("link", name="History").click()
    expect(page.locator("table tbody tr")).to_have_count(5)
    browse.check_phone_width(page, "history")

    open_refund_form(browse, page)
    browse.check_phone_width(page, "refund form")
    page.get_by_label("What happened?").select_option(label="Something else")
    page.get_by_label("Tell us what happened").fill("Most credits went unused during an outage.")
    page.get_by_role("button", name="Check my case").click()
    browse.check(page, "pre-check")
    page.get_by_role("button", name="Submit my request").click()
    page.wait_for_url(re.compile(r"/refunds/\d+$"))
    browse.check(page, "request filed")

    staff = browse.open("staff", **PHONE_CONTEXT)
    log_in(browse, staff, create_staff(live_server), STAFF_PASSWORD)
    expect(staff.get_by_role("row", name=re.compile(email))).to_have_count(1)
    browse.check_phone_width(staff, "queue")
