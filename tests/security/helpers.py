"""Helpers for the security tests: acting users, a world of real objects, and checks of
headers, markup, cookies, stored rows and server errors."""

from __future__ import annotations

import gc
import itertools
import logging
import re
import warnings
from datetime import timedelta
from html.parser import HTMLParser
from urllib.parse import urlencode, urlsplit

from flask import Flask, current_app
from sqlalchemy import func, literal, select, union_all

from portal import policy
from portal.accounts import services as accounts
from portal.accounts.models import User
from portal.billing import checkout
from portal.billing.models import Purchase
from portal.billing.money_back import sending
from portal.db import db
from portal.incidents import services as incidents
from portal.jobs import services as jobs
from portal.notifications.models import OutboxEmail
from portal.refunds import services as refunds
from portal.refunds.eligibility import RequestReason
from portal.refunds.models import Attachment, RefundRequest
from portal.sandbox.store import CARD_SUCCEEDS, DELAYED_METHOD
from portal.staff import services as staff_services
from portal.timeutil import utcnow
from tests.factories import (
    DEFAULT_PASSWORD,
    authenticator_code,
    make_purchase,
    make_staff,
    make_user,
)

# What a reflected or stored cross-site script would look like if it came back unescaped.
XSS = "<script>alert(1)</script>"
SQL = "'; DROP TABLE users;--"
SERVICE_TOKEN = "test-token"
OUTSIDE_ADDRESS = "198.51.100.20"  # TEST-NET-2: a caller on the internet
NEW_PASSWORD = "violet submarine harbour trumpet 7"
SUCCESS_URL = "http://portal.test/credits/success?session_id={CHECKOUT_SESSION_ID}"
CANCEL_URL = "http://portal.test/credits/cancel"
# The smallest file whose first bytes say PNG, as the portal checks uploads.
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 64

ROLES = ("anonymous", "customer_a", "customer_b", "staff", "terminated", "api_token")

_numbers = itertools.count(1)
_CSRF = re.compile(r'name="(?:[\w-]+-)?csrf_token" type="hidden" value="([^"]+)"')


# -- acting users -------------------------------------------------------------------------


class Actor:
    """A browser (its own cookie jar) acting as one role, with that session's CSRF token.

    `headers` go with every request (the jobs-API role sends its bearer token everywhere).
    Requests come from `address`, by default one outside every trusted network.
    """

    def __init__(
        self,
        app: Flask,
        role: str,
        user: User | None = None,
        headers=None,
        address: str = OUTSIDE_ADDRESS,
    ):
        from tests.conftest import IsolatedClient

        app.test_client_class = IsolatedClient
        self.app = app
        self.role = role
        self.user = user
        self.headers = dict(headers or {})
        self.client = app.test_client()
        self.address = address
        self._token: str | None = None
        if user is not None:
            self.log_in(user)

    def log_in(self, user: User, password: str = DEFAULT_PASSWORD) -> None:
        response = self.post("/login", data={"email": user.email, "password": password})
        assert response.status_code == 303, response.get_data(as_text=True)[:2000]
        self.forget_csrf()  # log-in starts a fresh session, with a fresh token
        if response.headers["Location"].endswith("/login/second-factor"):
            code = authenticator_code(user.email)
            response = self.post("/login/second-factor", data={"code": code})
            assert response.status_code == 303, response.get_data(as_text=True)[:2000]
            self.forget_csrf()

    def __repr__(self) -> str:
        return f"<Actor {self.role}>"

    def forget_csrf(self) -> None:
        """The session was replaced (log-in, log-out): fetch a new token next time."""
        self._token = None

    @property
    def csrf(self) -> str:
        """A valid CSRF token of this browser's session (any page with a form gives it)."""
        if self._token is None:
            page = self.client.get("/reset", headers=self.headers)
            match = _CSRF.search(page.get_data(as_text=True))
            assert match, "no CSRF token on /reset"
            self._token = match.group(1)
        return self._token

    def open(self, method: str, path: str, **kwargs):
        headers = {**self.headers, **(kwargs.pop("headers", None) or {})}
        environ = {"REMOTE_ADDR": self.address, **(kwargs.pop("environ_base", None) or {})}
        return self.client.open(
            path, method=method, headers=headers, environ_base=environ, **kwargs
        )

    def get(self, path: str, **kwargs):
        return self.open("GET", path, **kwargs)

    def post(self, path: str, data=None, csrf: bool = True, **kwargs):
        """POST a form, with this session's CSRF token unless told not to."""
        if data is not None and not isinstance(data, (bytes, str)):
            data = dict(data)
            if csrf:
                data.setdefault("csrf_token", self.csrf)
        return self.open("POST", path, data=data, **kwargs)

    def post_raw_form(
        self,
        path: str,
        pairs: list[tuple[str, str | bytes]],
        csrf_names: tuple[str, ...] = ("csrf_token",),
        **kwargs,
    ):
        """POST url-encoded `pairs` as given: repeated names, raw (even invalid UTF-8) bytes.

        A valid CSRF token goes under each of `csrf_names` (prefixed forms have their own).
        """
        body = urlencode([*((name, self.csrf) for name in csrf_names), *pairs])
        return self.open(
            "POST",
            path,
            data=body.encode("ascii"),
            content_type="application/x-www-form-urlencoded",
            **kwargs,
        )


