"""Every form and filter, fed random and hostile values by the right user.

Properties: no response is a 500; a rejected (4xx) request stores nothing; hostile markup
never comes back unescaped, neither in the answer nor on the pages that show what was
stored; another customer's ids give 404.
"""

from datetime import timedelta
from urllib.parse import quote, urlencode, urljoin, urlsplit

import pytest
from hypothesis import example, given, seed
from hypothesis import strategies as st
from sqlalchemy import func, select

from portal.billing.models import Refund
from portal.db import db
from portal.incidents import services as incidents
from portal.incidents.models import Incident
from portal.money import parse_dollars
from portal.refunds import services as refunds
from portal.refunds.eligibility import RequestReason
from portal.refunds.models import RequestStatus
from portal.staff import services as staff_services
from portal.timeutil import utcnow
from tests.factories import DEFAULT_PASSWORD, authenticator_code, make_purchase
from tests.security.helpers import (
    NEW_PASSWORD,
    XSS,
    Actor,
    ServerErrors,
    checked,
    request_row,
)
from tests.security.strategies import FEWER, FUZZ, TEXT, VALUE, field, form

REASONS = [reason.value for reason in RequestReason]
EDGE_DATES = ["0001-01-01", "0001-01-02", "9999-12-30", "9999-12-31"]
DATES = st.one_of(st.dates().map(lambda day: day.isoformat()), st.sampled_from(EDGE_DATES))
LOCAL_TIMES = st.one_of(
    st.datetimes().map(lambda moment: moment.strftime("%Y-%m-%dT%H:%M")),
    st.sampled_from(["0001-01-01T00:00", "9999-12-31T23:59", "9999-12-31T00:00"]),
)

# Where the calendar's first and last days overflow when turned into UTC: far east and west
# today, and east of Greenwich in year 1 (Tokyo's local mean time).
ZONES = st.sampled_from(["UTC", "Pacific/Kiritimati", "Asia/Tokyo", "America/Vancouver"])


def live_in(user, zone: str) -> None:
    user.timezone = zone
    db.session.commit()


@pytest.fixture
def errors():
    with ServerErrors() as collected:
        yield collected


@pytest.fixture
def customer(app, world):
    return Actor(app, "customer_a", world.customer_a)


@pytest.fixture
def staff(app, world):
    return Actor(app, "staff", world.staff)


def path_part(value) -> str:
    """Text or bytes as one percent-encoded path segment."""
    return quote(value, safe="") if value else "x"


def purchase_of_b(world) -> int:
    if "b_purchase" not in world.extra:
        world.extra["b_purchase"] = make_purchase(world.customer_b).id
    return world.extra["b_purchase"]


def first(pairs, name):
    for key, value in pairs:
        if key == name:
            return value
    return None


# -- public forms ---------------------------------------------------------------------------


@seed(101)
@FUZZ
@given(
    pairs=form(
        email=field("new.person@example.com", "NEW.Person@Example.COM", "a@b"),
        password=field(NEW_PASSWORD, "short"),
        confirm=field(NEW_PASSWORD),
    )
)
def test_sign_up(app, world, errors, pairs):
    browser = Actor(app, "anonymous")
    checked("sign-up", lambda: browser.post_raw_form("/signup", pairs), errors)


@seed(102)
@FUZZ
@given(
    pairs=form(
        email=field("SPARE", "SPARE-SHOUTED"),
        password=field(DEFAULT_PASSWORD, "wrong password here"),
        remember=field("y", "1", "false"),
    ),
    next_page=st.one_of(st.none(), TEXT, st.sampled_from(["/jobs", "//evil.example"])),
)
def test_log_in(app, world, errors, pairs, next_page):
    browser = Actor(app, "anonymous")
    emails = {"SPARE": world.spare.email, "SPARE-SHOUTED": f" {world.spare.email.upper()} "}
    pairs = [(key, emails.get(value, value) if key == "email" else value) for key, value in pairs]
    path = "/login" if next_page is None else "/login?" + urlencode({"next": next_page})
    response = checked("log-in", lambda: browser.post_raw_form(path, pairs), errors)
    if response.status_code in (302, 303):
        target = urljoin("http://portal.test/login", response.headers["Location"])
        assert urlsplit(target).netloc == "portal.test", response.headers["Location"]


