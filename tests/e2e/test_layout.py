"""Every page at 1280×900 and at 390×844 fits: no sideways scrolling, key columns in view.

One test per screen walks every public, customer and staff page of the portal (the
sandbox's own pages and the API aside) with a customer and a staff team that have a
realistic history: many purchases, jobs and ledger entries, refund requests in every
state, e-mails, an incident, an audit log with before/after changes, a queue with long
e-mail addresses. Each page gets `browse.check_fits`: a screenshot named after the screen
and the page (test-artifacts/test_every_page_fits-chromium-phone/phone-staff-queue.png),
axe, no sideways scrolling, and every key column of every table readable without scrolling.
A page that does not fit does not stop the walk: the test fails at its end with the list
of every page that did not fit, and why.
"""

import itertools
import re
from dataclasses import dataclass, field
from datetime import timedelta

import pyotp
import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select

from portal.accounts import services as accounts
from portal.audit import Actor
from portal.billing import auto_recharge, checkout, fulfilment
from portal.billing.models import Purchase
from portal.db import db
from portal.demo import seed_demo_history
from portal.incidents import services as incidents
from portal.jobs import services as jobs
from portal.jobs.models import FailureReason
from portal.refunds import services as refunds
from portal.refunds.eligibility import RequestReason
from portal.sandbox.store import CARD_AUTHENTICATES, CARD_DECLINED, CARD_SUCCEEDS
from portal.staff import services as staff
from portal.timeutil import utcnow
from tests.e2e.support import (
    PASSWORD,
    SCREENS,
    STAFF_PASSWORD,
    Browsing,
    LiveServer,
    authenticator_code,
    create_customer,
    create_staff,
    emailed_link,
    make_overdue,
    run_refund_worker,
    unique_email,
    wait_until,
)
from tests.factories import make_purchase

# -- the key columns ------------------------------------------------------------------
#
# On a desktop every column of every table is a key column: the content column is wide
# enough for all of them. On a phone a table may drop secondary columns or turn into
# stacked cards, but these must stay readable. Tables are named by the heading just
# before them ("*": the page's tables not named), columns by their header's text.

PHONE_KEY_COLUMNS = {
    "customer-dashboard": {
        "Latest purchases": ("Date", "Package", "Unused", "Status"),
        "Latest jobs": ("Date", "Operation", "Credits", "Status"),
    },
    "customer-history": {"*": ("Date", "What happened", "Credits", "Balance after")},
    "customer-purchases": {"*": ("Date", "Package", "Amount", "Status")},
    "customer-auto-recharge": {"*": ("Started", "Package", "Amount", "Status")},
    "customer-jobs": {"*": ("Started", "Operation", "Credits", "Status")},
    "customer-refund-requests": {"*": ("Reference", "Status", "Answer due (Vancouver time)")},
    "customer-e-mails": {"*": ("Date", "Subject")},
    "staff-queue": {"*": ("Request", "Customer", "Status", "Due (Vancouver)")},
    "staff-request": {
        "Ledger around the purchase": ("Date", "What", "Credits", "Balance"),
        "Jobs around the purchase": ("Job", "Credits", "Status"),
    },
    "staff-request-refunded": {
        "Ledger around the purchase": ("Date", "What", "Credits", "Balance"),
        "Jobs around the purchase": ("Job", "Credits", "Status"),
    },
    "staff-incidents": {"*": ("What", "Started", "Ended")},
    "staff-audit-log": {"*": ("Time", "Who", "Action", "Changes")},
    "staff-team": {"*": ("Staff member", "Authenticator")},
    # Tables not listed here (the refund policy's packages...) show every column.
}

# Other customers in the queue: (e-mail, package, reason, their words).
QUEUED_CUSTOMERS = (
    (
        "alexandra.konstantinopoulou-whitfield@accounts-payable.example-enterprises.com",
        "premium",
        "charged_twice",
        "Our card statement shows this package twice on the same afternoon.",
    ),
    (
        "procurement+image-processing-credits-2026@a-rather-long-organisation-name.example.org",
        "pro",
        "service_unavailable",
        "Every job failed for two days while our campaign was due.",
    ),
    ("jo@example.com", "basic", "credits_not_added", "I paid but my balance did not change."),
)
LONG_STAFF_EMAIL = "customer-success.refunds-desk.emea-and-apac@support-team.example.com"
_job_numbers = itertools.count(1)
OPERATIONS = ("upscale", "background-removal", "colorize", "denoise", "style-transfer")