def api_headers(token: str = SERVICE_TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}"}


def actor_for(app: Flask, world: World, role: str) -> Actor:
    """A new browser acting as `role` (logged in when the role is a user); the jobs-API
    role is a caller with no session that sends the service's bearer token everywhere."""
    headers = api_headers() if role == "api_token" else None
    return Actor(app, role, world.users()[role], headers=headers)


# -- the world: one of every object a URL can name ---------------------------------------


class Record:
    """Named fields, printed briefly (Hypothesis prints fixtures with failing examples)."""

    def __init__(self, **fields):
        self.__dict__.update(fields)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


class Objects(Record):
    """One customer's objects, each named by a URL somewhere."""

    user: User
    purchase_id: int  # credited, no refund request yet
    request_purchase_id: int  # credited, with an open request
    request_id: int
    attachment_id: int
    job_id: int
    pending_purchase_id: int
    pending_session_id: str
    email_id: int  # the e-mail that confirmed the request


class World(Record):
    """Everything the access matrix names."""

    customer_a: User
    customer_b: User
    staff: User
    terminated: User
    spare: User  # logs in through the anonymous log-in form
    reset_user: User  # changes password through reset links
    closable: User  # a customer staff may close in the matrix
    lost_phone: User  # a staff member whose authenticator staff may reset in the matrix
    a: Objects
    t: Objects
    running_job_ids: list[int]  # A's jobs for the API's complete and fail calls
    scheduled_refund_id: int
    scheduled_request_id: int
    failed_refund_id: int
    failed_request_id: int
    incident_id: int
    open_session_id: str  # at the sandbox, for its hosted page
    delayed_session_id: str
    sandbox_refund_id: str
    sandbox_charge_id: str  # a paid charge the sandbox page may dispute
    sandbox_dispute_id: str  # an open dispute the sandbox page may close
    sandbox_invoice_id: str  # a paid purchase's invoice, for its hosted page and PDF
    sandbox_portal_session_id: str  # a billing portal session, for its page
    reset_token: str
    extra: dict

    def fresh_reset_token(self) -> str:
        return reset_token_for(self.reset_user)

    def fresh_sign_up_token(self) -> str:
        return sign_up_token()

    def users(self) -> dict[str, User | None]:
        return {
            "anonymous": None,
            "customer_a": self.customer_a,
            "customer_b": self.customer_b,
            "staff": self.staff,
            "terminated": self.terminated,
            "api_token": None,
        }

    def objects_for(self, role: str) -> Objects:
        """Whose ids a role names: the terminated account its own, everyone else A's."""
        return self.t if role == "terminated" else self.a


