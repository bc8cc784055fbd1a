"""Issue 19's first journey: buy with "save my card", buy again with one press on Stripe's
page, open Manage cards and invoices, and find the invoice on the purchase's receipt."""

import re

from playwright.sync_api import expect

from tests.e2e.support import CARD_OK, create_customer, log_in, main_nav


def test_a_saved_card_makes_the_next_purchase_one_press(browse, live_server):
    email = create_customer(live_server)
    page = browse.open("customer")
    log_in(browse, page, email)
    browse.check(page, "dashboard")

    # First purchase: the customer asks to keep the card.
    main_nav(page).get_by_role("link", name="Buy credits").click()
    page.get_by_label("Save my card for next time").check()
    browse.check(page, "buy, saving the card")
    page.get_by_role("button", name="Buy Starter").click()
    page.wait_for_url(re.compile(r"/sandbox/checkout/cs_"))
    expect(page.get_by_text("A new card is saved for future purchases")).to_be_visible()
    browse.check(page, "checkout that saves the card")
    page.get_by_label(CARD_OK).check()
    page.get_by_role("button", name="Pay $5.00").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Credits added")
    browse.check(page, "first purchase credited")

    # Second purchase: the buy page names the saved card; Stripe's page has it chosen.
    main_nav(page).get_by_role("link", name="Buy credits").click()
    expect(page.get_by_text("Your saved Visa ending in 4242 is ready")).to_be_visible()
    browse.check(page, "buy again")
    page.get_by_role("button", name="Buy Basic").click()
    page.wait_for_url(re.compile(r"/sandbox/checkout/cs_"))
    expect(page.get_by_label(re.compile(r"Visa ending in 4242"))).to_be_checked()
    browse.check(page, "checkout with the saved card")
    page.get_by_role("button", name="Pay $10.00").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Credits added")
    expect(page.get_by_text("Your balance is now 170 credits.")).to_be_visible()

    # The receipt links the purchase's invoice, and names the card.
    page.get_by_role("link", name="See the purchase").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Receipt: Basic package")
    expect(page.locator(".receipt")).to_contain_text("Visa ending in 4242")
    invoice = page.get_by_role("link", name="View invoice")
    expect(invoice).to_be_visible()
    browse.check(page, "receipt with its invoice")
    invoice.click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Invoice SBX-")
    expect(page.get_by_text("Basic package: 120 credits")).to_be_visible()
    browse.check(page, "hosted invoice")
    page.go_back()

    # Manage cards and invoices: Stripe's portal lists the card and both invoices.
    main_nav(page).get_by_role("link", name="Account").click()
    page.get_by_role("button", name="Manage cards and invoices").click()
    page.wait_for_url(re.compile(r"/sandbox/billing/bps_"))
    expect(page.get_by_text(re.compile(r"Visa ending in 4242"))).to_be_visible()
    expect(page.locator("#invoices-heading + ul li")).to_have_count(2)
    browse.check(page, "billing portal")
    page.get_by_role("button", name="Remove").click()
    expect(page.get_by_text("No saved cards.")).to_be_visible()
    browse.check(page, "card removed")
    page.get_by_role("link", name=re.compile("Back to")).click()
    page.wait_for_url(re.compile(r"/account$"))
    browse.check(page, "back on the account page")
