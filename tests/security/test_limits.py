"""Each abuse limit triggers, answers 429 saying when to retry, and clears by itself."""

import time

import pytest

from portal.extensions import limiter
from tests.factories import DEFAULT_PASSWORD, csrf_token, login_as, make_purchase, make_user

WINDOW = "2 per 2 seconds"


@pytest.fixture
def limited(make_app):
    """An app whose limits are on and tiny, so a test can hit them and wait them out."""

    def build(setting: str, window: str = WINDOW):
        app = make_app(
            RATELIMIT_ENABLED=True, RATELIMIT_STORAGE_URI="memory://", **{setting: window}
        )
        with app.app_context():
            limiter.reset()
        return app

    return build


def hit_until_limited(send, allowed: int = 2):
    statuses = [send().status_code for _ in range(allowed + 1)]
    assert 429 not in statuses[:allowed], statuses
    assert statuses[-1] == 429, statuses


def wait_out_the_window():
    time.sleep(2.1)


def test_login_is_limited_per_address_and_clears(limited):
    app = limited("RATELIMIT_LOGIN_IP")
    client = app.test_client()

    def attempt(email="someone@example.com"):
        token = csrf_token(client, "/login")
        return client.post(
            "/login", data={"email": email, "password": "wrong password here", "csrf_token": token}
        )

    hit_until_limited(attempt)
    page = attempt("other@example.com")
    assert page.status_code == 429
    assert b"Please try again in at most 2 seconds." in page.data
    assert "Retry-After" in page.headers
    wait_out_the_window()
    assert attempt().status_code == 400


def test_failed_log_ins_slow_the_guesser_but_never_lock_the_owner_out(limited):
    # Two failures per 2 seconds, three per 30: the second window makes the pause grow.
    app = limited("RATELIMIT_LOGIN_FAILURES", "2 per 2 seconds;3 per 30 seconds")
    with app.app_context():
        make_user(email="victim@example.com")
    guesser, owner = app.test_client(), app.test_client()

    def log_in(client, address, password):
        token = csrf_token(client, "/login")
        return client.post(
            "/login",
            data={"email": "victim@example.com", "password": password, "csrf_token": token},
            environ_base={"REMOTE_ADDR": address},
        )

    def guess():
        return log_in(guesser, "203.0.113.7", "guess guess guess")

    hit_until_limited(guess)
    # The owner, from their own address, is let in while the guesser waits...
    assert log_in(owner, "198.51.100.2", DEFAULT_PASSWORD).status_code == 303
    wait_out_the_window()
    # ...and after the short pause the guesser has one try left before the longer one.
    assert guess().status_code == 400
    assert guess().status_code == 429
    wait_out_the_window()
    assert guess().status_code == 429


def test_successful_log_ins_are_not_counted_as_failures(limited):
    app = limited("RATELIMIT_LOGIN_FAILURES")
    client = app.test_client()
    with app.app_context():
        owner = make_user(email="owner@example.com")
        for _ in range(4):
            assert login_as(client, owner).status_code == 303
            client.post("/logout", data={"csrf_token": csrf_token(client, "/account")})


def test_signup_is_limited(limited):
    client = limited("RATELIMIT_SIGNUP").test_client()

    def attempt():
        token = csrf_token(client, "/signup")
        return client.post(
            "/signup",
            data={"email": "not-an-email", "password": "x", "confirm": "x", "csrf_token": token},
        )

    hit_until_limited(attempt)
    wait_out_the_window()
    assert attempt().status_code == 400


def test_password_reset_is_limited(limited):
    client = limited("RATELIMIT_PASSWORD_RESET").test_client()

    def attempt():
        token = csrf_token(client, "/reset")
        return client.post("/reset", data={"email": "a@example.com", "csrf_token": token})

    hit_until_limited(attempt)
    wait_out_the_window()
    assert attempt().status_code == 303


def test_checkout_is_limited_per_customer(limited):
    app = limited("RATELIMIT_CHECKOUT")
    client = app.test_client()
    login_as(client, make_user())

    def attempt():
        token = csrf_token(client, "/credits/buy")
        return client.post("/credits/buy", data={"package": "nope", "csrf_token": token})

    hit_until_limited(attempt)
    wait_out_the_window()
    assert attempt().status_code == 400


def test_refund_submissions_are_limited_but_reviews_are_not(limited):
    # Each attempt renders a whole pre-check: give the slow machine a wide window.
    app = limited("RATELIMIT_REFUND_REQUESTS", "2 per 60 seconds")
    client = app.test_client()
    user = make_user()
    purchase = make_purchase(user, "pro")
    login_as(client, user)

    def attempt(step):
        token = csrf_token(client, f"/refunds/new?purchase_id={purchase.id}")
        return client.post(
            "/refunds/new",
            data={
                "purchase_id": purchase.id,
                "reason": "other",
                "details": "",
                "step": step,
                "csrf_token": token,
            },
        )

    for _ in range(4):
        assert attempt("review").status_code == 400
    hit_until_limited(lambda: attempt("submit"))
    assert attempt("review").status_code == 400


def test_jobs_api_is_limited_per_token_with_a_json_answer(limited):
    app = limited("RATELIMIT_JOBS_API")
    app.config["PORTAL_SERVICE_TOKEN"] = "api-token"
    client = app.test_client()

    def attempt():
        return client.get("/api/v1/jobs/1", headers={"Authorization": "Bearer api-token"})

    hit_until_limited(attempt)
    limited_answer = attempt()
    assert limited_answer.get_json()["error"] == "rate_limited"
    other_token = client.get("/api/v1/jobs/1", headers={"Authorization": "Bearer other"})
    assert other_token.status_code == 401
    wait_out_the_window()
    assert attempt().status_code == 404


def test_a_lost_redis_leaves_the_limits_in_memory_instead_of_failing(make_app):
    service_token = "platform-token"
    # Nothing listens on port 9: the limiter's Redis is "down" from the first request.
    app = make_app(
        RATELIMIT_ENABLED=True,
        RATELIMIT_STORAGE_URI="redis://127.0.0.1:9/0",
        RATELIMIT_STORAGE_OPTIONS={"socket_connect_timeout": 1, "socket_timeout": 1},
        RATELIMIT_LOGIN_IP=WINDOW,
        PORTAL_SERVICE_TOKEN=service_token,
    )
    client = app.test_client()
    with app.app_context():
        make_purchase(make_user(email="buyer@example.com"), package="starter")

    def attempt():
        token = csrf_token(client, "/login")
        return client.post(
            "/login",
            data={
                "email": "someone@example.com",
                "password": "wrong password",
                "csrf_token": token,
            },
        )

    # Log-in answers, and its limit still holds, counted in this process's memory.
    hit_until_limited(attempt)
    job = client.post(
        "/api/v1/jobs",
        json={
            "external_id": "while-redis-is-down",
            "customer_email": "buyer@example.com",
            "operation": "upscale",
            "credits": 5,
        },
        headers={"Authorization": f"Bearer {service_token}"},
    )
    assert job.status_code == 201, job.get_data(as_text=True)