@seed(103)
@FUZZ
@given(pairs=form(email=field("SPARE", "nobody@example.com")))
def test_reset_request(app, world, errors, pairs):
    browser = Actor(app, "anonymous")
    pairs = [(key, world.spare.email if value == "SPARE" else value) for key, value in pairs]
    checked("reset request", lambda: browser.post_raw_form("/reset", pairs), errors)


@seed(104)
@FUZZ
@given(
    token=st.one_of(st.just("valid"), TEXT, st.binary(max_size=12)),
    pairs=form(password=field(NEW_PASSWORD), confirm=field(NEW_PASSWORD)),
)
def test_reset_with_token(app, world, errors, token, pairs):
    browser = Actor(app, "anonymous")
    token = world.fresh_reset_token() if token == "valid" else path_part(token)
    checked("reset page", lambda: browser.get(f"/reset/{token}"), errors)
    checked("reset", lambda: browser.post_raw_form(f"/reset/{token}", pairs), errors)


@seed(105)
@FUZZ
@given(token=st.one_of(st.just("valid"), TEXT, st.binary(max_size=12)))
def test_finish_sign_up_with_token(app, world, errors, token):
    browser = Actor(app, "anonymous")
    token = world.fresh_sign_up_token() if token == "valid" else path_part(token)
    checked("sign-up link", lambda: browser.get(f"/signup/finish/{token}"), errors)
    checked("finish sign-up", lambda: browser.post(f"/signup/finish/{token}", {}), errors)


@seed(106)
@FUZZ
@given(pairs=form(code=field("NOW", "000000", "abcde-01234", " 1 2 3 4 5 6 ")))
def test_second_factor(app, world, errors, pairs):
    browser = Actor(app, "anonymous")
    answer = browser.post("/login", {"email": world.staff.email, "password": DEFAULT_PASSWORD})
    assert answer.headers["Location"].endswith("/login/second-factor")
    browser.forget_csrf()
    code = authenticator_code(world.staff.email)
    pairs = [(key, code if value == "NOW" else value) for key, value in pairs]
    response = checked(
        "second factor", lambda: browser.post_raw_form("/login/second-factor", pairs), errors
    )
    if response.status_code == 303:
        assert response.headers["Location"] == "/staff/"


# -- the customer's forms -------------------------------------------------------------------


SETTINGS_FORMS = {
    "/account": (
        ("tz-csrf_token", "pw-csrf_token", "alert-csrf_token"),
        form(
            **{
                "tz-timezone": field("Europe/Paris", "UTC", "Mars/Olympus"),
                "pw-current_password": field("wrong password entirely"),
                "pw-password": field(NEW_PASSWORD),
                "pw-confirm": field(NEW_PASSWORD),
                "alert-threshold": field("500", "1,300", "0", "100001", "1e3", "٥", "-1"),
            }
        ),
    ),
    "/account/low-balance-alert/off": (("csrf_token",), form()),
    "/account/close": (
        ("close-csrf_token",),
        form(
            **{
                "close-current_password": field("wrong password entirely"),
                "close-confirm": field("y"),
            }
        ),
    ),
    "/account/auto-recharge": (
        ("csrf_token",),
        form(
            threshold=field("100", "1,300", "0", "100001", "1e3", "٥", "-1"),
            package=field("pro", "starter", "PRO", "enterprise"),
            monthly_cap=field("100", "$100", "19", "5000", "5001", "20.50", "1e3"),
        ),
    ),
    "/account/auto-recharge/off": (("csrf_token",), form()),
    "/account/browser-timezone": (
        ("csrf_token",),
        form(timezone=field("America/Vancouver", "Etc/GMT+12", "../../etc/localtime")),
    ),
}


