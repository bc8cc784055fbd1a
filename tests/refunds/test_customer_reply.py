"""The customer answers a question from staff: the reply form, the timeline and the clock."""

from datetime import timedelta

import pytest
from sqlalchemy import update

from portal.db import db
from portal.errors import Conflict
from portal.refunds import services
from portal.refunds.eligibility import RequestReason
from portal.refunds.models import RefundRequest, RequestStatus
from portal.timeutil import utcnow
from tests.factories import login_as, make_purchase, make_user
from tests.refunds.helpers import DETAILS, csrf_of, events_of, has_form_field, text

ANSWER = "The job id is in the screenshot: it failed at 14:02 with 'worker lost'."


@pytest.fixture
def moments():
    """When the request was filed, when staff paused the clock, when the customer answers."""
    filed = utcnow() - timedelta(days=4)
    paused = filed + timedelta(days=1, hours=2)
    answered = paused + timedelta(days=1, hours=3, minutes=7, seconds=11, microseconds=5)
    return filed, paused, answered


@pytest.fixture
def filed_request(customer, moments) -> RefundRequest:
    """An open request of `customer`, filed through the service."""
    filed, _, _ = moments
    purchase = make_purchase(customer, "pro", paid_at=filed - timedelta(days=1))
    return services.file_request(
        customer, purchase, RequestReason.OTHER, DETAILS, "", None, False, [], filed
    )


@pytest.fixture
def waiting_request(filed_request, moments) -> RefundRequest:
    """The request with a question from staff, the clock paused since `paused`."""
    _, paused, _ = moments
    filed_request.status = RequestStatus.WAITING_ON_CUSTOMER
    filed_request.clock_paused_at = paused
    services.add_event(
        filed_request, "information_requested", "Which job failed, please?", now=paused
    )
    db.session.commit()
    return filed_request


def _state(request_id: int) -> tuple:
    db.session.expire_all()
    found = db.session.get(RefundRequest, request_id)
    return found.status, found.due_at, found.clock_paused_at, len(events_of(request_id))


def _reply(client, request_id: int, body: str = ANSWER, with_csrf: bool = True):
    path = f"/refunds/{request_id}"
    data = {"body": body}
    if with_csrf:
        data["csrf_token"] = csrf_of(client.get(path))
    return client.post(path, data=data)


def test_a_request_waiting_on_the_customer_shows_the_question_and_the_reply_form(
    client, waiting_request
):
    page = client.get(f"/refunds/{waiting_request.id}")
    assert page.status_code == 200
    words = text(page)
    assert "We need a little more information" in words
    assert "Which job failed, please?" in words
    assert has_form_field(page, "body")
    assert "Send my answer" in words


def test_replying_records_the_message_resumes_review_and_moves_the_deadline_by_the_pause(
    client, customer, waiting_request, moments, monkeypatch
):
    _, paused, answered = moments
    monkeypatch.setattr("portal.refunds.views.utcnow", lambda: answered)
    due_before = waiting_request.due_at
    events_before = len(events_of(waiting_request.id))

    response = _reply(client, waiting_request.id)
    assert response.status_code == 303
    assert response.headers["Location"].endswith(f"/refunds/{waiting_request.id}")

    status, due_at, clock_paused_at, events = _state(waiting_request.id)
    assert status == RequestStatus.IN_REVIEW
    assert clock_paused_at is None
    assert due_at - due_before == answered - paused
    assert due_at == due_before + timedelta(days=1, hours=3, minutes=7, seconds=11, microseconds=5)
    assert events == events_before + 1
    message = events_of(waiting_request.id)[-1]
    assert message.kind == "customer_message"
    assert message.body == ANSWER
    assert message.actor_id == customer.id
    assert message.visible_to_customer
    assert message.created_at == answered

    page = client.get(response.headers["Location"])
    words = text(page)
    assert "Thank you, your answer was sent to our team." in words
    assert "Customer message \u2014 " + ANSWER in words
    assert not has_form_field(page, "body")


@pytest.mark.parametrize(
    "status", [RequestStatus.OPEN, RequestStatus.IN_REVIEW, RequestStatus.CLOSED]
)
def test_replying_when_no_answer_is_awaited_changes_nothing_and_says_so(
    client, filed_request, status
):
    filed_request.status = status
    db.session.commit()
    page = client.get(f"/refunds/{filed_request.id}")
    assert not has_form_field(page, "body")
    before = _state(filed_request.id)

    response = client.post(
        f"/refunds/{filed_request.id}", data={"body": ANSWER, "csrf_token": csrf_of(page)}
    )
    assert response.status_code == 303
    assert _state(filed_request.id) == before
    assert "customer_message" not in [event.kind for event in events_of(filed_request.id)]
    assert "This request is not waiting for your answer." in text(
        client.get(response.headers["Location"])
    )


def test_a_reply_without_csrf_token_is_refused(client, waiting_request):
    before = _state(waiting_request.id)
    response = _reply(client, waiting_request.id, with_csrf=False)
    assert response.status_code == 400
    assert _state(waiting_request.id) == before


@pytest.mark.parametrize("body", ["", " \r\n   \t "], ids=["empty", "only whitespace"])
def test_an_empty_reply_is_refused_with_a_field_error(client, waiting_request, body):
    before = _state(waiting_request.id)
    response = _reply(client, waiting_request.id, body=body)
    assert response.status_code == 400
    assert "Write your answer." in text(response)
    assert _state(waiting_request.id) == before


def test_another_customer_can_neither_see_nor_answer_the_request(app, waiting_request):
    stranger = app.test_client()
    login_as(stranger, make_user())
    before = _state(waiting_request.id)
    assert stranger.get(f"/refunds/{waiting_request.id}").status_code == 404
    token = csrf_of(stranger.get("/refunds/"))
    response = stranger.post(
        f"/refunds/{waiting_request.id}", data={"body": ANSWER, "csrf_token": token}
    )
    assert response.status_code == 404
    assert _state(waiting_request.id) == before


def test_a_request_closed_by_staff_after_it_was_loaded_is_not_reopened_by_the_reply(
    customer, waiting_request, moments
):
    """The view loads the request, then the service locks it: the lock must re-read it."""
    _, _, answered = moments
    loaded = db.session.get(RefundRequest, waiting_request.id)
    assert loaded.status == RequestStatus.WAITING_ON_CUSTOMER
    # Staff close it meanwhile, in their own transaction.
    with db.engine.begin() as connection:
        connection.execute(
            update(RefundRequest)
            .where(RefundRequest.id == waiting_request.id)
            .values(status=RequestStatus.CLOSED.value, clock_paused_at=None)
        )

    with pytest.raises(Conflict):
        services.customer_reply(customer, loaded, ANSWER, answered)
    db.session.rollback()
    status, _, _, _ = _state(waiting_request.id)
    assert status == RequestStatus.CLOSED
    assert "customer_message" not in [event.kind for event in events_of(waiting_request.id)]