def unique_email(prefix: str = "someone") -> str:
    return f"{prefix}{next(_numbers)}@example.com"


def _answer_account_requests() -> dict[str, list[str]]:
    """Answer every waiting sign-up and reset as the worker would; the raw tokens, by kind.

    Requests are answered oldest first, so the last token of a kind is the newest's.
    """
    tokens: dict[str, list[str]] = {"sign_up": [], "reset": []}
    links = accounts.AccountLinks(
        log_in=lambda: "http://portal.test/login",
        finish_sign_up=lambda token: tokens["sign_up"].append(token) or "",
        reset_password=lambda token: tokens["reset"].append(token) or "",
    )
    accounts.answer_account_requests(utcnow(), links)
    return tokens


def reset_token_for(user: User) -> str:
    accounts.ask_for_password_reset(user.email)
    return _answer_account_requests()["reset"][-1]


def sign_up_token() -> str:
    """The raw token of a link that finishes a new sign-up."""
    accounts.ask_to_sign_up(unique_email("joining"), "a long and unusual passphrase")
    return _answer_account_requests()["sign_up"][-1]


def _customer_objects(user: User) -> Objects:
    plain = make_purchase(user, "pro")
    with_request = make_purchase(user, "pro")
    request = refunds.file_request(
        user,
        with_request,
        RequestReason.OTHER,
        "some details here",
        "",
        None,
        False,
        [refunds.Upload("screenshot.png", PNG_BYTES)],
        utcnow(),
    )
    attachment_id = db.session.scalar(
        select(Attachment.id).where(Attachment.request_id == request.id)
    )
    job, _ = jobs.charge_job(f"job-{user.id}-{next(_numbers)}", user.email, "upscale", 3)
    checkout.start_checkout(user, "starter", SUCCESS_URL, CANCEL_URL)
    pending = db.session.scalar(
        select(Purchase).where(Purchase.user_id == user.id, Purchase.paid_at.is_(None))
    )
    return Objects(
        user=user,
        purchase_id=plain.id,
        request_purchase_id=with_request.id,
        request_id=request.id,
        attachment_id=attachment_id,
        job_id=job.id,
        pending_purchase_id=pending.id,
        pending_session_id=pending.stripe_checkout_session_id,
        email_id=db.session.scalar(
            select(OutboxEmail.id).where(OutboxEmail.to_address == user.email).limit(1)
        ),
    )


def _sandbox_invoice() -> str:
    """The invoice of a session paid by a sandbox customer with invoices switched on."""
    store = current_app.extensions["stripe_sandbox"]
    with store.lock:
        customer = store.create_customer({"email": "invoice@example.com"})["id"]
    session_id = _sandbox_session(
        CARD_SUCCEEDS, customer=customer, invoice_creation={"enabled": "true"}
    )
    with store.lock:
        return store.session(session_id)["invoice"]


def _sandbox_portal_session() -> str:
    store = current_app.extensions["stripe_sandbox"]
    with store.lock:
        customer = store.create_customer({"email": "portal@example.com"})["id"]
        portal = store.create_portal_session(
            {"customer": customer, "return_url": SUCCESS_URL}, lambda sid: f"/sandbox/billing/{sid}"
        )
    return portal["id"]


def _sandbox_session(card: str | None = None, **extra) -> str:
    """A Checkout Session at the sandbox, paid with `card` unless None."""
    store = current_app.extensions["stripe_sandbox"]
    package = policy.PACKAGES_BY_CODE["starter"]
    params = {
        "mode": "payment",
        "line_items": [
            {
                "quantity": "1",
                "price_data": {
                    "currency": package.currency,
                    "unit_amount": str(package.price_cents),
                    "product_data": {"name": package.name},
                },
            }
        ],
        "success_url": SUCCESS_URL,
        "cancel_url": CANCEL_URL,
        **extra,
    }
    with store.lock:
        session_id = store.create_session(params, lambda sid: f"/sandbox/checkout/{sid}")["id"]
        if card is not None:
            store.pay(session_id, card)
    return session_id


