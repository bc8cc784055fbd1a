import re
from datetime import timedelta

import pytest

from portal import policy
from portal.db import db
from portal.incidents.models import Incident
from portal.money import format_cents
from portal.timeutil import utcnow
from tests.html_text import visible_text


def text_of(response) -> str:
    return re.sub(r"\s+", " ", response.get_data(as_text=True))


def test_landing_shows_every_package_with_its_price(client):
    page = text_of(client.get("/"))
    for package in policy.PACKAGES:
        assert package.name in page
        assert f"{package.credits:,} credits" in page
        assert format_cents(package.price_cents) in page


def test_refund_policy_numbers_come_from_the_policy_module(client, monkeypatch):
    monkeypatch.setattr(policy, "REFUND_WINDOW_DAYS", 45)
    monkeypatch.setattr(policy, "DOWNTIME_THRESHOLD_HOURS", 72)
    monkeypatch.setattr(policy, "RESPONSE_BUSINESS_DAYS_MAX", 6)
    monkeypatch.setattr(policy, "PAYOUT_BUSINESS_DAYS_MAX", 12)
    page = text_of(client.get("/refund-policy"))
    assert "more than 45 days after the original purchase date" in page
    assert "more than 72 consecutive hours" in page
    assert "within 3–6 business days" in page
    assert "within 5–12 business days" in page


def _outage(title: str, hours: int, minutes: int = 0):
    started = utcnow() - timedelta(days=3)
    ended = started + timedelta(hours=hours, minutes=minutes)
    db.session.add(Incident(title=title, started_at=started, ended_at=ended))
    db.session.commit()


def test_status_page_states_the_downtime_rule_in_the_policys_words(client, monkeypatch):
    page = text_of(client.get("/status"))
    assert (
        "If our platform experiences extended downtime (more than 48 consecutive hours) that "
        "prevents you from using purchased credits, you may be eligible for a partial or "
        "full refund" in page
    )
    monkeypatch.setattr(policy, "DOWNTIME_THRESHOLD_HOURS", 72)
    assert "(more than 72 consecutive hours)" in text_of(client.get("/status"))


def test_status_page_shows_how_long_an_outage_lasted_to_the_minute(client):
    # "48 h" for both would hide which of the two lasted more than 48 hours.
    _outage("Exactly two days", 48)
    _outage("Two days and a minute", 48, 1)
    page = text_of(client.get("/status"))
    assert re.search(r"Exactly two days</strong>: [^(]+ \(48 h\)", page)
    assert re.search(r"Two days and a minute</strong>: [^(]+ \(48 h 1 min\)", page)


def test_refund_policy_lists_packages_and_non_refundable_cases(client):
    page = text_of(client.get("/refund-policy"))
    for package in policy.PACKAGES:
        assert f"{package.name} {package.credits:,} credits" in visible(page)
        assert f"{format_cents(package.price_cents)} USD" in page
    assert "more than 30 days after the original purchase date" in page
    assert "Account termination due to violation of our Terms of Use." in page


# Every section of the published policy, each by a sentence of its own (the page is its
# full text; only the numbers and contact details are filled in from settings).
POLICY_SENTENCES = (
    f"Last updated: {policy.POLICY_LAST_UPDATED}",
    "At AI Image Studio, operated by Goopter Holdings Ltd (DBA: Goopter Commerce), we strive "
    "to provide high-quality AI image processing services.",
    "All credit purchases on AI Image Studio are considered final once the credits have been "
    "added to your account.",
    "we will either credit the appropriate amount or issue a full refund.",
    "we will refund the duplicate charges in full.",
    "you may be eligible for a partial or full refund.",
    "the credits consumed by that job will be automatically refunded to your account balance.",
    "Credits that have already been used for processing jobs.",
    "Dissatisfaction with AI-generated results, as output quality can vary based on input "
    "quality and the nature of AI processing.",
    "Your account email address",
    "Date and amount of the purchase",
    "Reason for the refund request",
    "Any relevant screenshots or transaction IDs",
    "For any questions regarding this Refund Policy, please contact us at:",
)


visible = visible_text


def test_refund_policy_shows_the_policys_full_text(client):
    page = visible(client.get("/refund-policy").get_data(as_text=True))
    missing = [sentence for sentence in POLICY_SENTENCES if sentence not in page]
    assert missing == []


def test_refund_policy_shows_the_contact_information(client, app, monkeypatch):
    monkeypatch.setitem(app.config, "SUPPORT_EMAIL", "help@studio.example")
    response = client.get("/refund-policy")
    page = visible(response.get_data(as_text=True))
    contact = page[page.index("Contact information") :]
    assert f"Company {policy.COMPANY_NAME}" in contact
    assert "E-mail help@studio.example" in contact
    assert f"Phone {policy.SUPPORT_PHONE}" in contact
    assert f"Address {policy.COMPANY_ADDRESS}" in contact
    # The address to write to is the setting, wherever the page names it.
    assert "contact our support team at help@studio.example" in page
    assert 'href="mailto:help@studio.example"' in response.get_data(as_text=True)


def test_contact_page_shows_company_details(client, app):
    page = text_of(client.get("/contact"))
    assert policy.SUPPORT_PHONE in page
    assert policy.COMPANY_ADDRESS in page
    assert app.config["SUPPORT_EMAIL"] in page


@pytest.mark.parametrize("path", ["/", "/refund-policy", "/contact", "/login", "/signup"])
def test_pages_carry_security_headers(client, path):
    response = client.get(path)
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "object-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"]
    assert "<script>" not in response.get_data(as_text=True)


def test_session_cookie_is_httponly_and_lax(client):
    client.get("/login")
    response = client.post("/login", data={})
    cookie = response.headers.get("Set-Cookie", "")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_sandbox_banner_is_shown_in_sandbox_mode(client):
    page = client.get("/").get_data(as_text=True)
    assert 'aria-label="Payments sandbox"' in page
    assert "no real card is charged and no money moves" in page


def test_navigation_changes_with_who_is_logged_in(client):
    from tests.factories import login_as, make_user

    anonymous = text_of(client.get("/"))
    assert "Log in" in anonymous and "Dashboard" not in anonymous
    login_as(client, make_user())
    customer = text_of(client.get("/"))
    assert "Dashboard" in customer and "Refund queue" not in customer and "Log out" in customer
