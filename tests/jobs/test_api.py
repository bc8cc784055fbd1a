import json
import re
from datetime import datetime

import pytest
from sqlalchemy import func, select

from portal.accounts.models import User
from portal.db import db
from portal.jobs.models import Job
from portal.jobs.openapi import OPENAPI_DOCUMENT
from portal.ledger import alerts
from portal.ledger.models import EntryKind, LedgerEntry
from portal.notifications.models import OutboxEmail
from tests.factories import QueryCounter, make_purchase, make_staff, make_user

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DOCUMENTED_JOB_FIELDS = set(OPENAPI_DOCUMENT["components"]["schemas"]["Job"]["properties"])
# What answers that can change the balance add to the job: the balance and the alert's state.
BALANCE_FIELDS = {"balance_after", "low_balance_threshold", "balance_below_threshold"}


@pytest.fixture(autouse=True)
def _service_token(app, monkeypatch):
    monkeypatch.setitem(app.config, "PORTAL_SERVICE_TOKEN", TOKEN)


@pytest.fixture
def customer() -> User:
    user = make_user(email="buyer@example.com")
    make_purchase(user, package="starter")
    return user


def call(client, method: str, path: str, **kwargs):
    kwargs.setdefault("headers", AUTH)
    response = client.open(path, method=method, **kwargs)
    assert response.status_code < 500, response.get_data(as_text=True)
    return response


def new_job(**overrides) -> dict:
    return {
        "external_id": "platform-1",
        "customer_email": "buyer@example.com",
        "operation": "upscale",
        "credits": 5,
        **overrides,
    }


def post_job(client, **overrides):
    return call(client, "POST", "/api/v1/jobs", json=new_job(**overrides))


def count(model, *where) -> int:
    return db.session.scalar(select(func.count()).select_from(model).where(*where))


def charges() -> int:
    return count(LedgerEntry, LedgerEntry.kind == EntryKind.JOB_CHARGE)


def refunds() -> int:
    return count(LedgerEntry, LedgerEntry.kind == EntryKind.JOB_REFUND)


def balance_of(email: str) -> int:
    return db.session.scalar(select(User.credits_balance).where(User.email == email))


def test_new_job_is_created_charged_and_described(client, customer):
    response = post_job(client)

    assert response.status_code == 201
    document = response.get_json()
    assert set(document) == DOCUMENTED_JOB_FIELDS
    job = db.session.get(Job, document["id"])
    assert job.user_id == customer.id
    assert document["external_id"] == "platform-1"
    assert document["operation"] == "upscale"
    assert document["status"] == "running"
    assert document["credits"] == 5
    assert document["failure_reason"] is None
    assert document["credits_restored"] is False
    assert datetime.fromisoformat(document["created_at"]).tzinfo is not None
    assert document["finished_at"] is None
    assert document["balance_after"] == 45
    assert balance_of(customer.email) == 45
    assert charges() == 1


def test_new_job_finds_the_customer_whatever_the_case_of_the_email(client, customer):
    response = post_job(client, customer_email="  Buyer@EXAMPLE.com ")

    assert response.status_code == 201
    assert response.get_json()["balance_after"] == 45


def test_repeating_an_external_id_returns_the_same_job_and_charges_once(client, customer):
    first = post_job(client)
    second = post_job(client)

    assert (first.status_code, second.status_code) == (201, 200)
    assert second.get_json()["id"] == first.get_json()["id"]
    assert second.get_json()["balance_after"] == 45
    assert count(Job) == 1
    assert charges() == 1
    assert balance_of(customer.email) == 45


@pytest.mark.parametrize(
    "change",
    [
        {"operation": "denoise"},
        {"credits": 6},
        {"customer_email": "other@example.com"},
    ],
    ids=["operation", "credits", "customer"],
)
def test_reusing_an_external_id_for_a_different_job_is_a_conflict(client, customer, change):
    other = make_user(email="other@example.com")
    make_purchase(other, package="starter")
    post_job(client)

    response = post_job(client, **change)

    assert response.status_code == 409
    assert response.get_json()["error"] == "conflict"
    assert count(Job) == 1
    assert charges() == 1
    assert balance_of(customer.email) == 45
    assert balance_of(other.email) == 50