# -- the data: one customer, other customers in the queue, a staff team ----------------


@dataclass
class Portal:
    """What the walk visits, by id, and who logs in on each screen."""

    customer: str
    purchases: dict[str, int] = field(default_factory=dict)
    success_session: str = ""
    jobs: dict[str, int] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)
    queue_request: int = 0
    links: dict[str, str] = field(default_factory=dict)
    # screen -> (a staff member with an authenticator, one who sets theirs up)
    staff: dict[str, tuple[str, str]] = field(default_factory=dict)


def _buy_in_sandbox(server: LiveServer, email: str, package: str, card: str | None):
    """Check out `package` as the customer; pay with `card` (None: leave it pending).

    Returns (purchase id, Checkout Session id). A paid session is fulfilled at once, as
    the success page does.
    """
    with server.database():
        url = checkout.start_checkout(
            accounts.user_by_email(email),
            package,
            success_url=f"{server.url}/credits/success?session_id={{CHECKOUT_SESSION_ID}}",
            cancel_url=f"{server.url}/credits/cancel",
        )
        session_id = url.rstrip("/").rsplit("/", 1)[-1]
        purchase_id = checkout.purchase_by_session(accounts.user_by_email(email).id, session_id).id
    if card is not None:
        with server.sandbox.lock:
            outcome = server.sandbox.pay(session_id, card)
        if outcome == "paid":
            with server.database():
                fulfilment.fulfil_checkout(session_id)
    return purchase_id, session_id


def _recharge_with(server: LiveServer, email: str, card: str) -> int:
    """Set `card` up for auto-recharge (through the sandbox's setup page), charge a job
    below the threshold and run the worker's round; the recharge's purchase id."""
    with server.database():
        url = auto_recharge.start_card_setup(
            accounts.user_by_email(email),
            f"{server.url}/account/auto-recharge/card?session_id={{CHECKOUT_SESSION_ID}}",
            f"{server.url}/account/auto-recharge",
        )
    session_id = url.rstrip("/").rsplit("/", 1)[-1]
    with server.sandbox.lock:
        assert server.sandbox.save_card_on_page(session_id, card) == "saved"
    with server.database():
        assert auto_recharge.card_set_up(session_id)
        jobs.charge_job(f"layout-job-{next(_job_numbers)}", email, "upscale", 1)
        auto_recharge.run(utcnow())
        return db.session.scalars(
            select(Purchase.id)
            .where(Purchase.user_id == accounts.user_by_email(email).id)
            .order_by(Purchase.id.desc())
        ).first()


def _purchase_status(server: LiveServer, purchase_id: int) -> str:
    with server.database():
        return db.session.get(Purchase, purchase_id).status.value


def _file(server: LiveServer, email: str, purchase_id: int, reason: str, details: str) -> int:
    with server.database():
        request = refunds.file_request(
            accounts.user_by_email(email),
            db.session.get(Purchase, purchase_id),
            RequestReason(reason),
            details,
            "",
            None,
            True,
            [],
            utcnow(),
        )
        return request.id


def _as_staff(server: LiveServer, email: str, decide) -> None:
    """Run `decide(actor, now)` as the staff member `email` (a staff service call)."""
    with server.database():
        decide(Actor(accounts.user_by_email(email), "203.0.113.24"), utcnow())


def _customer_history(server: LiveServer, email: str) -> dict[str, int]:
    """Two months of purchases and jobs (the demo's), a few jobs today; their ids."""
    with server.database():
        user = accounts.user_by_email(email)
        seed_demo_history(user)
        purchases = {
            f"demo {code}": purchase_id
            for code, purchase_id in db.session.execute(
                select(Purchase.package_code, Purchase.id).where(Purchase.user_id == user.id)
            )
        }
    found = _charge_jobs(
        server, email, [(4, "completed"), (6, "failed"), (2, "invalid input"), (3, "running")]
    )
    return {**purchases, **{f"job {name}": job_id for name, job_id in found.items()}}


