import pytest
from flask import abort

from tests.factories import login_as, make_staff, make_user


def test_unknown_page_is_a_friendly_404(client):
    response = client.get("/no/such/page")
    assert response.status_code == 404
    assert b"Page not found" in response.data


def test_server_error_page_leaks_nothing_and_shows_a_reference(make_app):
    app = make_app()

    @app.get("/__boom")
    def boom():
        raise RuntimeError("secret database password in traceback")

    response = app.test_client().get("/__boom")
    assert response.status_code == 500
    body = response.get_data(as_text=True)
    assert "secret database password" not in body and "Traceback" not in body
    assert "Reference:" in body


@pytest.mark.parametrize("status", [400, 403, 429])
def test_error_pages_render_for_each_status(make_app, status):
    app = make_app()
    app.add_url_rule(f"/__abort{status}", f"abort{status}", lambda: abort(status))
    response = app.test_client().get(f"/__abort{status}")
    assert response.status_code == status
    assert f"Error {status}".encode() in response.data


def test_staff_pages_refuse_customers_with_403(client):
    login_as(client, make_user())
    response = client.get("/staff/")
    assert response.status_code == 403
    assert b"do not have access" in response.data


def test_staff_pages_send_anonymous_users_to_log_in(client):
    response = client.get("/staff/")
    assert response.status_code == 302
    assert "/login?next=" in response.headers["Location"]


def test_staff_pages_open_for_staff(client):
    login_as(client, make_staff())
    assert client.get("/staff/").status_code == 200


@pytest.mark.parametrize("path", ["/dashboard", "/jobs", "/refunds/", "/credits/buy", "/account"])
def test_customer_pages_need_log_in(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert "/login" in response.headers["Location"]


@pytest.mark.parametrize(
    "path",
    [
        "/history?before=99999999999",
        "/history?after=-3&per_page=10000000000",
        "/jobs?before=1e9",
        "/purchases/99999999999",
        "/jobs/2147483648",
        "/refunds/new?purchase_id=99999999999",
    ],
)
def test_out_of_range_ids_and_cursors_never_reach_the_database(client, path):
    login_as(client, make_user())
    assert client.get(path).status_code in (200, 404)


def test_nul_bytes_in_forms_are_refused_before_any_query(client):
    from tests.factories import csrf_token

    token = csrf_token(client, "/login")
    response = client.post(
        "/login", data={"email": "a\x00b@example.com", "password": "x", "csrf_token": token}
    )
    assert response.status_code == 400