def test_job_the_balance_does_not_cover_is_refused_with_402(client, customer):
    response = post_job(client, credits=51)

    assert response.status_code == 402
    document = response.get_json()
    assert document["error"] == "insufficient_credits"
    assert document["balance"] == 50
    assert count(Job) == 0
    assert balance_of(customer.email) == 50


@pytest.mark.parametrize(
    ("credits", "status"), [(1, 201), (50, 201), (51, 402), (1_000_000, 402), (1_000_001, 400)]
)
def test_credit_limits_of_a_job(client, customer, credits, status):
    response = post_job(client, credits=credits)

    assert response.status_code == status
    assert balance_of(customer.email) == (50 - credits if status == 201 else 50)


@pytest.mark.parametrize(
    ("who", "status", "error"),
    [
        ("nobody", 404, "not_found"),
        ("staff", 404, "not_found"),
        ("terminated", 403, "account_terminated"),
        ("closed", 404, "not_found"),
    ],
)
def test_job_for_someone_who_is_not_an_active_customer_is_refused(client, who, status, error):
    if who == "staff":
        make_purchase(make_staff(email="ops@example.com"), package="starter")
    elif who == "terminated":
        make_purchase(make_user(email="gone@example.com", status="terminated"), package="starter")
    elif who == "closed":
        # Closing keeps the credits on the books under a placeholder address.
        closed = make_user(email="closed-1@closed.invalid", status="closed")
        make_purchase(closed, package="starter")
    email = {
        "nobody": "nobody@example.com",
        "staff": "ops@example.com",
        "closed": "closed-1@closed.invalid",
    }.get(who, "gone@example.com")

    response = post_job(client, customer_email=email)

    assert response.status_code == status
    assert response.get_json()["error"] == error
    assert count(Job) == 0
    assert charges() == 0


ENDPOINTS = [
    ("POST", "/api/v1/jobs"),
    ("GET", "/api/v1/jobs/{job_id}"),
    ("POST", "/api/v1/jobs/{job_id}/complete"),
    ("POST", "/api/v1/jobs/{job_id}/fail"),
    ("GET", "/api/v1/customers/buyer@example.com/balance"),
]
BAD_AUTH = [
    pytest.param({}, TOKEN, id="no-header"),
    pytest.param({"Authorization": "Bearer wrong-token"}, TOKEN, id="wrong-token"),
    pytest.param({"Authorization": f"Basic {TOKEN}"}, TOKEN, id="basic-scheme"),
    pytest.param({"Authorization": TOKEN}, TOKEN, id="no-scheme"),
    pytest.param({"Authorization": f"Bearer {TOKEN}x"}, TOKEN, id="token-prefix"),
    pytest.param({"Authorization": "Bearer "}, "", id="empty-configured-token"),
    pytest.param({"Authorization": f"Bearer {TOKEN}"}, "", id="token-not-configured"),
]


