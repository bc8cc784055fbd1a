"""Journey 6: staff pages refuse customers (403 page) and send visitors to log in."""

import re

from playwright.sync_api import expect

from tests.e2e.support import PASSWORD, create_customer, log_in, main_nav


def test_customer_gets_the_403_page_and_a_visitor_gets_the_log_in_page(browse, live_server):
    # The browser reports the 403 document itself as a failed resource: that one is expected.
    browse.allow_console_error(r"Failed to load resource: .*status of 403")
    email = create_customer(live_server)
    page = browse.open("customer")
    log_in(browse, page, email)
    browse.check(page, "dashboard")

    for path in ("/staff/", "/staff/requests/1", "/staff/audit"):
        response = page.goto(path)
        assert response.status == 403, (path, response.status)
        expect(page.get_by_role("heading", level=1)).to_have_text(
            "You do not have access to this page"
        )
        expect(page.get_by_text("Error 403")).to_be_visible()
        # The customer's own navigation, not the staff one.
        expect(main_nav(page).get_by_role("link", name="Refund queue")).to_have_count(0)
        browse.check(page, f"403 on {path}")

    page.get_by_role("link", name="Go to the home page").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Credits for AI image processing")
    browse.check(page, "home, logged in")

    main_nav(page).get_by_role("button", name="Log out").click()
    expect(page.get_by_role("status")).to_contain_text("You are logged out.")
    expect(main_nav(page).get_by_role("link", name="Log in")).to_be_visible()
    browse.check(page, "home, logged out")

    for path in ("/staff/", "/staff/requests/1", "/dashboard"):
        page.goto(path)
        page.wait_for_url(re.compile(r"/login\?next="))
        expect(page.get_by_role("heading", level=1)).to_have_text("Log in")
        expect(page.get_by_role("status")).to_contain_text("Please log in to see that page.")
        browse.check(page, f"log-in page instead of {path}")

    # Logging in from there goes back to the page that was asked for.
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/dashboard$"))
    browse.check(page, "dashboard after logging in again")
