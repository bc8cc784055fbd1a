"""Who may do what: every route of the URL map, for every kind of caller.

The expected outcomes are the table in `access.py`; a route added to the portal without a
row there fails `test_matrix_covers_every_route`.
"""

import re

from portal.security import require_staff
from tests.security.access import (
    FRESH_BROWSER,
    MATRIX,
    MAY_SHOW_A_TO_ANYONE,
    call_for,
    fake_event,
    routes,
    send,
)
from tests.security.helpers import (
    ROLES,
    Actor,
    ServerErrors,
    actor_for,
    api_headers,
    signed_webhook,
    status_and_body,
)

# -- the tests ------------------------------------------------------------------------------


def test_matrix_covers_every_route(app):
    in_app = set(routes(app))
    in_matrix = {(endpoint, method) for endpoint, row in MATRIX.items() for method in row}
    assert {endpoint for endpoint, _ in in_app} == set(MATRIX)
    assert in_app - in_matrix == set(), "routes without an expected outcome"
    assert in_matrix - in_app == set(), "matrix rows for routes that do not exist"
    for endpoint, row in MATRIX.items():
        for method, outcomes in row.items():
            assert set(outcomes) == set(ROLES), (endpoint, method)


def test_the_staff_blueprint_is_guarded_as_a_whole(app):
    """The guard runs before every staff view, so a new staff route is guarded unasked."""
    assert require_staff in app.before_request_funcs.get("staff", [])


def test_access_matrix(app, world, actors):
    wrong = []
    seen = 0
    for endpoint, method in routes(app):
        for role in ROLES:
            expected = MATRIX[endpoint][method][role]
            actor = actors[role]
            if (endpoint, method) in FRESH_BROWSER:
                actor = actor_for(app, world, role)
            response = send(actor, method, call_for(endpoint, method, world, actor))
            seen += 1
            problem = expected.problem(response)
            if problem:
                wrong.append(f"{endpoint} {method} as {role}: {problem}")
            if (
                role in ("anonymous", "customer_b", "terminated")
                and endpoint not in MAY_SHOW_A_TO_ANYONE
                and world.customer_a.email.encode() in response.get_data()
            ):
                wrong.append(f"{endpoint} {method} as {role}: shows customer A's e-mail")
    assert seen >= 6 * 60
    assert wrong == [], "\n".join(wrong)


def test_another_customers_ids_look_like_ids_that_do_not_exist(app, world, actors):
    """B naming A's object gets exactly what naming a missing object gives: a plain 404."""
    a = world.a
    ids = {
        "purchase": a.purchase_id,
        "job": a.job_id,
        "request": a.request_id,
        "attachment": a.attachment_id,
        "session": a.pending_session_id,
    }
    missing = dict.fromkeys(ids, 2_000_000) | {"session": "cs_test_missing"}
    b = actors["customer_b"]
    for path in (
        "/purchases/{purchase}",
        "/jobs/{job}",
        "/refunds/{request}",
        "/refunds/attachments/{attachment}",
        "/refunds/new?purchase_id={purchase}",
        "/credits/success?session_id={session}",
    ):
        theirs = b.get(path.format(**ids))
        nothing = b.get(path.format(**missing))
        assert theirs.status_code == nothing.status_code == 404, path
        assert same_page(theirs) == same_page(nothing), path
        assert actors["customer_a"].get(path.format(**ids)).status_code == 200, path


def same_page(response) -> str:
    """A page with what differs on every request (CSRF tokens, error references) blanked."""
    body = response.get_data(as_text=True)
    body = re.sub(r'(csrf[_-]token"[^>]*(?:value|content)=")[^"]+', r"\1", body)
    return re.sub(r"<code>[0-9a-f]{12}</code>", "<code></code>", body)


def test_jobs_api_refuses_wrong_tokens_and_schemes(app, world):
    anyone = Actor(app, "anonymous")
    path = f"/api/v1/jobs/{world.a.job_id}"
    for headers in (
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer test-tokenX"},
        {"Authorization": "Bearer test-toke"},
        {"Authorization": "bearer test-token"},
        {"Authorization": "Basic dGVzdC10b2tlbjo="},
        {"Authorization": "Token test-token"},
        {"Authorization": "Bearer  test-token"},
    ):
        response = anyone.get(path, headers=headers)
        assert response.status_code == 401, headers
        assert response.get_json()["error"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert anyone.get(path, headers=api_headers()).status_code == 200


def test_jobs_api_is_closed_when_no_token_is_configured(app, world, monkeypatch):
    monkeypatch.setitem(app.config, "PORTAL_SERVICE_TOKEN", "")
    anyone = Actor(app, "anonymous")
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer"}):
        assert anyone.get(f"/api/v1/jobs/{world.a.job_id}", headers=headers).status_code == 401


def test_the_webhook_takes_only_a_valid_signature(app, world):

    anyone = Actor(app, "anonymous")
    event = fake_event() | {"id": "evt_signed_ok", "type": "customer.created"}
    good = signed_webhook(anyone, event)
    assert good.status_code == 200, good.get_data(as_text=True)
    tampered = signed_webhook(anyone, event, tamper=True)
    assert tampered.status_code == 400
    wrong_secret = signed_webhook(anyone, event | {"id": "evt_other"}, secret="whsec_wrong")
    assert wrong_secret.status_code == 400
    stale = signed_webhook(anyone, event | {"id": "evt_stale"}, timestamp=1_000_000_000)
    assert stale.status_code == 400


def test_sandbox_pages_answer_404_for_ids_they_do_not_know(app):
    """Public by design, so they must be sturdy: an unknown id is a 404, never a crash."""
    anyone = Actor(app, "anonymous")
    wrong = []
    with ServerErrors() as errors:
        for path, form in (
            ("/sandbox/checkout/cs_unknown", None),
            ("/sandbox/checkout/cs_unknown/pay", {"card": "4242424242424242"}),
            ("/sandbox/checkout/cs_unknown/cancel", {}),
            ("/sandbox/sessions/cs_unknown/settle", {"outcome": "succeeded"}),
            ("/sandbox/refunds/re_unknown/settle", {}),
            ("/sandbox/authenticate/pi_unknown", None),
            ("/sandbox/authenticate/pi_unknown", {"outcome": "complete"}),
        ):
            status, _ = status_and_body(
                lambda path=path, form=form: (
                    anyone.get(path) if form is None else anyone.post(path, form)
                )
            )
            if status != 404:
                wrong.append(f"{path}: {status} {errors.describe() if status >= 500 else ''}")
    assert wrong == [], "\n".join(wrong)
