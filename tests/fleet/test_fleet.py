"""Fleet test on PostgreSQL and Redis: two app servers and two workers on loopback.

- A session started on one server is valid on the other; logging out on one ends it on
  both (sessions are server-side rows; the cookie is signed with the shared SECRET_KEY).
- Log-in rate limits are counted in Redis, so they are shared by the servers.
- 200 outbox e-mails and 20 scheduled refunds are each processed exactly once by two
  workers, one of which is killed (SIGKILL) mid-run: the local SMTP sink counts the
  mail, the sandbox Stripe counts the refunds. The worker is killed at a chosen moment,
  mid-way through a refund call to Stripe, in both states such a call can be left in:
  Stripe never got it, or Stripe made the refund and the answer was lost.

The fleet (servers, SMTP sink, database, Redis) is set up in conftest.py.
"""

import json
import re
import signal
from collections import Counter
from datetime import timedelta

import pytest
import requests
from sqlalchemy import func, select, update

from portal.sandbox.store import CARD_SUCCEEDS
from tests.fleet.conftest import PASSWORD, REFUND_RESEND_AFTER_SECONDS, Fleet
from tests.fleet.support import (
    HTTP_TIMEOUT,
    HoldFirstRefund,
    StripeGate,
    buy_and_pay_pro,
    csrf_token,
    log_in,
    log_out,
    post_login,
    wait_until,
)

pytestmark = pytest.mark.postgres

FLEET_EMAILS = 200
PURCHASES_PER_CUSTOMER = 10  # two customers, one buying on each server: 20 refunds
KILL_AFTER_EMAILS = 50
FLEET_SUBJECT = "Fleet {} message {:03d}"  # the run's label, the message's number


def _dashboard(server_url: str, cookies: dict) -> requests.Response:
    """GET /dashboard with exactly these cookies (a browser that kept them)."""
    return requests.get(
        f"{server_url}/dashboard", cookies=cookies, timeout=HTTP_TIMEOUT, allow_redirects=False
    )


# -- sessions ---------------------------------------------------------------------------


def test_a_session_from_one_server_works_on_the_other_and_log_out_on_one_ends_it_on_both(
    fleet: Fleet,
):
    fleet.flush_rate_limits()
    email = fleet.new_customer("sessions")
    for start, other in ((fleet.a, fleet.b), (fleet.b, fleet.a)):
        with requests.Session() as browser:
            log_in(browser, start.url, email, PASSWORD)
            cookies = browser.cookies.get_dict()

            assert _dashboard(start.url, cookies).status_code == 200
            on_other = _dashboard(other.url, cookies)
            assert on_other.status_code == 200, (
                f"a session started on {start.name} is not valid on {other.name}: "
                f"{on_other.status_code} {on_other.headers.get('Location')}"
            )
            assert 'action="/logout"' in on_other.text  # the page of a logged-in customer

            log_out(browser, other.url)

        # The browser's old cookies (kept, stolen, or in another tab) no longer work anywhere.
        for server in (start, other):
            response = _dashboard(server.url, cookies)
            assert response.status_code == 302, (
                f"after logging out on {other.name}, {server.name} still answers "
                f"/dashboard with {response.status_code} for the old cookies"
            )
            assert response.headers["Location"].split("?")[0].endswith("/login")


# -- rate limits ------------------------------------------------------------------------


def test_the_log_in_rate_limit_is_shared_by_the_servers(fleet: Fleet):
    # RATELIMIT_LOGIN_IP="3 per minute" on both servers; every request comes from 127.0.0.1.
    fleet.flush_rate_limits()
    email = fleet.new_customer("limits")
    seen = []
    with requests.Session() as browser:
        for server in (fleet.a, fleet.a, fleet.b):
            response = post_login(browser, server.url, email, "not the right password at all")
            seen.append((server.name, response.status_code))
        assert [status for _, status in seen] == [400, 400, 400], seen

        fourth = post_login(browser, fleet.b.url, email, "not the right password at all")
        seen.append((fleet.b.name, fourth.status_code))
        assert fourth.status_code == 429, (
            "the 4th log-in within a minute from one address (2 on server A, 1 on server B, "
            f"then B) must be refused with RATELIMIT_LOGIN_IP='3 per minute'; got {seen}. "
            "Rate-limit counters in Redis (each key names the limit in force, "
            f".../<amount>/<count>/<unit>): {fleet.rate_limit_counters()}"
        )
        # The limit is on the address: even the right password is refused now, on A too.
        fifth = post_login(browser, fleet.a.url, email, PASSWORD)
        assert fifth.status_code == 429, f"server A answered {fifth.status_code} after the limit"


# -- exactly once, with a worker killed ------------------------------------------------