@pytest.mark.parametrize(("headers", "configured"), BAD_AUTH)
@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_api_refuses_requests_without_the_right_bearer_token(
    app, client, monkeypatch, customer, method, path, headers, configured
):
    job_id = post_job(client, external_id="existing").get_json()["id"]
    monkeypatch.setitem(app.config, "PORTAL_SERVICE_TOKEN", configured)
    body = (
        new_job(external_id="another") if path.endswith("/jobs") else {"reason": "platform_error"}
    )

    response = call(client, method, path.format(job_id=job_id), headers=headers, json=body)

    assert response.status_code == 401
    assert response.get_json()["error"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert count(Job) == 1
    assert db.session.get(Job, job_id).status == "running"
    assert balance_of(customer.email) == 45


def _job_fields(**changes) -> str:
    return json.dumps(new_job(**changes))


def _without(field: str) -> str:
    body = new_job()
    del body[field]
    return json.dumps(body)


BAD_BODIES = [
    pytest.param("not json", "text/plain", "body", id="plain-text"),
    pytest.param("{not json", "application/json", "body", id="broken-json"),
    pytest.param("", "application/json", "body", id="empty"),
    pytest.param(json.dumps([new_job()]), "application/json", "body", id="json-array"),
    pytest.param(json.dumps("upscale"), "application/json", "body", id="json-string"),
    pytest.param("null", "application/json", "body", id="json-null"),
    *(
        pytest.param(_without(field), "application/json", field, id=f"missing-{field}")
        for field in ("external_id", "customer_email", "operation", "credits")
    ),
    pytest.param(_job_fields(credits="5"), "application/json", "credits", id="credits-string"),
    pytest.param(_job_fields(credits=1.5), "application/json", "credits", id="credits-float"),
    pytest.param(_job_fields(credits=5.0), "application/json", "credits", id="credits-5.0"),
    pytest.param(_job_fields(credits=True), "application/json", "credits", id="credits-true"),
    pytest.param(_job_fields(credits=None), "application/json", "credits", id="credits-null"),
    pytest.param(_job_fields(credits=[5]), "application/json", "credits", id="credits-list"),
    pytest.param(_job_fields(credits=0), "application/json", "credits", id="credits-0"),
    pytest.param(_job_fields(credits=-5), "application/json", "credits", id="credits-negative"),
    pytest.param(_job_fields(credits=10**12), "application/json", "credits", id="credits-huge"),
    pytest.param(_job_fields(external_id=""), "application/json", "external_id", id="id-empty"),
    pytest.param(_job_fields(external_id="  \t"), "application/json", "external_id", id="id-ws"),
    pytest.param(_job_fields(external_id=42), "application/json", "external_id", id="id-int"),
    pytest.param(
        _job_fields(external_id="x" * 300), "application/json", "external_id", id="id-300"
    ),
    pytest.param(
        _job_fields(external_id="x" * 256), "application/json", "external_id", id="id-256"
    ),
    pytest.param(_job_fields(external_id="a\x00b"), "application/json", "external_id", id="id-nul"),
    pytest.param(_job_fields(operation=""), "application/json", "operation", id="op-empty"),
    pytest.param(_job_fields(operation=" "), "application/json", "operation", id="op-ws"),
    pytest.param(_job_fields(operation="x" * 101), "application/json", "operation", id="op-101"),
    pytest.param(_job_fields(operation=None), "application/json", "operation", id="op-null"),
    pytest.param(
        _job_fields(customer_email=""), "application/json", "customer_email", id="email-empty"
    ),
    pytest.param(
        _job_fields(customer_email="   "), "application/json", "customer_email", id="email-ws"
    ),
    pytest.param(
        _job_fields(customer_email="buyer.example.com"),
        "application/json",
        "customer_email",
        id="email-no-at",
    ),
    pytest.param(
        _job_fields(customer_email="a" * 243 + "@example.com"),
        "application/json",
        "customer_email",
        id="email-255",
    ),
    pytest.param(
        _job_fields(customer_email={"email": "buyer@example.com"}),
        "application/json",
        "customer_email",
        id="email-object",
    ),
]


@pytest.mark.parametrize(("data", "content_type", "field"), BAD_BODIES)
def test_malformed_job_is_refused_naming_the_field_and_stores_nothing(
    client, customer, data, content_type, field
):
    response = call(
        client,
        "POST",
        "/api/v1/jobs",
        data=data,
        headers={**AUTH, "Content-Type": content_type},
    )

    assert response.status_code == 400
    document = response.get_json()
    assert document["error"] == "invalid_request"
    assert document["field"] == field
    assert count(Job) == 0
    assert charges() == 0
    assert balance_of(customer.email) == 50


@pytest.mark.parametrize(
    "changes",
    [
        {"external_id": "x" * 255},
        {"operation": "o" * 100},
    ],
    ids=["id-255", "op-100"],
)
def test_longest_accepted_values_are_stored(client, customer, changes):
    response = post_job(client, **changes)

    assert response.status_code == 201
    job = db.session.get(Job, response.get_json()["id"])
    assert job.external_id == new_job(**changes)["external_id"]
    assert job.operation == new_job(**changes)["operation"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("external_id", "platform-\ud800"),
        ("operation", "upscale-\udfff"),
        ("customer_email", "buyer\ud800@example.com"),
    ],
    ids=["external_id", "operation", "customer_email"],
)
def test_strings_that_are_not_valid_unicode_are_refused_not_crashed_on(
    client, customer, field, value
):
    body = json.dumps(new_job(**{field: value}))

    response = client.post(
        "/api/v1/jobs", data=body, headers={**AUTH, "Content-Type": "application/json"}
    )

    assert response.status_code == 400
    assert response.get_json()["field"] == field
    assert count(Job) == 0
    assert balance_of(customer.email) == 50