@seed(105)
@FEWER
@given(
    data=st.sampled_from(sorted(SETTINGS_FORMS)).flatmap(
        lambda path: st.tuples(st.just(path), SETTINGS_FORMS[path][1])
    )
)
def test_account_settings(app, world, customer, errors, data):
    path, pairs = data
    names = SETTINGS_FORMS[path][0]
    checked(path, lambda: customer.post_raw_form(path, pairs, csrf_names=names), errors)
    checked("settings page", lambda: customer.get("/account"), errors, rows=False)
    checked("dashboard", lambda: customer.get("/dashboard"), errors, rows=False)


@seed(106)
@FUZZ
@given(pairs=form(package=field("starter", "pro", "PRO", "enterprise")))
def test_buy(app, world, customer, errors, pairs):
    checked("buy", lambda: customer.post_raw_form("/credits/buy", pairs), errors)


@seed(107)
@FUZZ
@given(
    pairs=form(
        purchase_id=field("A", "B", "0", "-1", "9999999999", "٥", "1e3", " 1"),
        job_id=field("", "A-job", "other-job"),
        reason=field(*REASONS),
        details=field("I no longer need these credits at all."),
        transaction_ids=field("", "pi_123"),
        money_back=field("y"),
        step=field("review", "submit", "edit"),
    )
)
def test_refund_request_review_and_submit(app, world, customer, errors, pairs):
    b_purchase = purchase_of_b(world)
    names = {
        "A": str(world.a.purchase_id),
        "B": str(b_purchase),
        "A-job": str(world.a.job_id),
        "other-job": str(world.t.job_id),
    }
    pairs = [(key, names.get(value, value)) for key, value in pairs]
    response = checked("refund form", lambda: customer.post_raw_form("/refunds/new", pairs), errors)
    if first(pairs, "purchase_id") == str(b_purchase):
        assert response.status_code == 404
    assert world.customer_b.email.encode() not in response.data


@seed(108)
@FEWER
@given(pairs=form(body=field("Here is my receipt: pi_123.")))
def test_refund_reply(app, world, customer, staff, errors, pairs):
    request_id = world.a.request_id
    if request_row(request_id).status != RequestStatus.WAITING_ON_CUSTOMER:
        staff_services.ask_for_information(
            request_id, staff_services.Actor(world.staff, "127.0.0.1"), "Which card?", utcnow()
        )
    checked("reply", lambda: customer.post_raw_form(f"/refunds/{request_id}", pairs), errors)
    checked("request page", lambda: customer.get(f"/refunds/{request_id}"), errors, rows=False)
    checked(
        "staff request page", lambda: staff.get(f"/staff/requests/{request_id}"), errors, rows=False
    )


# -- staff decisions -------------------------------------------------------------------------

BODY = form(body=field("Please send the receipt."))
STAFF_FORMS = {
    "take": form(),
    "assign": form(assignee=field("nobody", "me", "staff", "customer", "0", "-1")),
    "note": BODY,
    "message": BODY,
    "ask": BODY,
    "deny": form(
        reason=field("other", "outside_window", "used_credits", ""),
        message=field("Because the window closed."),
    ),
    "approve": form(
        amount=field("5.00", "$5.86", "5", "0.01", "NaN", "1e3", "-5", "٥", "5.001"),
        justification=field("Goodwill."),
    ),
    "credit": form(),
    "undo": form(request_id=field("request", "0", "x")),
    "retry": form(request_id=field("request", "0", "x")),
}