def _buy_twenty_pro_packages(fleet: Fleet) -> list[str]:
    """Two customers buy Pro 10 times each through the real pages, one on each server."""
    customers = []
    for server in (fleet.a, fleet.b):
        email = fleet.new_customer(f"refunds-{server.name}")
        with requests.Session() as browser:
            log_in(browser, server.url, email, PASSWORD)
            for _ in range(PURCHASES_PER_CUSTOMER):
                buy_and_pay_pro(browser, server.url, CARD_SUCCEEDS)
        customers.append(email)
    return customers


def _approve_a_refund_of_each(fleet: Fleet, customers: list[str], staff_email: str) -> list[int]:
    """File a request per purchase and approve it in full; return the scheduled refunds."""
    from portal.accounts.models import User
    from portal.accounts.services import user_by_email
    from portal.billing.models import Purchase, PurchaseStatus
    from portal.db import db
    from portal.refunds import services as refunds
    from portal.refunds.eligibility import RequestReason
    from portal.refunds.models import RequestStatus
    from portal.staff import services as staff
    from portal.timeutil import utcnow

    with fleet.database():
        users = [user_by_email(email) for email in customers]
        owners = [user.id for user in users]
        purchases = db.session.scalars(
            select(Purchase).where(Purchase.user_id.in_(owners)).order_by(Purchase.id)
        ).all()
        assert len(purchases) == 2 * PURCHASES_PER_CUSTOMER
        assert {p.status for p in purchases} == {PurchaseStatus.CREDITED}
        assert all(p.stripe_payment_intent_id for p in purchases)
        actor = staff.Actor(user_by_email(staff_email), "127.0.0.1")
        refund_ids = []
        for purchase in purchases:
            now = utcnow()
            request = refunds.file_request(
                db.session.get(User, purchase.user_id),
                purchase,
                RequestReason.OTHER,
                "Fleet test: I no longer need these credits.",
                "",
                None,
                False,
                [],
                now,
            )
            assert request.status == RequestStatus.OPEN, request.status
            refund = staff.approve(
                request.id, actor, purchase.amount_cents, "Fleet test: full refund.", now
            )
            refund_ids.append(refund.id)
        return refund_ids


def _queue_fleet_emails(fleet: Fleet, label: str) -> None:
    from portal.db import db
    from portal.notifications.models import OutboxEmail

    with fleet.database():
        db.session.add_all(
            OutboxEmail(
                to_address=f"fleet-{number % 7}@example.com",
                subject=FLEET_SUBJECT.format(label, number),
                body_text=f"Message {number} of the fleet test.",
            )
            for number in range(FLEET_EMAILS)
        )
        db.session.commit()


def _make_due(fleet: Fleet, refund_ids: list[int]) -> None:
    from portal.billing.models import Refund
    from portal.db import db
    from portal.timeutil import utcnow

    with fleet.database():
        db.session.execute(
            update(Refund)
            .where(Refund.id.in_(refund_ids))
            .values(scheduled_for=utcnow() - timedelta(seconds=1))
        )
        db.session.commit()


def _outbox_counts(fleet: Fleet) -> dict[str, int]:
    from portal.db import db
    from portal.notifications.models import OutboxEmail

    with fleet.database():
        rows = db.session.execute(
            select(OutboxEmail.status, func.count()).group_by(OutboxEmail.status)
        ).all()
    return {status.value: count for status, count in rows}


def _refund_rows(fleet: Fleet, refund_ids: list[int]) -> dict[int, tuple[str, str | None]]:
    """{refund id: (status, Stripe's refund id)}."""
    from portal.billing.models import Refund
    from portal.db import db

    with fleet.database():
        rows = db.session.execute(
            select(Refund.id, Refund.status, Refund.stripe_refund_id).where(
                Refund.id.in_(refund_ids)
            )
        ).all()
    return {row.id: (row.status.value, row.stripe_refund_id) for row in rows}


