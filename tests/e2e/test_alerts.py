"""Journey 7: a customer sets a low-balance alert on the Account page; the platform charges
jobs across it and the customer gets exactly one e-mail, which the portal lists."""

import re

from playwright.sync_api import expect

from tests.e2e.support import (
    PHONE_CONTEXT,
    customer_with_starter,
    log_in,
    main_nav,
)


def alert_section(page):
    return page.get_by_role("region", name="Low-balance alert")


def test_an_alert_set_on_the_account_page_sends_one_e_mail_when_jobs_cross_it(
    browse, live_server, platform
):
    email, page = customer_with_starter(browse, live_server)
    # A week of use at this rate suggests 7 credits (30 in 30 days, 1 a day, times 7).
    platform.complete(platform.charge(email, 30, "upscale")["id"])

    main_nav(page).get_by_role("link", name="Account").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Your account")
    section = alert_section(page)
    expect(section).to_contain_text("Off.")
    expect(section).to_contain_text(
        "Suggested: 7 credits, which is 7 days at your average of about 1 credit a day"
    )
    field = section.get_by_label("E-mail me when my balance falls below")
    expect(field).to_have_value("7")
    browse.check(page, "account page, alert off")

    # A refused form answers 400, which the browser reports in its console.
    browse.allow_console_error(r"Failed to load resource: .*status of 400")
    field.fill("1e3")
    section.get_by_role("button", name="Turn on alert").click()
    expect(
        alert_section(page).get_by_text("Write a whole number of credits, like 500.")
    ).to_be_visible()
    expect(alert_section(page).get_by_label("E-mail me when my balance falls below")).to_have_value(
        "1e3"
    )
    browse.check(page, "a threshold that is not a number")

    alert_section(page).get_by_label("E-mail me when my balance falls below").fill("15")
    alert_section(page).get_by_role("button", name="Turn on alert").click()
    page.wait_for_url(re.compile(r"/account#low-balance-alert$"))
    expect(page.get_by_role("status")).to_contain_text(
        "we will e-mail you when your balance falls below 15 credits"
    )
    expect(alert_section(page)).to_contain_text(
        "On: we e-mail you when your balance falls below 15 credits"
    )
    browse.check(page, "alert on at 15 credits")

    # 20 left: three more jobs of 4 go to 16, 12 (the crossing) and 8.
    answers = [platform.charge(email, 4, "colorize") for _ in range(3)]
    assert [(a["balance_after"], a["balance_below_threshold"]) for a in answers] == [
        (16, False),
        (12, True),
        (8, True),
    ]
    assert {a["low_balance_threshold"] for a in answers} == {15}

    main_nav(page).get_by_role("link", name="Dashboard").click()
    expect(page.locator(".balance-alert")).to_have_text(
        re.compile(r"Below your low-balance alert of 15 credits\.\s+Change the alert")
    )
    browse.check(page, "dashboard below the alert")

    page.goto("/messages")
    expect(page.get_by_role("heading", level=1)).to_have_text("E-mails we sent you")
    alerts = page.get_by_role("link", name=re.compile(r"^Your balance is below"))
    expect(alerts).to_have_count(1)
    expect(alerts).to_have_text("Your balance is below 15 credits")
    browse.check(page, "one alert among the e-mails")

    alerts.click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Your balance is below 15 credits")
    expect(page.get_by_text("Your balance is 12 credits, below the 15 credits")).to_be_visible()
    expect(page.get_by_text("To change the amount or turn the alert off")).to_be_visible()
    browse.check(page, "the alert e-mail")

    # The same pages on a phone, and the alert turned off from there.
    phone = browse.open("phone", **PHONE_CONTEXT)
    log_in(browse, phone, email)
    browse.check_phone_width(phone, "dashboard")
    phone.goto("/account")
    expect(alert_section(phone)).to_contain_text("below it now")
    browse.check_phone_width(phone, "account page, alert on")
    phone.goto("/messages")
    expect(phone.get_by_role("link", name=re.compile(r"^Your balance is below"))).to_have_count(1)
    browse.check_phone_width(phone, "e-mails")
    phone.goto("/account")
    alert_section(phone).get_by_role("button", name="Turn off alert").click()
    phone.wait_for_url(re.compile(r"/account#low-balance-alert$"))
    expect(alert_section(phone)).to_contain_text("Off.")
    browse.check_phone_width(phone, "alert turned off")
    assert not browse.phone_widths, browse.phone_widths