@seed(109)
@FEWER
@given(
    data=st.sampled_from(sorted(STAFF_FORMS)).flatmap(
        lambda action: st.tuples(st.just(action), STAFF_FORMS[action])
    ),
    target=st.sampled_from(["fresh", "missing"]),
)
@example(data=("approve", [("amount", "NaN")]), target="fresh")
def test_staff_decisions(app, world, customer, staff, errors, data, target):
    action, pairs = data
    purchase = make_purchase(world.customer_a)
    request = refunds.file_request(
        world.customer_a,
        purchase,
        RequestReason.OTHER,
        "some details here",
        "",
        None,
        False,
        [],
        utcnow(),
    )
    request_id = request.id if target == "fresh" else 2_000_000
    replace = {
        "staff": str(world.staff.id),
        "customer": str(world.customer_a.id),
        "request": str(world.failed_request_id),
    }
    pairs = [(key, replace.get(value, value)) for key, value in pairs]
    paths = {
        "undo": f"/staff/refunds/{world.scheduled_refund_id}/undo",
        "retry": f"/staff/refunds/{world.failed_refund_id}/retry",
    }
    path = paths.get(action, f"/staff/requests/{request_id}/{action}")
    refunds_before = db.session.scalar(select(func.count()).select_from(Refund))
    checked(action, lambda: staff.post_raw_form(path, pairs), errors)
    db.session.expire_all()
    if action == "approve" and parse_dollars(_text(first(pairs, "amount"))) is None:
        assert db.session.scalar(select(func.count()).select_from(Refund)) == refunds_before
    checked(
        "staff request page", lambda: staff.get(f"/staff/requests/{request.id}"), errors, rows=False
    )
    checked(
        "customer request page", lambda: customer.get(f"/refunds/{request.id}"), errors, rows=False
    )


INCIDENT_FORMS = {
    "/staff/incidents": form(
        title=field("Queue stalled"),
        started_at=field("2026-11-01T10:00", value=st.one_of(LOCAL_TIMES, VALUE)),
        ended_at=field("", "2026-11-01T12:00", value=st.one_of(LOCAL_TIMES, VALUE)),
        note=field(""),
    ),
    "/staff/incidents/{}/end": form(
        ended_at=field("2026-11-02T10:00", value=st.one_of(LOCAL_TIMES, VALUE))
    ),
}


@seed(112)
@FEWER
@given(
    data=st.sampled_from(sorted(INCIDENT_FORMS)).flatmap(
        lambda path: st.tuples(st.just(path), INCIDENT_FORMS[path])
    ),
    zones=st.tuples(ZONES, ZONES),
)
@example(
    data=("/staff/incidents", [("title", "x"), ("started_at", "9999-12-31T23:59")]),
    zones=("America/Vancouver", "UTC"),
)
@example(
    data=("/staff/incidents", [("title", "x"), ("started_at", "0001-01-01T00:00")]),
    zones=("Asia/Tokyo", "UTC"),
)
@example(
    data=("/staff/incidents/{}/end", [("ended_at", "9999-12-31T23:59")]),
    zones=("America/Vancouver", "UTC"),
)
@example(
    data=("/staff/incidents", [("title", "x"), ("started_at", "9999-12-31T00:00")]),
    zones=("America/Vancouver", "Pacific/Kiritimati"),
)
def test_incidents(app, world, customer, staff, errors, data, zones):
    """Staff record incidents in their timezone; customer A reads the status page in hers."""
    path, pairs = data
    live_in(world.staff, zones[0])
    live_in(world.customer_a, zones[1])
    incident = incidents.record_incident(
        staff_services.Actor(world.staff, "127.0.0.1"), "Ongoing", utcnow(), None, ""
    )
    incidents_before = db.session.scalar(select(func.count()).select_from(Incident))
    checked(path, lambda: staff.post_raw_form(path.format(incident.id), pairs), errors)
    if "end" not in path and not _valid_local_time(first(pairs, "started_at")):
        assert db.session.scalar(select(func.count()).select_from(Incident)) == incidents_before
    checked("incidents page", lambda: staff.get("/staff/incidents"), errors, rows=False)
    checked("status page", lambda: customer.get("/status"), errors, rows=False)
    checked(
        "anonymous status page", lambda: Actor(app, "anonymous").get("/status"), errors, rows=False
    )


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value or ""


def _valid_local_time(value) -> bool:
    from datetime import datetime

    try:
        datetime.strptime(_text(value).strip(), "%Y-%m-%dT%H:%M")
    except ValueError:
        return False
    return True


# -- GET filters -----------------------------------------------------------------------------

FILTERS = form(
    kind=field("", "purchase_credit", "job_charge"),
    start=field("", value=st.one_of(DATES, VALUE)),
    end=field("", value=st.one_of(DATES, VALUE)),
    per_page=field("1", "200", "201", "0"),
    before=field("1", "2147483648"),
    after=field("1"),
    status=field("", "open", "in_review"),
    verdict=field("", "likely_eligible"),
    reason=field("", *REASONS),
    assignee=field("anyone", "me", "nobody"),
    overdue=field("", "1"),
    sort=field("due", "age"),
    cursor=field("1", "1700000000000000-1", "99999999999999999999-1", "-1-1"),
    action=field("", "refund_request.filed"),
    target_type=field("", "refund_request", "user"),
)