def create_job(client, **overrides) -> int:
    response = post_job(client, **overrides)
    assert response.status_code == 201
    return response.get_json()["id"]


def complete(client, job_id: int):
    return call(client, "POST", f"/api/v1/jobs/{job_id}/complete")


def fail(client, job_id: int, reason="platform_error", **extra):
    return call(client, "POST", f"/api/v1/jobs/{job_id}/fail", json={"reason": reason, **extra})


def test_completed_job_succeeds_once_and_can_no_longer_fail(client, customer):
    job_id = create_job(client)

    first = complete(client, job_id)
    again = complete(client, job_id)
    failed = fail(client, job_id)

    assert first.status_code == again.status_code == 200
    assert first.get_json()["status"] == "succeeded"
    assert first.get_json()["finished_at"] is not None
    assert first.get_json()["balance_after"] == 45
    assert again.get_json()["finished_at"] == first.get_json()["finished_at"]
    assert failed.status_code == 409
    assert failed.get_json()["error"] == "conflict"
    assert db.session.get(Job, job_id).status == "succeeded"
    assert refunds() == 0
    assert balance_of(customer.email) == 45


def test_platform_error_gives_the_credits_back_once(client, customer):
    job_id = create_job(client)

    first = fail(client, job_id, detail="GPU node lost")
    again = fail(client, job_id, detail="GPU node lost")

    assert first.status_code == again.status_code == 200
    document = first.get_json()
    assert document["status"] == "failed"
    assert document["failure_reason"] == "platform_error"
    assert document["credits_restored"] is True
    assert document["balance_after"] == 50
    assert again.get_json()["balance_after"] == 50
    assert refunds() == 1
    assert balance_of(customer.email) == 50
    assert db.session.get(Job, job_id).failure_detail == "GPU node lost"


def test_failed_job_can_no_longer_complete(client, customer):
    job_id = create_job(client)
    fail(client, job_id)

    response = complete(client, job_id)

    assert response.status_code == 409
    assert db.session.get(Job, job_id).status == "failed"
    assert balance_of(customer.email) == 50


def test_invalid_input_keeps_the_charge(client, customer):
    job_id = create_job(client)

    response = fail(client, job_id, reason="invalid_input", detail="not an image")
    retried_as_platform_error = fail(client, job_id, reason="platform_error")

    assert response.status_code == 200
    assert response.get_json()["failure_reason"] == "invalid_input"
    assert response.get_json()["credits_restored"] is False
    assert response.get_json()["balance_after"] == 45
    assert retried_as_platform_error.status_code == 409
    assert refunds() == 0
    assert balance_of(customer.email) == 45


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"reason": "oops"},
        {"reason": None},
        {"reason": 1},
        {"reason": "PLATFORM_ERROR"},
        {"reason": ["platform_error"]},
        {"reason": {"code": "platform_error"}},
    ],
    ids=["missing", "unknown", "null", "number", "upper-case", "list", "object"],
)
def test_failure_with_a_bad_reason_is_refused(client, customer, body):
    job_id = create_job(client)

    response = call(client, "POST", f"/api/v1/jobs/{job_id}/fail", json=body)

    assert response.status_code == 400
    assert response.get_json()["field"] == "reason"
    assert db.session.get(Job, job_id).status == "running"
    assert balance_of(customer.email) == 45


