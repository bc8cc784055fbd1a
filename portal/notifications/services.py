"""The e-mail outbox: queue messages inside the caller's transaction, deliver them later."""

import logging
import smtplib
from email.message import EmailMessage

from flask import current_app
from sqlalchemy import select

from portal.extensions import db
from portal.notifications.models import OutboxEmail, OutboxStatus
from portal.timeutil import utcnow

log = logging.getLogger(__name__)


def queue_email(to_address: str, subject: str, body_text: str) -> OutboxEmail:
    """Add an e-mail to the outbox; it is committed (or not) with the caller's transaction.

    In development (MAIL_BACKEND=log) the message is written to the log at once and the
    row is stored as sent, so links in it can be followed without a mail server.
    """
    message = OutboxEmail(to_address=to_address, subject=subject, body_text=body_text)
    if current_app.config["MAIL_BACKEND"] == "log":
        log.info("e-mail to %s: %s\n%s", to_address, subject, body_text)
        message.status = OutboxStatus.SENT
        message.sent_at = utcnow()
    db.session.add(message)
    return message


def deliver_pending(limit: int = 100) -> int:
    """Send pending outbox e-mails over SMTP; return how many were sent."""
    config = current_app.config
    pending = db.session.scalars(
        select(OutboxEmail)
        .where(OutboxEmail.status == OutboxStatus.PENDING, OutboxEmail.next_attempt_at <= utcnow())
        .order_by(OutboxEmail.id)
        .limit(limit)
    ).all()
    sent = 0
    for message in pending:
        email = EmailMessage()
        email["From"] = config["MAIL_FROM"]
        email["To"] = message.to_address
        email["Subject"] = message.subject
        email.set_content(message.body_text)
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
            log.warning("outbox e-mail %s not sent: %s", message.id, error)
        else:
            message.status = OutboxStatus.SENT
            message.sent_at = utcnow()
            sent += 1
        db.session.commit()
    return sent