@seed(110)
@FUZZ
@given(
    path=st.sampled_from(["/history", "/history.csv", "/jobs", "/purchases"]),
    pairs=FILTERS,
    zone=ZONES,
)
@example(path="/history", pairs=[("end", "9999-12-31")], zone="UTC")
@example(path="/history.csv", pairs=[("start", "0001-01-01")], zone="Asia/Tokyo")
def test_customer_filters(app, world, customer, errors, path, pairs, zone):
    live_in(world.customer_a, zone)
    checked(path, lambda: customer.get(f"{path}?{urlencode(pairs)}"), errors)


@seed(113)
@FUZZ
@given(
    path=st.sampled_from(["/staff/", "/staff/audit", "/staff/audit.csv"]),
    pairs=FILTERS,
    zone=ZONES,
)
@example(path="/staff/audit", pairs=[("end", "9999-12-31")], zone="UTC")
@example(path="/staff/audit.csv", pairs=[("start", "0001-01-01")], zone="Asia/Tokyo")
def test_staff_filters(app, world, staff, errors, path, pairs, zone):
    live_in(world.staff, zone)
    checked(path, lambda: staff.get(f"{path}?{urlencode(pairs)}"), errors)


# -- other customers' ids in GET parameters ---------------------------------------------------


@seed(111)
@FEWER
@given(
    path=st.sampled_from(["/refunds/new?purchase_id={}", "/refunds/new?job_id={}"]),
    whose=st.sampled_from(["b", "missing"]),
)
def test_refund_form_never_opens_for_another_customers_purchase(
    app, world, customer, errors, path, whose
):
    b_purchase = purchase_of_b(world)
    ids = {"b": b_purchase if "purchase" in path else world.t.job_id, "missing": 2_000_000}
    response = checked("refund form", lambda: customer.get(path.format(ids[whose])), errors)
    assert response.status_code == 404


def test_xss_marker_round_trips_escaped_through_stored_text(app, world, customer, staff, errors):
    """A deterministic companion of the properties: hostile text stored everywhere a user
    can store text comes back escaped on every page that shows it."""
    request_id = world.a.request_id
    staff_services.ask_for_information(
        request_id, staff_services.Actor(world.staff, "127.0.0.1"), XSS, utcnow()
    )
    checked("reply", lambda: customer.post(f"/refunds/{request_id}", {"body": XSS}), errors)
    for action in ("note", "message"):
        checked(
            action,
            lambda action=action: staff.post(
                f"/staff/requests/{request_id}/{action}", {"body": XSS}
            ),
            errors,
        )
    now = utcnow()
    incident = {
        "title": XSS,
        "started_at": (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"),
        "note": XSS,
    }
    checked("incident", lambda: staff.post("/staff/incidents", incident), errors)
    for browser, path in (
        (customer, f"/refunds/{request_id}"),
        (customer, "/refunds/"),
        (customer, "/status"),
        (customer, "/messages"),
        (staff, f"/staff/requests/{request_id}"),
        (staff, "/staff/"),
        (staff, "/staff/incidents"),
        (staff, "/staff/audit"),
    ):
        page = checked(path, lambda browser=browser, path=path: browser.get(path), errors)
        assert page.status_code == 200, path


@seed(114)
@FUZZ
@given(member=st.one_of(st.sampled_from(["LOST", "SELF", "CUSTOMER", "0", "-1", "9" * 30]), TEXT))
def test_reset_an_authenticator(app, world, staff, errors, member):
    ids = {"LOST": world.lost_phone.id, "SELF": world.staff.id, "CUSTOMER": world.customer_a.id}
    path = f"/staff/team/{path_part(str(ids.get(member, member)))}/reset-second-factor"
    checked("reset authenticator", lambda: staff.post(path, {}), errors)
