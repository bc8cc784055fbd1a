"""A customer reads the e-mails the portal sent them: the list, then one e-mail at a time."""

import html
import re

import pytest
from sqlalchemy import select

from portal.db import db
from portal.notifications.models import OutboxEmail
from portal.notifications.services import LINK_LEFT_OUT, queue_email, readable_paragraphs
from tests.accounts.test_passwords import request_reset, reset_link_for
from tests.factories import login_as, make_staff, make_user


def plain(response) -> str:
    without_tags = re.sub(r"<[^>]+>", " ", response.get_data(as_text=True))
    return re.sub(r"\s+", " ", html.unescape(without_tags)).strip()


@pytest.fixture
def customer(client):
    user = make_user()
    login_as(client, user)
    return user


def _mail(address: str, subject: str, body: str) -> int:
    message = queue_email(address, subject, body)
    db.session.commit()
    return message.id


def test_the_list_links_each_email_by_date_and_subject(client, customer):
    first = _mail(customer.email, "Refund request RR-000001 received", "We received it.")
    second = _mail(customer.email, "50 credits added to your account", "Thank you.")
    _mail("someone.else@example.com", "Not yours", "Private.")

    page = client.get("/messages")

    assert page.status_code == 200
    body = page.get_data(as_text=True)
    assert f'<a href="/messages/{first}">Refund request RR-000001 received</a>' in body
    assert f'<a href="/messages/{second}">50 credits added to your account</a>' in body
    assert "Not yours" not in body
    # Newest first, each with its date.
    words = plain(page)
    assert words.index("50 credits added") < words.index("Refund request RR-000001")
    assert len(re.findall(r"<tr><td[^>]*>[^<]*\d{4}[^<]*</td>", body)) == 2


def test_a_customer_reads_an_email_as_plain_text_escaped(client, customer):
    message_id = _mail(
        customer.email,
        "Your <refund> & more",
        "Hello <b>there</b> & welcome.\nA second line.\n\n<script>alert(1)</script>",
    )

    page = client.get(f"/messages/{message_id}")

    assert page.status_code == 200
    body = page.get_data(as_text=True)
    assert "<h1>Your &lt;refund&gt; &amp; more</h1>" in body
    assert "<p>Hello &lt;b&gt;there&lt;/b&gt; &amp; welcome.<br>A second line.</p>" in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "<script>alert" not in body
    # The support footer every customer e-mail ends with.
    assert "Questions? Write to us at" in plain(page)
    assert 'href="/messages"' in body


def test_a_password_reset_email_is_shown_without_its_link(client, customer):
    request_reset(client, customer.email)
    link = reset_link_for(customer.email)
    token = link.rsplit("/", 1)[-1]
    message_id = db.session.scalar(
        select(OutboxEmail.id).where(
            OutboxEmail.to_address == customer.email, OutboxEmail.subject == "Reset your password"
        )
    )
    assert f'href="/messages/{message_id}"' in client.get("/messages").get_data(as_text=True)

    page = client.get(f"/messages/{message_id}")

    assert page.status_code == 200
    words = plain(page)
    assert "Reset your password" in words
    assert token not in page.get_data(as_text=True)
    assert "/reset/" not in page.get_data(as_text=True)
    assert LINK_LEFT_OUT in words
    # The link still works from the mailbox: leaving it out of the page spent nothing.
    assert client.get(link).status_code == 200


def test_another_customers_email_is_not_found(client, customer):
    theirs = _mail(make_user().email, "Your refund of $5.00 was sent", "Secret body.")
    staff_mail = _mail(make_staff().email, "Refund 1 failed", "Staff only.")

    for message_id in (theirs, staff_mail, theirs + staff_mail + 1000):
        response = client.get(f"/messages/{message_id}")
        assert response.status_code == 404
        assert b"Secret body" not in response.data
        assert b"Staff only" not in response.data


@pytest.mark.parametrize(
    ("body", "paragraphs"),
    [
        pytest.param("One.\nTwo.\n\nThree.", [["One.", "Two."], ["Three."]], id="paragraphs"),
        pytest.param(
            "Log in: https://portal.test/login\n\nOpen https://portal.test/reset/abc.",
            [[f"Log in: {LINK_LEFT_OUT}"], [f"Open {LINK_LEFT_OUT}."]],
            id="links left out, the full stop kept",
        ),
        pytest.param(
            "Write to support@example.com.", [["Write to support@example.com."]], id="address"
        ),
    ],
)
def test_readable_paragraphs(body, paragraphs):
    assert readable_paragraphs(body) == paragraphs