def _sandbox_refund() -> str:
    store = current_app.extensions["stripe_sandbox"]
    session_id = _sandbox_session(CARD_SUCCEEDS)
    with store.lock:
        intent = store.sessions[session_id]["payment_intent"]
        return store.create_refund({"payment_intent": intent, "amount": "100"})["id"]


def _sandbox_charge() -> str:
    store = current_app.extensions["stripe_sandbox"]
    session_id = _sandbox_session(CARD_SUCCEEDS)
    with store.lock:
        return store.payment_intents[store.sessions[session_id]["payment_intent"]]["latest_charge"]


def _sandbox_dispute() -> str:
    store = current_app.extensions["stripe_sandbox"]
    charge_id = _sandbox_charge()
    with store.lock:
        return store.open_dispute(charge_id)["id"]


def build_world() -> World:
    """Create everything the access matrix names, as real rows (and sandbox objects)."""
    customer_a = make_user(email=unique_email("alice"), timezone="Pacific/Kiritimati")
    customer_b = make_user(email=unique_email("bob"))
    staff = make_staff(timezone="America/Vancouver")
    terminated = make_user(email=unique_email("gone"))
    spare = make_user(email=unique_email("spare"))
    reset_user = make_user(email=unique_email("forgetful"))
    closable = make_user(email=unique_email("leaving"))
    lost_phone = make_staff(email=unique_email("lost-phone"))
    a = _customer_objects(customer_a)
    t = _customer_objects(terminated)
    accounts.terminate_account(terminated, "terms violation")
    running = [
        jobs.charge_job(f"run-{next(_numbers)}", customer_a.email, "upscale", 1)[0].id
        for _ in range(2)
    ]
    actor = staff_services.Actor(staff, "127.0.0.1")
    now = utcnow()

    def approved(user: User):
        purchase = make_purchase(user, "pro")
        request = refunds.file_request(
            user, purchase, RequestReason.OTHER, "some details here", "", None, False, [], now
        )
        refund = staff_services.approve(request.id, actor, 500, "goodwill", now)
        return request.id, refund.id

    scheduled_request_id, scheduled_refund_id = approved(customer_a)
    failed_request_id, failed_refund_id = approved(customer_a)
    sending.refund_failed(failed_refund_id, "card expired")
    incident = incidents.record_incident(
        actor, "Ongoing outage", now - timedelta(hours=3), None, ""
    )
    world = World(
        customer_a=customer_a,
        customer_b=customer_b,
        staff=staff,
        terminated=terminated,
        spare=spare,
        reset_user=reset_user,
        closable=closable,
        lost_phone=lost_phone,
        a=a,
        t=t,
        running_job_ids=running,
        scheduled_refund_id=scheduled_refund_id,
        scheduled_request_id=scheduled_request_id,
        failed_refund_id=failed_refund_id,
        failed_request_id=failed_request_id,
        incident_id=incident.id,
        open_session_id=_sandbox_session(),
        delayed_session_id=_sandbox_session(DELAYED_METHOD),
        sandbox_refund_id=_sandbox_refund(),
        sandbox_charge_id=_sandbox_charge(),
        sandbox_dispute_id=_sandbox_dispute(),
        sandbox_invoice_id=_sandbox_invoice(),
        sandbox_portal_session_id=_sandbox_portal_session(),
        reset_token="",
        extra={},
    )
    world.reset_token = world.fresh_reset_token()
    db.session.expire_all()
    return world


# -- what the database holds -------------------------------------------------------------


def row_counts() -> dict[str, int]:
    """The number of rows of every table (one query)."""
    db.session.expire_all()
    counts = union_all(
        *(
            select(literal(table.name).label("name"), func.count().label("rows")).select_from(table)
            for table in db.metadata.sorted_tables
        )
    )
    return dict(db.session.execute(counts).all())


def balance_of(user_id: int) -> int:
    db.session.expire_all()
    return db.session.scalar(select(User.credits_balance).where(User.id == user_id))


