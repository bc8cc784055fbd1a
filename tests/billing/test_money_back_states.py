"""Money going back as random histories: a Hypothesis state machine over one customer.

Each example starts from empty tables and drives a random sequence of what customers,
staff, the worker, Stripe and the bank do: buying (a card whose refunds succeed, one
whose refunds fail, a bank debit that settles later), spending, a job failing on the
platform, filing a request, approving, undoing, the worker sending, refunds settling,
a refund made in Stripe's dashboard, disputes opened and closed won or lost, and
reconciliation. Stripe's events are held back and delivered in any order, repeated or
never (reconciliation then has to find out). After every step the books and the
invariants of money going back must hold.

Runs on SQLite in `make test` and on PostgreSQL in CI's second run; MONEY_BACK_EXAMPLES
sets how many histories (a bounded number by default).
"""

import contextlib
import os
from datetime import timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from sqlalchemy import select

from portal.accounts.models import User
from portal.billing import reconcile
from portal.billing.models import Purchase, PurchaseStatus, Refund, RefundStatus
from portal.billing.money_back import checks, sending
from portal.db import db
from portal.errors import Conflict, InsufficientCredits, NotFound, ValidationError
from portal.jobs import services as jobs
from portal.jobs.models import FailureReason, Job, JobStatus
from portal.ledger import services as ledger
from portal.refunds import services as refunds
from portal.refunds.eligibility import RequestReason
from portal.refunds.models import RefundRequest, RequestStatus
from portal.sandbox.store import (
    CARD_REFUND_FAILS,
    CARD_SUCCEEDS,
    DELAYED_METHOD,
    DISPUTE_OPEN,
    StripeError,
)
from portal.staff import services as staff_services
from portal.timeutil import utcnow
from tests.billing.helpers import deliver, open_checkout, sandbox
from tests.conftest import _empty_all_tables
from tests.factories import make_staff, make_user
from tests.staff.helpers import AFTER_UNDO_WINDOW

EXAMPLES = int(os.environ.get("MONEY_BACK_EXAMPLES", "30"))
CARDS = (CARD_SUCCEEDS, CARD_REFUND_FAILS, DELAYED_METHOD)


