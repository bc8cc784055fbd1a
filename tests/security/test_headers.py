"""Security headers, markup the CSP allows, cookies, body size limits and proxy headers.

Every GET page of the access matrix is fetched by every role that may see it; error pages,
static files and a production-configured app are checked too.
"""

import pytest
from flask import Flask
from sqlalchemy import select

from portal import create_app
from portal.accounts.models import UserSession
from portal.db import db
from portal.notifications.models import OutboxEmail
from tests.factories import DEFAULT_PASSWORD, make_user
from tests.security.access import MATRIX, OK, call_for, routes, send
from tests.security.helpers import (
    OUTSIDE_ADDRESS,
    ROLES,
    Actor,
    ServerErrors,
    cookie_attributes,
    cookie_problems,
    header_problems,
    is_html,
    markup_problems,
    row_counts,
    set_cookies,
    status_and_body,
)


def page_problems(response, secure: bool = False) -> list[str]:
    problems = header_problems(response) + cookie_problems(response, secure)
    if is_html(response):
        problems += markup_problems(response.get_data(as_text=True))
        if response.headers.get("Cache-Control") != "no-store":
            problems.append(f"Cache-Control is {response.headers.get('Cache-Control')}")
    return problems


def test_every_page_sends_the_security_headers_and_only_csp_safe_markup(app, world, actors):
    wrong = []
    fetched = 0
    for endpoint, method in routes(app):
        if method != "GET":
            continue
        for role in ROLES:
            if MATRIX[endpoint][method][role] is not OK:
                continue
            actor = actors[role]
            response = send(actor, "GET", call_for(endpoint, "GET", world, actor))
            assert response.status_code == 200, (endpoint, role)
            fetched += 1
            wrong += [f"{endpoint} as {role}: {problem}" for problem in page_problems(response)]
    assert fetched > 100
    assert wrong == [], "\n".join(wrong)


def test_error_pages_redirects_and_static_files_send_the_headers_too(app, world, actors):
    anonymous, customer = actors["anonymous"], actors["customer_b"]
    responses = {
        "404": anonymous.get("/no/such/page"),
        "403": customer.get("/staff/"),
        "405": anonymous.get("/logout"),
        "400 form": anonymous.post("/login", {"email": "x@example.com", "password": "wrong"}),
        "400 csrf": anonymous.post("/login", {"email": "x@example.com"}, csrf=False),
        "redirect": anonymous.get("/dashboard"),
        "api 401": anonymous.get("/api/v1/jobs/1"),
        "webhook 400": anonymous.open("POST", "/webhooks/stripe", json={}),
        "css": anonymous.get("/static/css/portal.css"),
        "js": anonymous.get("/static/js/timezone.js"),
    }
    wrong = [
        f"{what}: {problem}"
        for what, response in responses.items()
        for problem in header_problems(response)
        + cookie_problems(response)
        + (markup_problems(response.get_data(as_text=True)) if is_html(response) else [])
    ]
    assert wrong == [], "\n".join(wrong)
    assert responses["404"].status_code == 404 and responses["405"].status_code == 405
    assert responses["css"].mimetype == "text/css"


def test_log_in_and_out_cookies_are_http_only_and_same_site_lax(app, world):
    browser = Actor(app, "anonymous")
    response = browser.post(
        "/login",
        {"email": world.customer_a.email, "password": DEFAULT_PASSWORD, "remember": "y"},
    )
    assert response.status_code == 303, response.get_data(as_text=True)
    names = {cookie_attributes(header)[0] for header in set_cookies(response)}
    assert {"portal-session", "portal-remember"} <= names
    assert cookie_problems(response) == []
    browser.forget_csrf()
    logout = browser.post("/logout", {})
    assert logout.status_code == 303
    assert cookie_problems(logout) == []


# -- a production-configured app -------------------------------------------------------------


