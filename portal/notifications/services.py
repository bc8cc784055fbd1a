"""The e-mail outbox: queue messages inside the caller's transaction, deliver them later."""

import logging
import re
import smtplib
from datetime import timedelta
from email.message import EmailMessage
from html import escape

from flask import current_app
from sqlalchemy import select

from portal import policy
from portal.accounts.models import Role, User
from portal.db import db
from portal.errors import NotFound
from portal.notifications.models import OutboxEmail, OutboxStatus
from portal.timeutil import utcnow

log = logging.getLogger(__name__)


def queue_email(
    to_address: str, subject: str, body_text: str, for_customer: bool = True
) -> OutboxEmail:
    """Add an e-mail to the outbox; it is committed (or not) with the caller's transaction.

    Mail for customers (everything but staff alerts) ends with the support footer, so
    that every message tells its reader where to write.

    In development (MAIL_BACKEND=log) the message is written to the log at once and the
    row is stored as sent, so links in it can be followed without a mail server.
    """
    if for_customer:
        body_text = with_support_footer(body_text)
    message = OutboxEmail(to_address=to_address, subject=subject, body_text=body_text)
    if current_app.config["MAIL_BACKEND"] == "log":
        log.info("e-mail to %s: %s\n%s", to_address, subject, body_text)
        message.status = OutboxStatus.SENT
        message.sent_at = utcnow()
    db.session.add(message)
    return message


def with_support_footer(body_text: str) -> str:
    """The message with the standard footer naming the support address (SUPPORT_EMAIL)."""
    support = current_app.config["SUPPORT_EMAIL"]
    # "-- " on a line of its own is the usual signature mark: mail programs fold what follows.
    return (
        f"{body_text.rstrip()}\n\n-- \n{policy.PRODUCT_NAME}\nQuestions? Write to us at {support}."
    )


# -- the HTML alternative -----------------------------------------------------------------
#
# Built from the text at send time, so the stored text stays the one source. Everything
# is escaped; the only markup added is paragraphs, line breaks and links (http, https and
# e-mail addresses). No images, styles from elsewhere or script, so nothing loads or runs.

_LINK = re.compile(
    r"https?://[^\s<>\"']+|[\w.%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
)
# A sentence's closing punctuation after a link is not part of it.
_NOT_LINK_END = ".,;:!?)]}"


def _linked(line: str) -> str:
    """One line of text, escaped, with its links made clickable."""
    parts = []
    done = 0
    for match in _LINK.finditer(line):
        link = match.group().rstrip(_NOT_LINK_END)
        start = match.start()
        href = link if "://" in link else f"mailto:{link}"
        parts.append(escape(line[done:start]))
        parts.append(f'<a href="{escape(href)}">{escape(link)}</a>')
        done = start + len(link)
    parts.append(escape(line[done:]))
    return "".join(parts)


def html_version(subject: str, body_text: str) -> str:
    """The HTML alternative of a plain-text e-mail: one paragraph per blank-line block."""
    paragraphs = [
        "<p>" + "<br>\n".join(_linked(line) for line in block.splitlines()) + "</p>"
        for block in re.split(r"\n[ \t]*\n", body_text.strip())
        if block.strip()
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(subject)}</title>\n</head>\n<body>\n"
        + "\n".join(paragraphs)
        + "\n</body>\n</html>\n"
    )


# -- reading one's own e-mails in the portal ----------------------------------------------

_WEB_LINK = re.compile(r"https?://[^\s<>\"']+")
LINK_LEFT_OUT = "[link left out here: use the one in the e-mail itself]"


def email_to(address: str, message_id: int) -> OutboxEmail:
    """Return one e-mail sent to `address`.

    :raises NotFound: no such e-mail, or one sent to someone else.
    """
    message = db.session.get(OutboxEmail, message_id)
    if message is None or message.to_address != address:
        raise NotFound("no such e-mail")
    return message


def readable_paragraphs(body_text: str) -> list[list[str]]:
    """The e-mail's text as paragraphs of lines, for reading in the portal, links left out.

    A link in an e-mail may set a new password or finish a sign-up: shown on a page, it
    would let whoever borrows the logged-in browser take the account. The mailbox has them.
    """
    text = _WEB_LINK.sub(_leave_out, body_text)
    return [block.splitlines() for block in re.split(r"\n[ \t]*\n", text.strip()) if block.strip()]


def _leave_out(found: re.Match) -> str:
    link = found.group().rstrip(_NOT_LINK_END)
    # A sentence's closing punctuation after the link stays.
    return LINK_LEFT_OUT + found.group()[len(link) :]


def _email(message: OutboxEmail, sender: str) -> EmailMessage:
    """The message as sent: plain text, with its HTML version as the alternative."""
    email = EmailMessage()
    email["From"] = sender
    email["To"] = message.to_address
    email["Subject"] = message.subject
    email.set_content(message.body_text)
    email.add_alternative(html_version(message.subject, message.body_text), subtype="html")
    return email


MAX_ATTEMPTS = 8


def _retry_delay(attempts: int) -> timedelta:
    """Wait 2, 4, 8 ... minutes between tries, at most six hours."""
    return min(timedelta(minutes=2**attempts), timedelta(hours=6))


def deliver_pending(limit: int = 100) -> int:
    """Send due outbox e-mails over SMTP; return how many were sent.

    Rows are claimed with SKIP LOCKED (on PostgreSQL), so several workers never send the
    same e-mail; a failure is retried with growing pauses and given up after
    MAX_ATTEMPTS, visibly (status failed, last error kept).
    """
    config = current_app.config
    now = utcnow()
    due_ids = db.session.scalars(
        select(OutboxEmail.id)
        .where(OutboxEmail.status == OutboxStatus.PENDING, OutboxEmail.next_attempt_at <= now)
        .order_by(OutboxEmail.id)
        .limit(limit)
    ).all()
    db.session.rollback()
    sent = 0
    for message_id in due_ids:
        message = db.session.scalar(
            select(OutboxEmail)
            .where(OutboxEmail.id == message_id, OutboxEmail.status == OutboxStatus.PENDING)
            .with_for_update(skip_locked=True)
        )
        if message is None:
            db.session.rollback()
            continue
        email = _email(message, config["MAIL_FROM"])
        message.attempts += 1
        try:
            with smtplib.SMTP(config["MAIL_SERVER"], config["MAIL_PORT"], timeout=10) as smtp:
                if config["MAIL_USE_TLS"]:
                    smtp.starttls()
                if config["MAIL_USERNAME"]:
                    smtp.login(config["MAIL_USERNAME"], config["MAIL_PASSWORD"])
                smtp.send_message(email)
        except (OSError, smtplib.SMTPException) as error:
            message.last_error = str(error)[:500]
            if message.attempts >= MAX_ATTEMPTS:
                message.status = OutboxStatus.FAILED
                log.error(
                    "gave up on outbox e-mail %s after %s tries: %s",
                    message.id,
                    message.attempts,
                    error,
                )
            else:
                message.next_attempt_at = utcnow() + _retry_delay(message.attempts)
                log.warning(
                    "outbox e-mail %s not sent (try %s): %s", message.id, message.attempts, error
                )
        else:
            message.status = OutboxStatus.SENT
            message.sent_at = utcnow()
            sent += 1
        db.session.commit()
    return sent


def notify_staff(subject: str, body: str) -> int:
    """E-mail every staff member, inside the caller's transaction; return how many."""
    addresses = db.session.scalars(select(User.email).where(User.role == Role.STAFF)).all()
    for address in addresses:
        queue_email(address, subject, body, for_customer=False)
    return len(addresses)