class MoneyBack(RuleBasedStateMachine):
    """One customer, one staff member, the sandbox, and the events Stripe has sent."""

    client = None  # set by the test: a client of the test app

    def __init__(self):
        super().__init__()
        db.session.remove()
        _empty_all_tables()
        self.customer_id = make_user().id
        self.staff_id = make_staff().id
        self.store = sandbox()
        with self.store.lock:
            self.seen = len(self.store.events)
        self.started = utcnow() - timedelta(seconds=1)
        self.pending: list[dict] = []  # events sent by Stripe, not delivered yet
        self.sessions: list[str] = []  # our Checkout Sessions at the sandbox
        self.counter = 0

    # -- helpers ---------------------------------------------------------------------------

    def _collect_events(self) -> None:
        """Stripe "sends" whatever the sandbox recorded since the last step."""
        with self.store.lock:
            new = self.store.events[self.seen :]
            self.seen = len(self.store.events)
        self.pending.extend(new)
        db.session.expire_all()

    def _customer(self) -> User:
        return db.session.get(User, self.customer_id)

    def _actor(self) -> staff_services.Actor:
        return staff_services.Actor(db.session.get(User, self.staff_id), "127.0.0.1")

    def _purchases(self, *statuses) -> list[Purchase]:
        query = select(Purchase).where(Purchase.user_id == self.customer_id)
        if statuses:
            query = query.where(Purchase.status.in_(statuses))
        return list(db.session.scalars(query.order_by(Purchase.id)))

    def _charges(self) -> list[str]:
        """Charges of our sessions that were paid."""
        found = []
        with self.store.lock:
            for session_id in self.sessions:
                intent = self.store.payment_intents.get(
                    self.store.sessions[session_id]["payment_intent"] or ""
                )
                if intent and intent["latest_charge"]:
                    found.append(intent["latest_charge"])
        return found

    def _next(self) -> int:
        self.counter += 1
        return self.counter

    def _open_requests(self) -> list[RefundRequest]:
        return list(
            db.session.scalars(
                select(RefundRequest).where(
                    RefundRequest.user_id == self.customer_id,
                    RefundRequest.status.in_(
                        [
                            RequestStatus.OPEN,
                            RequestStatus.IN_REVIEW,
                            RequestStatus.WAITING_ON_CUSTOMER,
                        ]
                    ),
                )
            )
        )

    def _refund_ids(self, status: RefundStatus) -> list[int]:
        return list(
            db.session.scalars(
                select(Refund.id)
                .where(Refund.status == status, Refund.refund_request_id.is_not(None))
                .order_by(Refund.id)
            )
        )

    # -- customers buy, spend and ask ----------------------------------------------------

    @initialize(card=st.sampled_from(CARDS[:2]), package=st.sampled_from(["basic", "pro"]))
    def a_credited_purchase_with_a_request(self, card, package):
        """Every history starts where money can go back: credits bought, a request filed."""
        self.buy(card, package)
        for event in self.pending:
            deliver(self.client, event)
        self.pending.clear()
        [purchase] = self._purchases(PurchaseStatus.CREDITED)
        self._file(purchase)

    @rule(card=st.sampled_from(CARDS), package=st.sampled_from(["starter", "basic", "pro"]))
    def buy(self, card, package):
        _, session_id = open_checkout(self._customer(), package)
        with self.store.lock:
            self.store.pay(session_id, card)
        self.sessions.append(session_id)
        self._collect_events()

    @rule(data=st.data(), succeeded=st.booleans())
    def bank_debit_settles(self, data, succeeded):
        session_id = data.draw(st.sampled_from(self.sessions))
        with self.store.lock:
            self.store.settle_delayed(session_id, succeeded=succeeded)
        self._collect_events()

    @rule(credits=st.integers(1, 120))
    def spend(self, credits):
        try:
            jobs.charge_job(f"job-{self._next()}", self._customer().email, "upscale", credits)
        except InsufficientCredits:
            db.session.rollback()

    @rule(data=st.data())
    def platform_fails_a_job(self, data):
        running = list(
            db.session.scalars(
                select(Job.id).where(
                    Job.user_id == self.customer_id, Job.status == JobStatus.RUNNING
                )
            )
        )
        if running:
            job_id = data.draw(st.sampled_from(running))
            jobs.fail_job(job_id, FailureReason.PLATFORM_ERROR, "GPU worker lost")

    @rule(data=st.data())
    def file_request(self, data):
        self._file(data.draw(st.sampled_from(self._purchases())))

    def _file(self, purchase: Purchase) -> None:
        try:
            # What the request form does: ask whether it may be filed, then file it.
            purchase = refunds.requestable_purchase(self._customer(), purchase.id)
            refunds.file_request(
                self._customer(),
                purchase,
                RequestReason.OTHER,
                "I no longer need these credits.",
                "",
                None,
                True,
                [],
                utcnow(),
            )
        except (Conflict, ValidationError, NotFound):
            db.session.rollback()

    # -- staff decide ----------------------------------------------------------------------

    @precondition(lambda self: self._open_requests())
    @rule(data=st.data(), share=st.integers(1, 100), backdated=st.booleans())
    def approve(self, data, share, backdated):
        request = data.draw(st.sampled_from(self._open_requests()))
        purchase = db.session.get(Purchase, request.purchase_id)
        amount = max(purchase.amount_cents * share // 100, 1)
        # A backdated approval is due at once; a fresh one can still be undone.
        now = utcnow() - AFTER_UNDO_WINDOW if backdated else utcnow()
        with contextlib.suppress(Conflict, ValidationError):
            staff_services.approve(request.id, self._actor(), amount, "history test", now)

    @precondition(lambda self: self._refund_ids(RefundStatus.SCHEDULED))
    @rule()
    def undo_the_latest_approval(self):
        refund_id = self._refund_ids(RefundStatus.SCHEDULED)[-1]
        with contextlib.suppress(Conflict):
            staff_services.undo_approval(refund_id, self._actor(), utcnow())

    @precondition(lambda self: self._refund_ids(RefundStatus.FAILED))
    @rule()
    def retry_a_failed_refund(self):
        refund_id = self._refund_ids(RefundStatus.FAILED)[0]
        with contextlib.suppress(Conflict, ValidationError):
            staff_services.retry_refund(refund_id, self._actor(), utcnow())

    # -- the worker, Stripe and the bank ---------------------------------------------------

    @rule()
    def worker_sends(self):
        sending.send_due_refunds(utcnow())
        self._collect_events()

    @rule(data=st.data())
    def card_network_settles_a_refund(self, data):
        with self.store.lock:
            pending = [
                refund_id
                for refund_id, refund in self.store.refunds.items()
                if refund["status"] == "pending" and refund["charge"] in self._charges()
            ]
        if pending:
            refund_id = data.draw(st.sampled_from(pending))
            with self.store.lock:
                self.store.settle_refund(refund_id)
            self._collect_events()

    @rule(data=st.data(), cents=st.integers(1, 2_000))
    def refund_in_stripes_dashboard(self, data, cents):
        charges = self._charges()
        if not charges:
            return
        charge_id = data.draw(st.sampled_from(charges))
        with self.store.lock:
            try:
                intent = self.store.charges[charge_id]["payment_intent"]
                self.store.create_refund({"payment_intent": intent, "amount": str(cents)})
            except StripeError:
                pass
        self._collect_events()

    @rule(data=st.data(), inquiry=st.booleans())
    def bank_opens_a_dispute(self, data, inquiry):
        charges = self._charges()
        if not charges:
            return
        charge_id = data.draw(st.sampled_from(charges))
        with self.store.lock, contextlib.suppress(StripeError):
            self.store.open_dispute(charge_id, inquiry=inquiry)
        self._collect_events()

    @rule(data=st.data(), won=st.booleans())
    def bank_closes_a_dispute(self, data, won):
        charges = set(self._charges())
        with self.store.lock:
            open_ones = [
                dispute_id
                for dispute_id, dispute in self.store.disputes.items()
                if dispute["status"] in DISPUTE_OPEN and dispute["charge"] in charges
            ]
        if open_ones:
            dispute_id = data.draw(st.sampled_from(open_ones))
            with self.store.lock:
                self.store.close_dispute(dispute_id, won=won)
            self._collect_events()

    # -- webhooks: delivered in any order, repeated, or lost -------------------------------

    @precondition(lambda self: self.pending)
    @rule(data=st.data(), keep_for_a_repeat=st.booleans())
    def deliver_an_event(self, data, keep_for_a_repeat):
        index = data.draw(st.integers(0, len(self.pending) - 1))
        event = self.pending[index] if keep_for_a_repeat else self.pending.pop(index)
        deliver(self.client, event)

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def lose_an_event(self, data):
        self.pending.pop(data.draw(st.integers(0, len(self.pending) - 1)))

    @rule()
    def reconcile(self):
        # Late enough that a refund still pending counts as one whose webhook was lost.
        reconcile.reconcile(self.started)
        reconcile.reconcile_money_back(utcnow() + timedelta(minutes=11), self.started)
        self._collect_events()

    def teardown(self):
        import sys

        from sqlalchemy import func

        from portal.billing.models import Dispute
        from portal.ledger.models import LedgerEntry

        rs = db.session.execute(select(Refund.status, func.count()).group_by(Refund.status)).all()
        ds = db.session.execute(select(Dispute.status, func.count()).group_by(Dispute.status)).all()
        es = db.session.execute(
            select(LedgerEntry.kind, func.count()).group_by(LedgerEntry.kind)
        ).all()
        print(
            "STATS",
            {k.value: v for k, v in rs},
            {k.value: v for k, v in ds},
            {k.value: v for k, v in es},
            file=sys.stderr,
        )

    # -- what must hold after every step ---------------------------------------------------

    @invariant()
    def books_and_money_back_are_right(self):
        db.session.rollback()
        problems = ledger.check_books() + checks.problems()
        assert problems == [], problems

    @invariant()
    def stripe_never_returns_more_than_was_paid(self):
        with self.store.lock:
            for charge_id in self._charges():
                charge = self.store.charges[charge_id]
                lost = sum(
                    dispute["amount"]
                    for dispute in self.store.disputes.values()
                    if dispute["charge"] == charge_id and dispute["status"] == "lost"
                )
                assert charge["amount_refunded"] + lost <= charge["amount"], charge_id

    @invariant()
    def no_spendable_credits_of_a_purchase_whose_money_is_disputed(self):
        for purchase in self._purchases(PurchaseStatus.DISPUTED):
            assert ledger.unused_credits(purchase) == 0, purchase.id


def test_money_going_back_stays_right_in_any_history(app, client, webhooks_off):
    MoneyBack.client = client
    state_machine = MoneyBack.TestCase
    state_machine.settings = settings(
        max_examples=EXAMPLES,
        stateful_step_count=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    state_machine("runTest").runTest()