def _charge_jobs(server: LiveServer, email: str, jobs_to_run) -> dict[str, int]:
    """Charge (credits, outcome) jobs now, as the platform does; the last job id by outcome."""
    found = {}
    with server.database():
        for number, (credits, outcome) in enumerate(jobs_to_run):
            operation = OPERATIONS[number % len(OPERATIONS)]
            job, _ = jobs.charge_job(f"layout-job-{next(_job_numbers)}", email, operation, credits)
            if outcome == "completed":
                jobs.complete_job(job.id)
            elif outcome == "failed":
                jobs.fail_job(job.id, FailureReason.PLATFORM_ERROR, "GPU worker lost")
            elif outcome == "invalid input":
                jobs.fail_job(job.id, FailureReason.INVALID_INPUT, "Corrupt image file")
            found[outcome] = job.id
    return found


@pytest.fixture(scope="module")
def portal_data(live_server: LiveServer) -> Portal:
    """One customer's realistic history and a staff team, shared by both screens."""
    server = live_server
    data = Portal(customer=create_customer(server))
    found = _customer_history(server, data.customer)
    data.purchases = {name: value for name, value in found.items() if name.startswith("demo")}
    data.jobs = {name: value for name, value in found.items() if name.startswith("job")}

    # Today's purchases through the sandbox: one to refund in full, one kept (the refund
    # form and the success page), a declined card, a checkout left open.
    data.purchases["refunded"], _ = _buy_in_sandbox(server, data.customer, "starter", CARD_SUCCEEDS)
    data.purchases["kept"], data.success_session = _buy_in_sandbox(
        server, data.customer, "basic", CARD_SUCCEEDS
    )
    data.purchases["declined"], _ = _buy_in_sandbox(server, data.customer, "starter", CARD_DECLINED)
    data.purchases["pending"], _ = _buy_in_sandbox(server, data.customer, "pro", None)

    # Auto-recharge below any balance: one recharge paid, then, with a card whose bank
    # asks for the cardholder, one waiting for them to confirm it.
    with server.database():
        auto_recharge.choose(accounts.user_by_email(data.customer).id, 100_000, "starter", 5_000)
    data.purchases["recharge"] = _recharge_with(server, data.customer, CARD_SUCCEEDS)
    data.purchases["recharge to confirm"] = _recharge_with(
        server, data.customer, CARD_AUTHENTICATES
    )

    # The staff team: a reviewer per screen, one per screen who sets up an authenticator
    # during the walk, one with a long address who never logged in, and a lead.
    lead = create_staff(server)
    for screen in SCREENS:
        data.staff[screen] = (create_staff(server), create_staff(server, enrolled=False))
    create_staff(server, enrolled=False, email=LONG_STAFF_EMAIL)

    # The customer's requests, one in each state.
    requests = data.requests
    requests["in review"] = _file(
        server,
        data.customer,
        data.purchases["demo premium"],
        "service_unavailable",
        "Jobs timed out for most of two days last week, so most of these credits sat unused.",
    )
    requests["waiting"] = _file(
        server,
        data.customer,
        data.purchases["demo starter"],
        "not_happy",
        "The upscaled images came out blurry at the edges.",
    )
    requests["denied"] = _file(
        server,
        data.customer,
        data.purchases["demo basic"],
        "other",
        "I no longer need these credits.",
    )
    requests["refunded"] = _file(
        server,
        data.customer,
        data.purchases["refunded"],
        "other",
        "I bought the Starter package by mistake; I meant to buy Basic.",
    )
    _as_staff(server, lead, lambda actor, now: staff.take(requests["in review"], actor))
    _as_staff(
        server,
        lead,
        lambda actor, now: staff.ask_for_information(
            requests["waiting"], actor, "Which images? Please give the job numbers.", now
        ),
    )
    _as_staff(
        server,
        lead,
        lambda actor, now: staff.deny(
            requests["denied"], actor, "window", "Your credits stay in your account.", now
        ),
    )
    _as_staff(
        server, lead, lambda actor, now: staff.approve(requests["refunded"], actor, 500, "", now)
    )
    assert run_refund_worker(server) == 1
    wait_until(
        lambda: _purchase_status(server, data.purchases["refunded"]) == "refunded",
        "the sandbox to settle the full refund of the Starter purchase",
    )
    wait_until(
        lambda: _purchase_status(server, data.purchases["declined"]) == "failed",
        "the declined payment's webhook",
    )

    # Other customers in the queue, some with long addresses; one overdue, one assigned.
    for number, (email, package, reason, details) in enumerate(QUEUED_CUSTOMERS):
        create_customer(server, email=email)
        with server.database():
            purchase = make_purchase(
                accounts.user_by_email(email),
                package,
                paid_at=utcnow() - timedelta(days=3 + 4 * number),
            )
            purchase_id = purchase.id
        _charge_jobs(server, email, [(2 + number, "completed"), (5, "failed"), (1, "completed")])
        request_id = _file(server, email, purchase_id, reason, details)
        if number == 0:
            data.queue_request = request_id
            make_overdue(server, request_id)
        if number == 1:
            reviewer = data.staff["desktop"][0]
            _as_staff(
                server,
                lead,
                lambda actor, now, request_id=request_id, reviewer=reviewer: staff.assign(
                    request_id, actor, accounts.user_by_email(reviewer).id
                ),
            )

    # An outage that ended, recorded while it went on (the audit log shows the change).
    def outage(actor, now):
        started = now - timedelta(days=9, hours=5)
        incident = incidents.record_incident(
            actor, "Processing outage: GPU cluster unavailable", started, None, "Region us-west."
        )
        incidents.end_incident(incident.id, actor, started + timedelta(hours=51))
        incidents.record_incident(
            actor,
            "Slow uploads",
            now - timedelta(days=2, hours=3),
            now - timedelta(days=2),
            "",
        )

    _as_staff(server, lead, outage)

    # A visitor's sign-up and a customer's password reset, each waiting for its link.
    visitor, forgetful = unique_email("visitor"), create_customer(server)
    with server.database():
        accounts.ask_to_sign_up(visitor, PASSWORD)
        accounts.ask_for_password_reset(forgetful)
    data.links["sign-up"] = emailed_link(server, visitor)
    data.links["reset"] = emailed_link(server, forgetful)
    return data