@pytest.mark.parametrize("detail", [5, None, "d" * 2001], ids=["number", "null", "2001-chars"])
def test_failure_with_a_bad_detail_is_refused(client, customer, detail):
    job_id = create_job(client)

    response = fail(client, job_id, detail=detail)

    assert response.status_code == 400
    assert response.get_json()["field"] == "detail"
    assert db.session.get(Job, job_id).status == "running"
    assert refunds() == 0


def test_failure_detail_that_is_not_valid_unicode_is_refused_not_crashed_on(client, customer):
    job_id = create_job(client)

    response = client.post(
        f"/api/v1/jobs/{job_id}/fail",
        data='{"reason": "platform_error", "detail": "lost \\ud800"}',
        headers={**AUTH, "Content-Type": "application/json"},
    )

    assert response.status_code == 400
    assert response.get_json()["field"] == "detail"
    assert refunds() == 0


@pytest.mark.parametrize("action", ["complete", "fail"])
def test_settling_an_unknown_job_is_404(client, customer, action):
    response = call(
        client, "POST", f"/api/v1/jobs/999999/{action}", json={"reason": "platform_error"}
    )

    assert response.status_code == 404
    assert response.get_json()["error"] == "not_found"


def test_reading_a_job(client, customer):
    job_id = create_job(client)

    response = call(client, "GET", f"/api/v1/jobs/{job_id}")

    assert response.status_code == 200
    document = response.get_json()
    assert document["id"] == job_id
    assert document["status"] == "running"
    assert set(document) == DOCUMENTED_JOB_FIELDS - BALANCE_FIELDS


def test_reading_an_unknown_job_is_404(client):
    response = call(client, "GET", "/api/v1/jobs/999999")

    assert response.status_code == 404
    assert response.get_json()["error"] == "not_found"


@pytest.mark.parametrize("job_id", [2**31, 2**63, 10**30], ids=["2^31", "2^63", "10^30"])
@pytest.mark.parametrize("action", ["", "/complete", "/fail"])
def test_job_ids_beyond_any_stored_id_are_404_not_500(client, customer, job_id, action):
    method = "GET" if action == "" else "POST"

    response = client.open(
        f"/api/v1/jobs/{job_id}{action}",
        method=method,
        headers=AUTH,
        json={"reason": "platform_error"},
    )

    assert response.status_code == 404
    assert response.get_json()["error"] == "not_found"


# -- the customer's low-balance alert in the answers ---------------------------------------


def alert_emails(email: str) -> int:
    return count(
        OutboxEmail, OutboxEmail.to_address == email, OutboxEmail.subject.contains("below")
    )


def test_without_an_alert_the_answer_says_so(client, customer):
    document = post_job(client).get_json()

    assert document["balance_after"] == 45
    assert document["low_balance_threshold"] is None
    assert document["balance_below_threshold"] is False


def test_every_answer_that_changes_the_balance_says_where_it_stands_against_the_alert(
    client, customer
):
    alerts.set_alert(customer.id, 46)

    charged = post_job(client)
    repeated = post_job(client)
    completed = complete(client, charged.get_json()["id"])
    returned = fail(client, create_job(client, external_id="platform-2"))

    for answer, balance in [(charged, 45), (repeated, 45), (completed, 45), (returned, 45)]:
        document = answer.get_json()
        assert document["balance_after"] == balance
        assert document["low_balance_threshold"] == 46
        assert document["balance_below_threshold"] is True
    # The failed job's credits came back, but 45 is still below 46: one fall, one e-mail.
    assert alert_emails(customer.email) == 1


def test_a_job_that_leaves_the_balance_on_the_threshold_is_not_below_it(client, customer):
    alerts.set_alert(customer.id, 45)

    document = post_job(client).get_json()

    assert (document["balance_after"], document["balance_below_threshold"]) == (45, False)
    assert alert_emails(customer.email) == 0