@pytest.mark.parametrize(
    "reaches_stripe",
    [
        pytest.param(False, id="refund-call-lost"),
        pytest.param(True, id="refund-answer-lost"),
    ],
)
def test_outbox_emails_and_refunds_are_processed_exactly_once_when_a_worker_is_killed(
    fleet: Fleet, reaches_stripe: bool
):
    label = "answer-lost" if reaches_stripe else "call-lost"
    fleet.flush_rate_limits()
    staff_email = fleet.new_staff("fleet-staff")
    customers = _buy_twenty_pro_packages(fleet)
    refund_ids = _approve_a_refund_of_each(fleet, customers, staff_email)
    # Approved refunds wait out their undo window: not due yet, while the mail starts.
    _queue_fleet_emails(fleet, label)
    queued = _outbox_counts(fleet)
    assert queued.get("pending", 0) >= FLEET_EMAILS, queued
    mail_before = fleet.sink.count()

    # Each worker reaches Stripe through a gate. The fleet's first refund call is cut off:
    # whichever worker makes it hangs mid-call with the refund claimed, and is killed.
    hold = HoldFirstRefund(reaches_stripe)
    gates = {name: StripeGate(name, fleet.a.port, hold) for name in ("worker-1", "worker-2")}
    workers = {}
    try:
        for name, gate in gates.items():
            workers[name] = fleet.start_worker(name, gate.base)
        wait_until(
            lambda: fleet.sink.count() - mail_before >= KILL_AFTER_EMAILS,
            30,
            f"the workers to send {KILL_AFTER_EMAILS} e-mails",
            fleet.describe,
        )
        _make_due(fleet, refund_ids)
        held = wait_until(
            lambda: hold.held, 30, "a worker to start sending a refund", fleet.describe
        )

        victim_name = held.gate.name
        victim = workers[victim_name]
        survivor_name, survivor = next((n, w) for n, w in workers.items() if n != victim_name)
        fleet.processes.signal(victim, signal.SIGKILL)
        victim.popen.wait(timeout=10)
        hold.release.set()
        sent_before_kill = fleet.sink.count() - mail_before

        # The kill came mid-run: e-mails were left, and the victim died mid-call with its
        # refund claimed.
        left = _outbox_counts(fleet)
        assert left.get("pending", 0) > 0, f"no e-mail was left when the worker died: {left}"

        # The refund the dead worker claimed gets Stripe's refund id: from the survivor,
        # which sends it again with the same idempotency key once
        # REFUND_RESEND_AFTER_SECONDS have passed, or from the refund.created webhook.
        stripe_refund_id = wait_until(
            lambda: _refund_rows(fleet, [held.refund_id])[held.refund_id][1],
            REFUND_RESEND_AFTER_SECONDS + 30,
            f"refund {held.refund_id}, claimed by the killed worker, to reach Stripe",
            fleet.describe,
        )
        resends = [
            (status, replayed)
            for key, status, replayed in gates[survivor_name].refund_calls
            if key == held.idempotency_key
        ]
        if held.answer is None:
            # Stripe never saw it: the survivor sent it, and Stripe made it then.
            assert resends == [(200, False)], (
                f"refund {held.refund_id} ({held.idempotency_key}) sent again as {resends}"
            )
            # The dead worker's call finally reaches Stripe (it was still on the wire):
            # Stripe answers with the refund it already made, instead of refunding twice.
            status, headers, body = held.gate.forward("POST", held.path, held.headers, held.body)
            assert status == 200, body
            assert json.loads(body)["id"] == stripe_refund_id
            assert dict((k.lower(), v) for k, v in headers).get("idempotent-replayed") == "true"
        else:
            # Stripe made it before the worker died: any resend is answered with that one.
            status, _, body = held.answer
            assert status == 200, body
            assert json.loads(body)["id"] == stripe_refund_id
            assert all(resend == (200, True) for resend in resends), resends

        # Let the survivor finish everything: refunds settle (the sandbox answers "pending",
        # then settles them and tells server A's webhook), and their e-mails go out.
        def finished():
            rows = _refund_rows(fleet, refund_ids)
            counts = _outbox_counts(fleet)
            done = {status for status, _ in rows.values()} == {"succeeded"}
            return done and counts.get("pending", 0) == 0 and fleet.sink.count() >= counts["sent"]

        wait_until(finished, 45, "every refund and e-mail to be done", fleet.describe)
        returncode = fleet.processes.stop(survivor)
        assert returncode == 0, f"{survivor_name} did not stop on SIGTERM:\n{survivor.tail()}"
    finally:
        for gate in gates.values():
            gate.stop()
        for worker in workers.values():
            fleet.processes.stop(worker)

    assert victim.popen.returncode == -signal.SIGKILL
    assert KILL_AFTER_EMAILS <= sent_before_kill < queued["pending"]

    _assert_every_email_delivered_once(fleet, label)
    _assert_every_refund_made_once(fleet, refund_ids, customers)


def _assert_every_email_delivered_once(fleet: Fleet, label: str) -> None:
    from portal.db import db
    from portal.notifications.models import OutboxEmail, OutboxStatus

    received = fleet.sink.received()
    prefix = FLEET_SUBJECT.format(label, 0)[: -len("000")]
    fleet_subjects = Counter(subject for _, subject in received if subject.startswith(prefix))
    twice = {subject: n for subject, n in fleet_subjects.items() if n > 1}
    assert not twice, f"e-mails delivered more than once: {twice}"
    assert set(fleet_subjects) == {FLEET_SUBJECT.format(label, n) for n in range(FLEET_EMAILS)}

    with fleet.database():
        rows = db.session.execute(
            select(OutboxEmail.to_address, OutboxEmail.subject, OutboxEmail.status)
        ).all()
    unsent = [row for row in rows if row.status != OutboxStatus.SENT]
    assert not unsent, f"outbox e-mails not sent: {unsent[:10]}"
    # Every e-mail the fleet ever queued, the portal's own included (purchases, requests,
    # approvals, refunds), was delivered exactly once.
    queued = Counter((row.to_address.lower(), row.subject) for row in rows)
    delivered = Counter(received)
    assert delivered == queued, (
        f"delivered but not queued (or too often): {delivered - queued}; "
        f"queued but never delivered: {queued - delivered}"
    )


