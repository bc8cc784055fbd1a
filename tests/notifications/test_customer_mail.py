"""Every e-mail a customer gets names the support address; staff alerts do not need to.

The journey below makes the portal send each kind of customer e-mail it has (every
`queue_email` and `email_customer` call outside staff alerts), then reads the outbox.
"""

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from portal.accounts.models import Role, User
from portal.billing import fulfilment
from portal.billing.models import PurchaseStatus
from portal.billing.money_back import sending
from portal.db import db
from portal.notifications.models import OutboxEmail
from portal.staff import services as staff_services
from portal.timeutil import utcnow
from tests.accounts.test_passwords import request_reset
from tests.accounts.test_signup_login import answer_as_the_worker, signup
from tests.billing.helpers import open_checkout
from tests.factories import make_staff, make_user, quiet_sandbox
from tests.staff.helpers import (
    AFTER_UNDO_WINDOW,
    actor,
    approve_now,
    file,
    paid_purchase,
    settle_at_stripe,
    the_refund,
)

PORTAL = Path(__file__).resolve().parent.parent.parent / "portal"


@pytest.fixture(autouse=True)
def _sandbox(app, monkeypatch):
    quiet_sandbox(app, monkeypatch, webhooks="inline")


def customer_mail() -> list[OutboxEmail]:
    staff = select(User.email).where(User.role == Role.STAFF)
    return list(
        db.session.scalars(
            select(OutboxEmail).where(OutboxEmail.to_address.not_in(staff)).order_by(OutboxEmail.id)
        )
    )


def test_every_customer_email_names_the_support_address(app, client):
    staff = make_staff()
    by = actor(staff)
    # Accounts: the sign-up link, "you already have an account", the reset link.
    signup(client, "newcomer@example.com")
    customer = make_user()
    signup(client, customer.email)
    answer_as_the_worker()
    request_reset(client, customer.email)
    # Buying: credits added; a checkout that expired.
    purchase = paid_purchase(customer)
    expired_id, _ = open_checkout(customer, "starter")
    fulfilment.mark_unpaid(expired_id, PurchaseStatus.EXPIRED, tell_customer=True)
    # A request: received, a message, a question, a denial.
    denied = file(customer, purchase)
    staff_services.message_customer(denied.id, by, "We are looking at it.")
    staff_services.ask_for_information(denied.id, by, "Which card did you use?", utcnow())
    staff_services.deny(denied.id, by, "other", "Because.", utcnow())
    # Two refunds approved and sent: one settles, the other fails.
    refunded = file(customer, paid_purchase(customer))
    failed = file(customer, paid_purchase(customer))
    approve_now(refunded, staff, 500, justification="goodwill")
    approve_now(failed, staff, 500, justification="goodwill")
    sending.send_due_refunds(utcnow() + AFTER_UNDO_WINDOW)
    settle_at_stripe(the_refund(refunded.id).stripe_refund_id)
    sending.refund_failed(the_refund(failed.id).id, "card expired")
    # Terminating the account.
    staff_services.terminate_for_terms_breach(
        customer.id, "Abuse.", staff.id, None, utcnow() + timedelta(seconds=1)
    )

    mail = customer_mail()
    subjects = " | ".join(message.subject for message in mail)
    for expected in (
        "Finish creating your account",
        "You already have an account",
        "Reset your password",
        "credits added to your account",
        "purchase expired",
        "received",
        "a message from our team",
        "we need a little more information",
        "our decision",
        "refund approved",
        "was sent",
        "did not go through",
        "Your account has been terminated",
    ):
        assert expected in subjects, expected
    support = app.config["SUPPORT_EMAIL"]
    missing = [message.subject for message in mail if support not in message.body_text]
    assert missing == []


def test_only_staff_alerts_leave_out_the_customer_footer():
    """The footer is added by `queue_email` unless told otherwise; only staff alerts are."""
    opting_out = [
        path.relative_to(PORTAL).as_posix()
        for path in PORTAL.rglob("*.py")
        for line in path.read_text().splitlines()
        if "for_customer=False" in line
    ]
    assert opting_out == ["notifications/services.py"]