def test_the_charge_that_crosses_the_threshold_queues_one_e_mail(client, customer):
    alerts.set_alert(customer.id, 40)

    answers = [post_job(client, external_id=f"crossing-{n}").get_json() for n in range(4)]

    assert [(a["balance_after"], a["balance_below_threshold"]) for a in answers] == [
        (45, False),
        (40, False),
        (35, True),
        (30, True),
    ]
    assert alert_emails(customer.email) == 1


def test_reading_a_balance_with_an_alert(client, customer):
    alerts.set_alert(customer.id, 100)

    response = call(client, "GET", "/api/v1/customers/buyer@example.com/balance")

    assert response.get_json() == {
        "customer_email": "buyer@example.com",
        "balance": 50,
        "low_balance_threshold": 100,
        "balance_below_threshold": True,
    }


def test_the_openapi_document_describes_the_alert_wherever_the_balance_is():
    schemas = OPENAPI_DOCUMENT["components"]["schemas"]

    for schema in ("Job", "Balance"):
        properties = schemas[schema]["properties"]
        assert properties["low_balance_threshold"]["nullable"] is True
        assert properties["balance_below_threshold"]["type"] == "boolean"


def test_reading_a_balance(client, customer):
    create_job(client)

    response = call(client, "GET", "/api/v1/customers/Buyer@Example.com/balance")

    assert response.status_code == 200
    assert response.get_json() == {
        "customer_email": "buyer@example.com",
        "balance": 45,
        "low_balance_threshold": None,
        "balance_below_threshold": False,
    }


@pytest.mark.parametrize(
    "email",
    ["nobody@example.com", "ops@example.com", "closed-1@closed.invalid"],
    ids=["unknown", "staff", "closed"],
)
def test_balance_of_someone_who_is_not_a_customer_is_404(client, email):
    make_staff(email="ops@example.com")
    make_purchase(make_user(email="closed-1@closed.invalid", status="closed"), package="starter")

    response = client.get(f"/api/v1/customers/{email}/balance", headers=AUTH)

    assert response.status_code == 404
    assert response.get_json()["error"] == "not_found"


def _documented_path(rule: str) -> str:
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.removeprefix("/api/v1"))


def test_openapi_document_is_public_and_lists_every_route(app, client):
    response = client.get("/api/v1/openapi.json")

    assert response.status_code == 200
    document = response.get_json()
    assert document == json.loads(json.dumps(OPENAPI_DOCUMENT))
    routes = {
        _documented_path(rule.rule): rule.methods - {"HEAD", "OPTIONS"}
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("jobs_api.") and rule.endpoint != "jobs_api.openapi"
    }
    assert set(document["paths"]) == set(routes)
    for path, methods in routes.items():
        assert set(document["paths"][path]) == {method.lower() for method in methods}, path


def test_api_posts_need_no_csrf_token(app, client, customer):
    assert app.config.get("WTF_CSRF_ENABLED", True)

    created = post_job(client)
    completed = complete(client, created.get_json()["id"])

    assert created.status_code == 201
    assert completed.status_code == 200


def test_balance_for_an_address_with_a_nul_byte_is_refused(client):
    response = client.get("/api/v1/customers/a%00b@example.com/balance", headers=AUTH)

    assert response.status_code == 400
    assert response.get_json()["error"] == "bad_request"


def test_charging_a_job_takes_the_same_statements_however_long_the_history(client, customer):
    def statements_for_one_charge(external_id: str) -> int:
        with QueryCounter(db.engine) as counter:
            assert post_job(client, external_id=external_id, credits=1).status_code == 201
        return counter.count

    first = statements_for_one_charge("first")
    for number in range(30):
        post_job(client, external_id=f"earlier-{number}", credits=1)
    later = statements_for_one_charge("later")

    if db.engine.dialect.name == "postgresql":
        # One call of the database function charge_job does it all.
        assert first == later == 1
    else:
        # The customer locked and the job looked up in one statement; the job written; the
        # lots read; then entry, allocation, lot, balance and day-end balance written. The
        # charge's ledger key is new with its job, so it is not looked up; the answer is
        # made from what the transaction already holds: nothing is read back.
        assert first == later == 8
