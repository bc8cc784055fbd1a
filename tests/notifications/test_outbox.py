"""The outbox sends plain text with an HTML alternative built from it, escaped."""

import logging
from html.parser import HTMLParser

from sqlalchemy import select

from portal.db import db
from portal.notifications.models import OutboxEmail, OutboxStatus
from portal.notifications.services import deliver_pending, html_version, queue_email
from tests.factories import make_staff

HOSTILE = (
    'Your note: <script>alert("x")</script> & "><img src=https://evil.example/t.gif '
    "onerror=alert(1)> javascript:alert(2)\n"
    "Track it at https://portal.test/refunds/5.\n\n"
    'A second paragraph with https://evil.example/"><script>bad()</script>'
)
ALLOWED_TAGS = {"html", "head", "meta", "title", "body", "p", "br", "a"}


class Tags(HTMLParser):
    """Every tag and attribute of a document, as a browser's parser would see them."""

    def __init__(self, document: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.feed(document)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def stored(message_id: int) -> OutboxEmail:
    db.session.expire_all()
    return db.session.get(OutboxEmail, message_id)


def test_a_sent_email_is_plain_text_with_an_html_alternative(app, smtp):
    message = queue_email("customer@example.com", "Your <refund> & more", HOSTILE)
    db.session.commit()

    assert deliver_pending() == 1

    [sent] = smtp.messages()
    assert sent["To"] == "customer@example.com"
    assert sent["Subject"] == "Your <refund> & more"
    assert sent.get_content_type() == "multipart/alternative"
    plain, rich = sent.iter_parts()
    assert plain.get_content_type() == "text/plain"
    assert rich.get_content_type() == "text/html"
    # (lines travel with CRLF endings over SMTP)
    assert plain.get_content().replace("\r\n", "\n").rstrip("\n") == stored(message.id).body_text
    assert stored(message.id).status == OutboxStatus.SENT
    page = rich.get_content()
    # The hostile text is there to read, as text: the only markup is the portal's own.
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "<title>Your &lt;refund&gt; &amp; more</title>" in page
    tags = Tags(page).tags
    assert {tag for tag, _ in tags} <= ALLOWED_TAGS
    assert not any(name.startswith("on") for _, attrs in tags for name in attrs)
    links = [attrs["href"] for tag, attrs in tags if tag == "a"]
    # (the would-be image's address is a link to click, never an image that loads)
    assert links == [
        "https://evil.example/t.gif",
        "https://portal.test/refunds/5",
        "https://evil.example/",
        f"mailto:{app.config['SUPPORT_EMAIL']}",
    ]


def test_the_html_has_a_paragraph_per_block_and_clickable_links():
    page = html_version(
        "Reset",
        "Open this link:\nhttps://portal.test/reset/abc?x=1&y=2\n\n"
        "Questions? Write to help@example.com.",
    )

    assert (
        '<p>Open this link:<br>\n<a href="https://portal.test/reset/abc?x=1&amp;y=2">'
        "https://portal.test/reset/abc?x=1&amp;y=2</a></p>"
    ) in page
    # The full stop ends the sentence, not the address.
    assert (
        '<p>Questions? Write to <a href="mailto:help@example.com">help@example.com</a>.</p>'
    ) in page
    assert "<img" not in page and "<script" not in page and "<style" not in page


def test_the_log_backend_shows_the_text(app, caplog):
    caplog.set_level(logging.INFO, logger="portal.notifications.services")

    message = queue_email("customer@example.com", "Hello", "Line one.\nhttps://portal.test/x")

    assert message.status == OutboxStatus.SENT
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "Line one.\nhttps://portal.test/x" in logged
    assert app.config["SUPPORT_EMAIL"] in logged
    assert "<p>" not in logged


def test_staff_alerts_carry_no_customer_footer(app):
    from portal.notifications.services import notify_staff

    staff = make_staff()

    notify_staff("Ledger check found problems", "account 1: balance off")

    body = db.session.scalar(
        select(OutboxEmail.body_text).where(OutboxEmail.to_address == staff.email)
    )
    assert body == "account 1: balance off"


def test_a_server_that_cannot_be_reached_leaves_the_email_pending_for_a_retry(
    app, smtp, monkeypatch
):
    message = queue_email("customer@example.com", "Hello", "Text.")
    db.session.commit()
    monkeypatch.setitem(app.config, "MAIL_PORT", 1)  # nothing listens there

    assert deliver_pending() == 0

    again = stored(message.id)
    assert (again.status, again.attempts) == (OutboxStatus.PENDING, 1)
    assert again.last_error
    assert smtp.messages() == []