# -- the walk -------------------------------------------------------------------------


class Walk:
    """Check pages one after another; a page that cannot be reached is a finding too."""

    def __init__(self, browse: Browsing, screen: str):
        self.browse = browse
        self.screen = screen

    def fits(self, page: Page, name: str) -> None:
        try:
            self.browse.check_fits(page, name, PHONE_KEY_COLUMNS.get(name) if self.phone else None)
        # Whatever goes wrong on one page is reported with the others; the walk goes on.
        except Exception as error:
            self._could_not(page, name, error)

    def visit(self, page: Page, name: str, path: str) -> None:
        try:
            page.goto(path)
        except Exception as error:
            self._could_not(page, name, error)
            return
        self.fits(page, name)

    def step(self, page: Page, name: str, action) -> bool:
        """Take steps (fill a form, log in...) before a page; False if they failed."""
        try:
            action()
        except Exception as error:
            self._could_not(page, name, error)
            return False
        return True

    @property
    def phone(self) -> bool:
        return self.screen == "phone"

    def _could_not(self, page: Page, name: str, error: Exception) -> None:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        self.browse.layout_failures.append(
            f"{self.screen} {name} ({page.url}): could not check it: "
            f"{type(error).__name__}: {first_line}"
        )


def _log_in_form(page: Page, email: str, password: str) -> None:
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Log in").click()