def request_row(request_id: int) -> RefundRequest:
    db.session.expire_all()
    return db.session.get(RefundRequest, request_id)


# -- server errors ------------------------------------------------------------------------


class ServerErrors(logging.Handler):
    """Collect the tracebacks the portal logs for unhandled errors (500 pages)."""

    def __repr__(self) -> str:
        return "<ServerErrors>"

    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def __enter__(self):
        logging.getLogger("portal.pages.errors").addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("portal.pages.errors").removeHandler(self)

    def describe(self) -> str:
        if not self.records:
            return "(nothing logged)"
        last = self.records[-1]
        return self.format(last) + "\n" + (logging.Formatter().formatException(last.exc_info))


def collect_abandoned_streams() -> None:
    """Finalise what a request that blew up mid-stream left behind (an open database
    cursor of a CSV export), so that its ResourceWarning does not fail another test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def status_and_body(send) -> tuple[int, str]:
    """Send a request; an error that escaped every handler (Flask re-raises it in tests,
    a server answers a bare 500) counts as 500."""
    escaped = None
    try:
        response = send()
    except Exception as error:
        escaped = f"{type(error).__name__}: {error}"
    if escaped is not None:
        collect_abandoned_streams()
        return 500, escaped
    return response.status_code, response.get_data(as_text=True)


def checked(
    what: str,
    send,
    errors: ServerErrors,
    rows: bool = True,
    markers=(XSS, '"><svg onload=alert(1)>'),
    allow: tuple[int, ...] = (),
):
    """Send a request and hold the portal to the rules for hostile input.

    No 500 (and no error escaping every handler); hostile markup never comes back
    unescaped in a page; a rejected (4xx) request stores nothing (checked unless `rows`
    is false, for pages that only read). `allow` names 5xx answers given on purpose.
    """
    before = row_counts() if rows else None
    escaped = None
    try:
        response = send()
    except Exception as error:
        escaped = f"{type(error).__name__}: {error}"
    if escaped is not None:
        collect_abandoned_streams()
        raise AssertionError(f"{what}: an error escaped every handler: {escaped}")
    assert response.status_code < 500 or response.status_code in allow, (
        f"{what}: {response.status_code}\n{errors.describe()}"
    )
    if response.mimetype in ("text/html", "application/json", "text/plain"):
        body = response.get_data(as_text=True)
        for marker in markers:
            assert marker not in body, f"{what}: unescaped {marker!r} in the answer"
    if before is not None and 400 <= response.status_code < 500:
        after = row_counts()
        changed = {
            name: (before[name], after[name]) for name in after if after[name] != before[name]
        }
        assert not changed, f"{what}: a rejected request ({response.status_code}) stored {changed}"
    return response


def is_html(response) -> bool:
    return response.mimetype == "text/html"


# -- headers, markup and cookies -----------------------------------------------------------


def csp_directives(value: str) -> dict[str, list[str]]:
    directives = {}
    for part in value.split(";"):
        words = part.split()
        if words:
            directives[words[0].lower()] = words[1:]
    return directives


def header_problems(response) -> list[str]:
    """What is missing or weak among a response's security headers."""
    problems = []
    headers = response.headers
    csp = headers.get("Content-Security-Policy")
    if not csp:
        return ["no Content-Security-Policy"]
    directives = csp_directives(csp)
    if "'unsafe-inline'" in csp or "'unsafe-eval'" in csp:
        problems.append(f"CSP allows unsafe sources: {csp}")
    expected = {
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "frame-ancestors": ["'none'"],
    }
    for name, sources in expected.items():
        if directives.get(name) != sources:
            problems.append(f"CSP {name} is {directives.get(name)}")
    form_action = directives.get("form-action")
    if form_action is None or not set(form_action) <= {"'self'", "https://checkout.stripe.com"}:
        problems.append(f"CSP form-action is {form_action}")
    if "default-src" not in directives and "script-src" not in directives:
        problems.append("CSP has neither default-src nor script-src")
    for name in ("script-src", "style-src", "default-src"):
        if any(source in ("*", "data:", "http:", "https:") for source in directives.get(name, [])):
            problems.append(f"CSP {name} allows any origin: {directives[name]}")
    if headers.get("X-Content-Type-Options") != "nosniff":
        problems.append("X-Content-Type-Options is not nosniff")
    if headers.get("X-Frame-Options") != "DENY":
        problems.append("X-Frame-Options is not DENY")
    if headers.get("Referrer-Policy") not in (
        "no-referrer",
        "same-origin",
        "strict-origin",
        "strict-origin-when-cross-origin",
    ):
        problems.append(f"Referrer-Policy is {headers.get('Referrer-Policy')}")
    if not headers.get("Permissions-Policy"):
        problems.append("no Permissions-Policy")
    return problems