@pytest.fixture
def production_app(app, monkeypatch, tmp_path):
    """The portal as `PORTAL_ENV=production` builds it, on the test database."""
    monkeypatch.setenv("PORTAL_ENV", "production")
    monkeypatch.setenv("SECRET_KEY", "x" * 40)
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_x")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_x")
    monkeypatch.setenv("PORTAL_BASE_URL", "https://portal.example")
    monkeypatch.setenv("PORTAL_SERVICE_TOKEN", "s" * 40)
    # The test database may be SQLite, which production refuses at start (tests/test_config.py
    # holds that refusal); what is tested here is how production answers once started.
    monkeypatch.setattr("portal.ops.deploycheck.refuse_unsafe_production", lambda app: None)
    for name in ("PAYMENTS_MODE", "STRIPE_API_BASE", "PROXY_FIX_COUNT", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    built = create_app(
        {
            "SQLALCHEMY_DATABASE_URI": app.config["SQLALCHEMY_DATABASE_URI"],
            "INSTANCE_PATH": str(tmp_path / "instance"),
        }
    )
    assert built.config["PORTAL_ENV"] == "production"
    assert built.config["PAYMENTS_MODE"] == "stripe"
    yield built
    with built.app_context():
        db.engine.dispose()


def https_client(production: Flask):
    from tests.conftest import IsolatedClient

    production.test_client_class = IsolatedClient
    return production.test_client()


def test_production_sends_hsts_and_host_only_secure_cookies(production_app):
    user = make_user()
    client = https_client(production_app)
    base = "https://portal.example"
    page = client.get("/login", base_url=base)
    assert page.status_code == 200
    hsts = page.headers.get("Strict-Transport-Security", "")
    assert "max-age=" in hsts and int(hsts.split("max-age=")[1].split(";")[0]) >= 31536000
    assert page_problems(page, secure=True) == []
    token = page.get_data(as_text=True).split('name="csrf_token" type="hidden" value="')[1]
    token = token.split('"')[0]
    response = client.post(
        "/login",
        base_url=base,
        headers={"Referer": f"{base}/login"},
        data={
            "email": user.email,
            "password": DEFAULT_PASSWORD,
            "remember": "y",
            "csrf_token": token,
        },
    )
    assert response.status_code == 303, response.get_data(as_text=True)
    assert "Strict-Transport-Security" in response.headers
    cookies = {cookie_attributes(header)[0]: header for header in set_cookies(response)}
    assert production_app.config["SESSION_COOKIE_NAME"].startswith("__Host-")
    assert "__Host-portal-session" in cookies and "__Host-portal-remember" in cookies
    for name, header in cookies.items():
        assert name.startswith("__Host-"), name
        _, attributes = cookie_attributes(header)
        # __Host- cookies must be Secure, on path /, and name no Domain.
        assert "secure" in attributes and attributes.get("path") == "/", header
        assert "domain" not in attributes, header
    assert cookie_problems(response, secure=True) == []
    missing = client.get("/no/such/page", base_url=base)
    assert missing.status_code == 404 and "Strict-Transport-Security" in missing.headers


@pytest.mark.parametrize(
    "base, headers",
    [
        ("https://portal.example", {"X-Forwarded-Host": "evil.example"}),
        ("https://evil.example", {}),
    ],
    ids=["x-forwarded-host", "host"],
)
def test_production_reset_links_do_not_follow_a_forged_host(production_app, base, headers):
    """The reset e-mail's link must lead to the portal, whatever Host the request names.

    A link built from a forged Host (or X-Forwarded-Host without a trusted proxy) hands the
    victim's single-use token to the forger ("password reset poisoning"): the request is
    refused, or the link names the portal's own host.
    """
    user = make_user()
    client = https_client(production_app)
    page = client.get("/reset", base_url=base, headers=headers)
    if page.status_code != 400:  # an untrusted Host refused outright is fine
        token = page.get_data(as_text=True).split('name="csrf_token" type="hidden" value="')[1]
        response = client.post(
            "/reset",
            base_url=base,
            headers={**headers, "Referer": f"{base}/reset"},
            data={"email": user.email, "csrf_token": token.split('"')[0]},
        )
        assert response.status_code in (303, 400)
    db.session.expire_all()
    bodies = db.session.scalars(
        select(OutboxEmail.body_text).where(OutboxEmail.to_address == user.email)
    ).all()
    assert all("evil.example" not in body for body in bodies), bodies


# -- body size -------------------------------------------------------------------------------


def test_bodies_over_the_limit_are_refused_with_413(app, world, actors):
    limit = app.config["MAX_CONTENT_LENGTH"]
    assert limit and limit <= 16 * 1024 * 1024
    too_big = b"x" * (limit + 1)
    before = row_counts()
    anonymous = actors["anonymous"]
    webhook = anonymous.open(
        "POST",
        "/webhooks/stripe",
        data=too_big,
        headers={"Content-Type": "application/json", "Stripe-Signature": "t=1,v1=00"},
    )
    assert webhook.status_code == 413
    assert webhook.is_json and webhook.get_json()["error"] == "payload_too_large"
    form = anonymous.open(
        "POST",
        "/signup",
        data=b"email=a%40example.com&password=" + too_big,
        content_type="application/x-www-form-urlencoded",
    )
    assert form.status_code == 413 and is_html(form)
    assert b"too large" in form.data
    api = actors["api_token"].open(
        "POST", "/api/v1/jobs", data=too_big, content_type="application/json"
    )
    assert api.status_code == 413 and api.is_json
    assert row_counts() == before


@pytest.mark.parametrize(
    "content_type, body",
    [
        ("application/x-www-form-urlencoded", b"details="),
        ("multipart/form-data; boundary=b", b"--b\r\n"),
    ],
)
def test_a_logged_in_customer_sending_too_much_gets_the_413_page(
    app, world, actors, content_type, body
):
    limit = app.config["MAX_CONTENT_LENGTH"]
    before = row_counts()
    with ServerErrors() as errors:
        status, page = status_and_body(
            lambda: actors["customer_a"].open(
                "POST", "/refunds/new", data=body + b"x" * limit, content_type=content_type
            )
        )
    assert status == 413, f"{status}: {page[:300]}\n{errors.describe()}"
    assert "too large" in page
    assert row_counts() == before


# -- proxy headers ---------------------------------------------------------------------------


def _logged_in_address(app: Flask, user) -> str:
    browser = Actor(app, "anonymous")
    browser.headers = {"X-Forwarded-For": "203.0.113.9", "X-Real-IP": "203.0.113.9"}
    browser.log_in(user)
    db.session.expire_all()
    row = db.session.scalars(
        select(UserSession).where(UserSession.user_id == user.id).order_by(UserSession.id.desc())
    ).first()
    return row.ip_address


def test_forwarded_for_is_ignored_without_a_trusted_proxy(app, make_app):
    user = make_user()
    assert app.config["PROXY_FIX_COUNT"] == 0
    assert _logged_in_address(app, user) == OUTSIDE_ADDRESS
    behind_proxy = make_app(PROXY_FIX_COUNT=1)
    assert _logged_in_address(behind_proxy, user) == "203.0.113.9"


def test_forwarded_host_and_proto_are_ignored_without_a_trusted_proxy(app, world, actors):
    customer = actors["customer_a"]
    response = customer.get(
        "/dashboard",
        headers={"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"},
    )
    assert response.status_code == 200
    assert "evil.example" not in response.get_data(as_text=True)
    buy = customer.post(
        "/credits/buy",
        {"package": "pro"},
        headers={"X-Forwarded-Host": "evil.example", "X-Forwarded-Prefix": "/evil"},
    )
    assert buy.status_code == 303
    assert "evil" not in buy.headers["Location"]