def _walk_public_and_customer(walk: Walk, page: Page, data: Portal) -> None:
    for name, path in (
        ("public-landing", "/"),
        ("public-refund-policy", "/refund-policy"),
        ("public-status", "/status"),
        ("public-contact", "/contact"),
        ("public-sign-up", "/signup"),
        ("public-finish-sign-up", data.links["sign-up"]),
        ("public-reset-password", "/reset"),
        ("public-choose-new-password", data.links["reset"]),
        ("public-not-found", "/no-such-page"),
        ("public-log-in", "/login"),
    ):
        walk.visit(page, name, path)

    def log_in():
        _log_in_form(page, data.customer, PASSWORD)
        page.wait_for_url(re.compile(r"/dashboard$"))

    if not walk.step(page, "customer-dashboard", log_in):
        return
    walk.fits(page, "customer-dashboard")

    purchases, jobs, requests = data.purchases, data.jobs, data.requests
    for name, path in (
        ("customer-buy-credits", "/credits/buy"),
        ("customer-credits-added", f"/credits/success?session_id={data.success_session}"),
        ("customer-checkout-left", "/credits/cancel"),
        ("customer-purchases", "/purchases"),
        ("customer-purchase", f"/purchases/{purchases['demo premium']}"),
        ("customer-purchase-refunded", f"/purchases/{purchases['refunded']}"),
        ("customer-jobs", "/jobs"),
        ("customer-job-completed", f"/jobs/{jobs['job completed']}"),
        ("customer-job-failed", f"/jobs/{jobs['job failed']}"),
        ("customer-history", "/history"),
        ("customer-refund-requests", "/refunds/"),
        ("customer-refund-request-in-review", f"/refunds/{requests['in review']}"),
        ("customer-refund-request-waiting", f"/refunds/{requests['waiting']}"),
        ("customer-refund-request-denied", f"/refunds/{requests['denied']}"),
        ("customer-refund-request-refunded", f"/refunds/{requests['refunded']}"),
        ("customer-refund-unavailable", f"/refunds/new?purchase_id={purchases['refunded']}"),
        ("customer-account", "/account"),
        ("customer-auto-recharge", "/account/auto-recharge"),
        ("customer-recharge-receipt", f"/purchases/{purchases['recharge']}"),
        ("customer-recharge-to-confirm", f"/purchases/{purchases['recharge to confirm']}/confirm"),
        ("customer-e-mails", "/messages"),
        ("customer-forbidden", "/staff/"),
        ("customer-refund-form", f"/refunds/new?purchase_id={purchases['kept']}"),
    ):
        walk.visit(page, name, path)

    def review():
        page.get_by_label("What happened?").select_option(label="Something else")
        page.get_by_label("Tell us what happened").fill(
            "I bought more than I need this month and would like the unused credits refunded."
        )
        page.get_by_role("button", name="Check my case").click()
        expect(page.get_by_role("button", name="Submit my request")).to_be_visible()

    if walk.step(page, "customer-refund-review", review):
        walk.fits(page, "customer-refund-review")


def _walk_staff(walk: Walk, page: Page, data: Portal) -> None:
    reviewer, newcomer = data.staff[walk.screen]

    def wrong_password():
        page.goto("/login")
        _log_in_form(page, reviewer, "not-the-password-at-all")
        expect(page.get_by_label("Password", exact=True)).to_be_visible()

    if walk.step(page, "public-log-in-wrong-password", wrong_password):
        walk.fits(page, "public-log-in-wrong-password")

    def password():
        _log_in_form(page, reviewer, STAFF_PASSWORD)
        page.wait_for_url(re.compile(r"/login/second-factor$"))

    if not walk.step(page, "staff-second-factor", password):
        return
    walk.fits(page, "staff-second-factor")

    def code():
        page.get_by_label("Code").fill(authenticator_code(reviewer))
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(re.compile(r"/staff/$"))

    if not walk.step(page, "staff-queue", code):
        return
    walk.fits(page, "staff-queue")
    for name, path in (
        ("staff-queue-overdue", "/staff/?overdue=1"),
        ("staff-request", f"/staff/requests/{data.queue_request}"),
        ("staff-request-refunded", f"/staff/requests/{data.requests['refunded']}"),
        ("staff-incidents", "/staff/incidents"),
        ("staff-audit-log", "/staff/audit"),
        ("staff-team", "/staff/team"),
        ("staff-account", "/account"),
    ):
        walk.visit(page, name, path)

    def log_out():
        page.get_by_role("button", name="Log out").click()
        page.wait_for_url(re.compile(r"/$"))

    if walk.step(page, "public-logged-out", log_out):
        walk.fits(page, "public-logged-out")

    def new_member():
        page.goto("/login")
        _log_in_form(page, newcomer, STAFF_PASSWORD)
        page.wait_for_url(re.compile(r"/login/second-factor$"))

    if not walk.step(page, "staff-set-up-authenticator", new_member):
        return
    walk.fits(page, "staff-set-up-authenticator")

    def enrol():
        key = page.locator("code.totp-secret").inner_text().replace(" ", "")
        page.get_by_label("Code").fill(pyotp.TOTP(key).now())
        page.get_by_role("button", name="Turn it on").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Your authenticator is on")

    if walk.step(page, "staff-recovery-codes", enrol):
        walk.fits(page, "staff-recovery-codes")


@pytest.mark.parametrize("screen", list(SCREENS))
def test_every_page_fits(browse, live_server, portal_data, screen):
    # A wrong password (400) and the error pages (403, 404, 409) are visited on purpose.
    browse.allow_console_error(r"status of (400|403|404|409) ")
    walk = Walk(browse, screen)
    customer = browse.open(f"customer-{screen}", **SCREENS[screen])
    _walk_public_and_customer(walk, customer, portal_data)
    _walk_staff(walk, browse.open(f"staff-{screen}", **SCREENS[screen]), portal_data)