class _MarkupScanner(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []
        self._in_script = False
        self._script_text = ""

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name.startswith("on"):
                self.problems.append(f"inline event handler <{tag} {name}={value!r}>")
            if name == "style":
                self.problems.append(f"inline style <{tag} style={value!r}>")
            if name in ("href", "src", "action", "formaction") and (
                value or ""
            ).strip().lower().startswith("javascript:"):
                self.problems.append(f"javascript: URL in <{tag} {name}>")
        if tag == "style":
            self.problems.append("inline <style> block")
        if tag == "script":
            src = dict(attrs).get("src")
            if not src or not urlsplit(src).path.startswith("/static/") or urlsplit(src).netloc:
                self.problems.append(f"<script> without a /static/ src: {attrs}")
            self._in_script = True
            self._script_text = ""

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag == "script":
            self._in_script = False

    def handle_endtag(self, tag):
        if tag == "script":
            if self._script_text.strip():
                self.problems.append("inline script code")
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self._script_text += data


def markup_problems(body: str) -> list[str]:
    """Inline script, event handlers and styles that the CSP would (rightly) block."""
    scanner = _MarkupScanner()
    scanner.feed(body)
    scanner.close()
    return scanner.problems


def set_cookies(response) -> list[str]:
    return response.headers.getlist("Set-Cookie")


def cookie_attributes(header: str) -> tuple[str, dict[str, str]]:
    """Split one Set-Cookie header into its name and lower-cased attributes."""
    first, *rest = [part.strip() for part in header.split(";")]
    name = first.split("=", 1)[0]
    attributes = {}
    for part in rest:
        key, _, value = part.partition("=")
        attributes[key.lower()] = value
    return name, attributes


def cookie_problems(response, secure: bool = False) -> list[str]:
    problems = []
    for header in set_cookies(response):
        name, attributes = cookie_attributes(header)
        deleting = "expires" in attributes and "1970" in attributes["expires"]
        if deleting:
            continue
        if "httponly" not in attributes:
            problems.append(f"{name} is not HttpOnly")
        if attributes.get("samesite", "").lower() != "lax":
            problems.append(f"{name} is not SameSite=Lax")
        if secure and "secure" not in attributes:
            problems.append(f"{name} is not Secure")
    return problems


# -- Stripe webhooks -------------------------------------------------------------------------


def stripe_signature(payload: bytes, secret: str | None = None, timestamp: int | None = None):
    import stripe

    secret = secret or current_app.config["STRIPE_WEBHOOK_SECRET"]
    return stripe.WebhookSignature.generate_signature_header(
        payload.decode("utf-8", errors="replace"), secret, timestamp=timestamp
    )


def signed_webhook(
    actor: Actor,
    event,
    secret: str | None = None,
    timestamp: int | None = None,
    tamper: bool = False,
):
    """POST `event` (a document, or raw bytes) to the webhook, signed as Stripe signs it."""
    import json

    payload = event if isinstance(event, bytes) else json.dumps(event).encode()
    header = stripe_signature(payload, secret, timestamp)
    if tamper:
        payload = payload.replace(b"evt", b"EVT", 1)
    return actor.open(
        "POST",
        "/webhooks/stripe",
        data=payload,
        headers={"Content-Type": "application/json", "Stripe-Signature": header},
    )
