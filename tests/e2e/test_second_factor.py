"""Journey 8: a new staff member sets up an authenticator, logs in with it, then with a
recovery code once."""

import re

import pyotp
from playwright.sync_api import expect

from tests.e2e.support import PHONE_CONTEXT, STAFF_PASSWORD, create_staff, main_nav


def _password_step(browse, page, email: str) -> None:
    page.goto("/login")
    browse.check(page, "log-in form")
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password", exact=True).fill(STAFF_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/login/second-factor$"))


def _log_out(browse, page) -> None:
    browse.check(page, "staff queue")
    main_nav(page).get_by_role("button", name="Log out").click()
    expect(page.get_by_role("status")).to_contain_text("You are logged out.")
    browse.check(page, "logged out")


def test_new_staff_enrol_from_the_qr_code_then_log_in_with_a_code_and_a_recovery_code(
    browse, live_server
):
    # A wrong code answers 400, and the browser reports that document as failed.
    browse.allow_console_error(r"Failed to load resource: .*status of 400")
    email = create_staff(live_server, enrolled=False)
    page = browse.open("new staff member")
    _password_step(browse, page, email)
    expect(page.get_by_role("heading", level=1)).to_have_text("Set up your authenticator")
    qr = page.get_by_role("img", name=re.compile("QR code"))
    expect(qr).to_be_visible()
    assert page.evaluate("(img) => img.naturalWidth > 0", qr.element_handle())
    browse.check(page, "authenticator set-up")

    # The phone: the key shown beside the QR code is the one the code encodes.
    secret = page.locator("code.totp-secret").inner_text().replace(" ", "")
    phone = pyotp.TOTP(secret)
    page.get_by_label("Code").fill("000000" if phone.now() != "000000" else "111111")
    page.get_by_role("button", name="Turn it on").click()
    expect(page.locator(".field-error")).to_contain_text("That code is not right")
    page.get_by_label("Code").fill(phone.now())
    page.get_by_role("button", name="Turn it on").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Your authenticator is on")
    codes = page.locator(".recovery-codes code").all_inner_texts()
    assert len(codes) == 10
    browse.check(page, "recovery codes")
    page.get_by_role("link", name=re.compile("go to the queue")).click()
    page.wait_for_url(re.compile(r"/staff/$"))
    _log_out(browse, page)

    # Log in again with the next code the phone shows (this step's was used to enrol).
    _password_step(browse, page, email)
    expect(page.get_by_role("heading", level=1)).to_have_text("Your code")
    browse.check(page, "code step")
    page.get_by_label("Code").fill(phone.at(int(page.evaluate("Date.now()")) / 1000 + 30))
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/staff/$"))
    _log_out(browse, page)

    # The phone is lost: a recovery code works once.
    _password_step(browse, page, email)
    page.get_by_label("Code").fill(codes[0])
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/staff/$"))
    _log_out(browse, page)
    _password_step(browse, page, email)
    page.get_by_label("Code").fill(codes[0])
    page.get_by_role("button", name="Log in").click()
    expect(page.locator(".field-error")).to_contain_text("That code is not right")
    browse.check(page, "recovery code used twice")


def test_the_authenticator_set_up_fits_a_phone(browse, live_server):
    email = create_staff(live_server, enrolled=False)
    page = browse.open("new staff member on a phone", **PHONE_CONTEXT)
    _password_step(browse, page, email)
    expect(page.get_by_role("img", name=re.compile("QR code"))).to_be_visible()
    browse.check_phone_width(page, "authenticator set-up")