def _assert_every_refund_made_once(fleet: Fleet, refund_ids: list[int], customers: list[str]):
    from portal.accounts.services import user_by_email
    from portal.billing.models import Purchase, Refund
    from portal.db import db
    from portal.ledger.services import check_books

    events = fleet.stripe("/events?type=refund.created")["data"]
    ours = {str(refund_id) for refund_id in refund_ids}
    made = Counter(
        event["data"]["object"]["metadata"].get("refund_id")
        for event in events
        if event["data"]["object"]["metadata"].get("refund_id") in ours
    )
    assert made == Counter(ours), f"refunds made at Stripe, by our refund id: {dict(made)}"
    stripe_ids = {
        event["data"]["object"]["id"]
        for event in events
        if event["data"]["object"]["metadata"].get("refund_id") in ours
    }

    rows = _refund_rows(fleet, refund_ids)
    assert {status for status, _ in rows.values()} == {"succeeded"}, rows
    assert {stripe_id for _, stripe_id in rows.values()} == stripe_ids
    for stripe_id in stripe_ids:
        assert fleet.stripe(f"/refunds/{stripe_id}")["status"] == "succeeded"

    with fleet.database():
        # Over every run of the module, too: one refund at Stripe per refund of ours.
        assert len(events) == db.session.scalar(select(func.count()).select_from(Refund))
        purchases = db.session.scalars(
            select(Purchase)
            .join(Refund, Refund.purchase_id == Purchase.id)
            .where(Refund.id.in_(refund_ids))
        ).all()
        assert len(purchases) == len(refund_ids)
        assert all(p.refunded_cents == p.amount_cents for p in purchases), [
            (p.id, p.refunded_cents, p.amount_cents) for p in purchases
        ]
        # Each approval took its purchase's 300 credits once; nothing came back.
        assert [user_by_email(email).credits_balance for email in customers] == [0, 0]
        assert check_books() == []


# -- screenshots --------------------------------------------------------------------------

FLEET_PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def test_a_screenshot_uploaded_through_one_server_is_served_by_the_other(fleet: Fleet):
    from portal.accounts.services import user_by_email
    from portal.billing.models import Purchase
    from portal.db import db

    fleet.flush_rate_limits()
    email = fleet.new_customer("screenshots")
    with requests.Session() as browser:
        log_in(browser, fleet.a.url, email, PASSWORD)
        buy_and_pay_pro(browser, fleet.a.url, CARD_SUCCEEDS)
        with fleet.database():
            purchase_id = db.session.scalar(
                select(Purchase.id).where(Purchase.user_id == user_by_email(email).id)
            )
        form = f"{fleet.a.url}/refunds/new"
        fields = {
            "csrf_token": csrf_token(browser, f"{form}?purchase_id={purchase_id}"),
            "purchase_id": str(purchase_id),
            "job_id": "",
            "reason": "other",
            "details": "The render never finished; the screenshot shows the error.",
            "transaction_ids": "",
        }
        review = browser.post(form, data={**fields, "step": "review"}, timeout=HTTP_TIMEOUT)
        assert review.status_code == 200, review.text[:500]
        filed = browser.post(
            form,
            data={**fields, "step": "submit"},
            files={"attachments": ("render error.png", FLEET_PNG, "image/png")},
            timeout=HTTP_TIMEOUT,
            allow_redirects=False,
        )
        assert filed.status_code == 303, f"filing on server A: {filed.status_code}"
        request_page = filed.headers["Location"].replace(fleet.a.url, "")

        page = browser.get(f"{fleet.b.url}{request_page}", timeout=HTTP_TIMEOUT)
        assert page.status_code == 200 and "render error.png" in page.text
        [link] = set(re.findall(r'href="(/refunds/attachments/\d+)"', page.text))
        served = browser.get(f"{fleet.b.url}{link}", timeout=HTTP_TIMEOUT)

    # Each server has an instance folder of its own (as on machines of their own): B can
    # serve the file only because A stored it in the database they share.
    assert served.status_code == 200, f"server B answered {served.status_code} for {link}"
    assert served.content == FLEET_PNG
    assert served.headers["Content-Type"] == "image/png"
    assert served.headers["Content-Disposition"] == 'inline; filename="render error.png"'
