"""Filing a refund request: the form, the review of the pre-check, and what gets stored."""

import re
from datetime import timedelta

import pytest
from sqlalchemy.exc import IntegrityError

from portal.billing.models import PurchaseStatus
from portal.db import db
from portal.errors import Conflict
from portal.jobs import services as jobs
from portal.ledger.models import EntryKind
from portal.refunds import services
from portal.refunds.eligibility import RequestReason, Verdict, refund_deadline
from portal.refunds.models import Attachment, RefundRequest, RequestStatus
from portal.security import CONTENT_SECURITY_POLICY
from portal.timeutil import add_business_days, utcnow
from tests.factories import login_as, make_purchase, make_staff, make_user
from tests.refunds.helpers import (
    DETAILS,
    JPEG_BYTES,
    PNG_BYTES,
    balance,
    count,
    csrf_of,
    emails_to,
    events_of,
    fail_without_restoring,
    file_through_form,
    form_data,
    has_form_field,
    ledger_entries,
    new_form_path,
    nothing_filed,
    pay_at_sandbox,
    post_form,
    refund_requests,
    spend,
    stored_files,
    text,
)


@pytest.fixture
def pro_88_unused(customer):
    """A Pro purchase of `customer` with 88 of its 300 credits unused."""
    purchase = make_purchase(customer, "pro")
    spend(customer, 212)
    return purchase


def _open_form(client, purchase_id=None, job_id=None):
    page = client.get(new_form_path(purchase_id, job_id))
    assert page.status_code == 200, text(page)
    return page, csrf_of(page)


def _deadline(purchase) -> str:
    return refund_deadline(purchase.paid_at).strftime("%b %-d, %Y")


# -- the happy path: form, review, submit ------------------------------------------------


def test_new_shows_the_form_for_the_customers_purchase(client, pro_88_unused):
    page, _ = _open_form(client, pro_88_unused.id)
    words = text(page)
    assert "Request a refund" in words
    assert "Pro purchase" in words
    assert "88 of 300 credits unused" in words
    assert f"Requests are accepted until {_deadline(pro_88_unused)}" in words
    for field in ("reason", "details", "transaction_ids", "money_back", "purchase_id"):
        assert has_form_field(page, field), field
    assert f'name="purchase_id" type="hidden" value="{pro_88_unused.id}"' in page.get_data(
        as_text=True
    )


def test_review_shows_every_rule_the_verdict_the_estimate_and_the_timeline(
    client, customer, pro_88_unused
):
    _, token = _open_form(client, pro_88_unused.id)
    review = post_form(client, form_data(token, pro_88_unused.id, "review"))
    assert review.status_code == 200, text(review)
    words = text(review)

    expected = services.preview(customer, pro_88_unused, RequestReason.OTHER, None, False, utcnow())
    assert len(expected.rules) == 9
    for result in expected.rules:
        assert result.title in words
        assert result.explanation in words, result.code
    assert f"requests are accepted until {_deadline(pro_88_unused)}" in words
    assert "88 of the 300 credits are unused, worth $5.86" in words
    assert "Needs a closer look" in words
    assert "Estimated refund: $5.86 for 88 unused credits" in words
    assert "We answer within 3\u20135 business days" in words
    assert "5\u201310 business days after approval" in words
    assert "Submit my request" in words
    assert "Submit anyway" not in words
    assert nothing_filed()


def test_submit_files_the_request_with_its_precheck_deadline_timeline_and_email(
    client, customer, pro_88_unused
):
    before = utcnow()
    response = file_through_form(client, pro_88_unused.id)
    after = utcnow()

    assert response.status_code == 303, text(response)
    [filed] = refund_requests()
    assert response.headers["Location"].endswith(f"/refunds/{filed.id}")
    assert re.fullmatch(r"RR-\d{6}", filed.reference)
    assert filed.reference == f"RR-{filed.id:06d}"
    assert filed.user_id == customer.id
    assert filed.purchase_id == pro_88_unused.id
    assert filed.reason == RequestReason.OTHER
    assert filed.details == DETAILS
    assert filed.status == RequestStatus.OPEN
    assert filed.verdict == Verdict.NEEDS_REVIEW
    assert filed.precheck["verdict"] == "needs_review"
    assert [rule["code"] for rule in filed.precheck["rules"]][0] == "window"
    assert len(filed.precheck["rules"]) == 9
    assert filed.recommended_cents == 586
    assert filed.recommended_credits == 88
    assert before <= filed.created_at <= after
    assert filed.due_at == add_business_days(filed.created_at, 5)
    assert filed.decided_at is None

    assert [event.kind for event in events_of(filed.id)] == ["filed", "precheck"]
    [email] = emails_to(customer.email)
    assert email.subject == f"Refund request {filed.reference} received"
    assert "3-5 business days" in email.body_text
    assert "5-10 business days" in email.body_text

    shown = client.get(response.headers["Location"])
    assert shown.status_code == 200
    words = text(shown)
    assert f"Refund request {filed.reference}" in words
    assert f"Your request {filed.reference} is filed." in words
    assert "Filed \u2014 Request filed: something else." in words
    assert "Pre-check \u2014" in words
    assert "88 of the 300 credits are unused, worth $5.86" in words
    assert "Estimated refund: $5.86" in words

    listing = client.get("/refunds/")
    assert listing.status_code == 200
    assert filed.reference in text(listing)
    assert f'href="/refunds/{filed.id}"' in listing.get_data(as_text=True)


def test_a_purchase_outside_the_window_can_still_be_filed_as_likely_ineligible(client, customer):
    purchase = make_purchase(customer, "pro", paid_at=utcnow() - timedelta(days=40))
    _, token = _open_form(client, purchase.id)
    review = post_form(client, form_data(token, purchase.id, "review"))
    assert review.status_code == 200
    words = text(review)
    assert "Likely not eligible" in words
    assert "This request comes after that date." in words
    assert "Submit anyway" in words
    assert "Submit my request" not in words

    response = post_form(client, form_data(token, purchase.id, "submit"))
    assert response.status_code == 303, text(response)
    [filed] = refund_requests()
    assert filed.status == RequestStatus.OPEN
    assert filed.verdict == Verdict.LIKELY_INELIGIBLE
    assert filed.recommended_cents == 0


# -- what the portal settles by itself ----------------------------------------------------


def test_credits_that_never_arrived_are_added_once(client, customer, monkeypatch):
    purchase = make_purchase(customer, "pro", credited=False)
    assert purchase.status == PurchaseStatus.PAID
    pay_at_sandbox(purchase, monkeypatch)
    assert balance(customer.id) == 0

    response = file_through_form(client, purchase.id, reason=RequestReason.CREDITS_NOT_ADDED.value)
    assert response.status_code == 303, text(response)
    [first] = refund_requests()
    assert first.status == RequestStatus.RESOLVED_AUTOMATICALLY
    assert first.verdict == Verdict.RESOLVED_AUTOMATICALLY
    assert first.decided_at is not None
    assert balance(customer.id) == 300
    assert len(ledger_entries(customer.id, EntryKind.PURCHASE_CREDIT)) == 1
    assert "auto_resolved" in [event.kind for event in events_of(first.id)]
    assert "The 300 missing credits were added" in text(client.get(f"/refunds/{first.id}"))

    again = file_through_form(client, purchase.id, reason=RequestReason.CREDITS_NOT_ADDED.value)
    assert again.status_code == 303, text(again)
    first_again, second = refund_requests()
    assert second.status == RequestStatus.OPEN
    assert second.verdict != Verdict.RESOLVED_AUTOMATICALLY
    assert balance(customer.id) == 300
    assert len(ledger_entries(customer.id, EntryKind.PURCHASE_CREDIT)) == 1


def test_a_platform_failed_job_not_yet_restored_is_restored_once(client, customer):
    make_purchase(customer, "pro")
    job = fail_without_restoring(spend(customer, 12))
    assert balance(customer.id) == 288

    page, _ = _open_form(client, job_id=job.id)
    assert re.search(
        r'<option (?=[^>]*selected)(?=[^>]*value="job_failed")', page.get_data(as_text=True)
    )
    response = file_through_form(client, job_id=job.id, reason=RequestReason.JOB_FAILED.value)
    assert response.status_code == 303, text(response)
    [first] = refund_requests()
    assert first.job_id == job.id
    assert first.status == RequestStatus.RESOLVED_AUTOMATICALLY
    assert balance(customer.id) == 300
    assert len(ledger_entries(customer.id, EntryKind.JOB_REFUND)) == 1
    assert "auto_resolved" in [event.kind for event in events_of(first.id)]

    again = file_through_form(client, job_id=job.id, reason=RequestReason.JOB_FAILED.value)
    assert again.status_code == 303, text(again)
    _, second = refund_requests()
    assert second.status == RequestStatus.OPEN
    assert "already returned to your balance on" in str(second.precheck["rules"])
    assert balance(customer.id) == 300
    assert len(ledger_entries(customer.id, EntryKind.JOB_REFUND)) == 1


def test_credits_no_longer_needed_are_filed_with_the_policys_word_that_purchases_are_final(
    client, customer, pro_88_unused
):
    page, token = _open_form(client, pro_88_unused.id)
    assert '<option value="no_longer_needed">I no longer need these credits</option>' in (
        page.get_data(as_text=True)
    )

    review = post_form(
        client, form_data(token, pro_88_unused.id, "review", reason="no_longer_needed")
    )
    assert review.status_code == 200, text(review)
    words = text(review)
    assert "Likely not eligible" in words
    assert (
        "All credit purchases on AI Image Studio are considered final once the credits have "
        "been added to your account. The policy does not refund credits you no longer need."
    ) in words
    assert "Estimated refund" not in words
    assert "Submit anyway" in words

    response = post_form(
        client, form_data(token, pro_88_unused.id, "submit", reason="no_longer_needed")
    )
    assert response.status_code == 303, text(response)
    [filed] = refund_requests()
    assert filed.reason == RequestReason.NO_LONGER_NEEDED
    assert filed.verdict == Verdict.LIKELY_INELIGIBLE
    assert filed.recommended_cents == 0
    assert events_of(filed.id)[0].body == "Request filed: credits no longer needed."
    assert "I no longer need these credits" in text(client.get(f"/refunds/{filed.id}"))


# -- what cannot be filed, or only once ------------------------------------------------------


def test_another_customers_purchase_is_not_found(client, customer):
    stranger = make_purchase(make_user(), "pro")
    own = make_purchase(customer, "pro")
    assert client.get(new_form_path(stranger.id)).status_code == 404
    _, token = _open_form(client, own.id)
    for step in ("review", "submit"):
        assert post_form(client, form_data(token, stranger.id, step)).status_code == 404
    assert nothing_filed()


def test_a_purchase_with_an_open_request_leads_to_that_request(client, pro_88_unused):
    assert file_through_form(client, pro_88_unused.id).status_code == 303
    [filed] = refund_requests()

    response = client.get(new_form_path(pro_88_unused.id))
    assert response.status_code == 303
    assert response.headers["Location"].endswith(f"/refunds/{filed.id}")
    shown = client.get(response.headers["Location"])
    assert f"You already have an open request for this purchase ({filed.reference})" in text(shown)
    assert len(refund_requests()) == 1


def test_submitting_twice_files_one_request(client, pro_88_unused):
    _, token = _open_form(client, pro_88_unused.id)
    data = form_data(token, pro_88_unused.id, "submit")
    first = post_form(client, data)
    second = post_form(client, data)
    assert first.status_code == second.status_code == 303
    [filed] = refund_requests()
    assert first.headers["Location"] == second.headers["Location"]
    assert first.headers["Location"].endswith(f"/refunds/{filed.id}")
    assert len(events_of(filed.id)) == 2


def _request_row(user, purchase, status=RequestStatus.OPEN) -> RefundRequest:
    now = utcnow()
    return RefundRequest(
        user_id=user.id,
        purchase_id=purchase.id,
        reason=RequestReason.OTHER,
        details=DETAILS,
        status=status,
        verdict=Verdict.NEEDS_REVIEW,
        precheck={"verdict": "needs_review", "rules": []},
        due_at=add_business_days(now, 5),
        created_at=now,
    )


def test_the_database_refuses_a_second_open_request_for_a_purchase(app, customer):
    purchase = make_purchase(customer, "pro")
    db.session.add(_request_row(customer, purchase))
    db.session.commit()

    db.session.add(_request_row(customer, purchase, RequestStatus.WAITING_ON_CUSTOMER))
    with pytest.raises(IntegrityError):
        db.session.commit()
    db.session.rollback()

    # Closed requests do not count: a new open one may follow them.
    db.session.add(_request_row(customer, purchase, RequestStatus.CLOSED))
    db.session.commit()
    assert count(RefundRequest, RefundRequest.purchase_id == purchase.id) == 2


@pytest.mark.parametrize("step", ["review", "submit"])
def test_a_job_that_succeeded_is_refused_with_a_clear_message(client, customer, step):
    purchase = make_purchase(customer, "pro")
    job = spend(customer, 12)
    jobs.complete_job(job.id)
    _, token = _open_form(client, job_id=job.id)

    response = post_form(
        client,
        form_data(token, purchase.id, step, reason="job_failed", job_id=job.id),
    )
    assert response.status_code == 400
    assert f"Job {job.id} succeeded; only failed jobs can be refunded." in text(response)
    assert nothing_filed()
    assert balance(customer.id) == 288


@pytest.mark.parametrize(
    ("details", "message"),
    [
        pytest.param("", "Tell us in a few words what happened.", id="empty"),
        pytest.param(" " * 20, "Tell us in a few words what happened.", id="only spaces"),
        pytest.param("x" * 10_000, "Write between 10 and 5,000 characters.", id="10,000 chars"),
    ],
)
@pytest.mark.parametrize("step", ["review", "submit"])
def test_details_must_say_something_and_not_too_much(client, pro_88_unused, details, message, step):
    _, token = _open_form(client, pro_88_unused.id)
    response = post_form(client, form_data(token, pro_88_unused.id, step, details=details))
    assert response.status_code == 400, text(response)
    assert 'class="field-error" id="details-error"' in response.get_data(as_text=True)
    assert message in text(response)
    assert nothing_filed()


@pytest.mark.parametrize("step", ["review", "submit"])
def test_a_forged_reason_is_refused(client, pro_88_unused, step):
    _, token = _open_form(client, pro_88_unused.id)
    response = post_form(client, form_data(token, pro_88_unused.id, step, reason="refund_me_now"))
    assert response.status_code == 400
    assert 'class="field-error" id="reason-error"' in response.get_data(as_text=True)
    assert nothing_filed()


@pytest.mark.parametrize(
    "status",
    [
        pytest.param({"status": PurchaseStatus.DISPUTED}, id="disputed"),
        pytest.param(
            {"status": PurchaseStatus.REFUNDED, "refunded_cents": 2000}, id="fully refunded"
        ),
    ],
)
def test_a_disputed_or_fully_refunded_purchase_explains_why_and_shows_no_form(
    client, customer, status
):
    purchase = make_purchase(customer, "pro", **status)
    page = client.get(new_form_path(purchase.id))
    assert page.status_code == 409
    words = text(page)
    assert "A refund cannot be requested here" in words
    assert ("disputed with your bank" in words) or ("already been refunded in full" in words)
    assert not has_form_field(page, "details")
    assert not has_form_field(page, "reason")

    own = make_purchase(customer, "basic")
    _, token = _open_form(client, own.id)
    response = post_form(client, form_data(token, purchase.id, "submit"))
    assert response.status_code == 409
    assert nothing_filed()


# -- screenshots -------------------------------------------------------------------------------


def test_png_and_jpeg_screenshots_are_stored_and_shown_only_to_owner_and_staff(
    app, client, customer, pro_88_unused
):
    response = file_through_form(
        client,
        pro_88_unused.id,
        files=[(PNG_BYTES, "error screen.png"), (JPEG_BYTES, "receipt.jpg")],
    )
    assert response.status_code == 303, text(response)
    [filed] = refund_requests()
    attachments = sorted(filed.attachments, key=lambda attachment: attachment.filename)
    assert [(a.filename, a.content_type, a.size_bytes) for a in attachments] == [
        ("error screen.png", "image/png", len(PNG_BYTES)),
        ("receipt.jpg", "image/jpeg", len(JPEG_BYTES)),
    ]
    files = stored_files()
    assert [file.key for file in files] == sorted(a.storage_key for a in attachments)
    assert {(file.content, file.content_type) for file in files} == {
        (PNG_BYTES, "image/png"),
        (JPEG_BYTES, "image/jpeg"),
    }

    shown = text(client.get(f"/refunds/{filed.id}"))
    assert "error screen.png" in shown
    assert "receipt.jpg" in shown

    for attachment, content in zip(attachments, (PNG_BYTES, JPEG_BYTES), strict=True):
        path = f"/refunds/attachments/{attachment.id}"
        served = client.get(path)
        assert served.status_code == 200
        assert served.mimetype == attachment.content_type
        assert served.data == content

        stranger = app.test_client()
        login_as(stranger, make_user())
        assert stranger.get(path).status_code == 404

        staff = app.test_client()
        login_as(staff, make_staff())
        from_staff = staff.get(path)
        assert from_staff.status_code == 200
        assert from_staff.mimetype == attachment.content_type


def test_a_screenshot_of_exactly_5_mb_is_accepted(client, pro_88_unused):
    content = PNG_BYTES + b"\x00" * (5 * 1024 * 1024 - len(PNG_BYTES))
    response = file_through_form(client, pro_88_unused.id, files=[(content, "big.png")])
    assert response.status_code == 303, text(response)
    assert count(Attachment) == 1
    assert [len(file.content) for file in stored_files()] == [5 * 1024 * 1024]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        pytest.param(
            [(b"just some text, honestly a picture", "screenshot.png")],
            "screenshot.png is not a PNG or JPEG image.",
            id="text renamed .png",
        ),
        pytest.param(
            [(PNG_BYTES, f"shot{number}.png") for number in range(4)],
            "Attach at most 3 screenshots.",
            id="four files",
        ),
        pytest.param(
            [(PNG_BYTES, "ok.png"), (PNG_BYTES + b"\x00" * (5 * 1024 * 1024), "huge.png")],
            "huge.png is larger than 5 MB.",
            id="over 5 MB",
        ),
    ],
)
def test_refused_screenshots_store_nothing(client, pro_88_unused, files, message):
    _, token = _open_form(client, pro_88_unused.id)
    response = post_form(client, form_data(token, pro_88_unused.id, "submit"), files)
    assert response.status_code == 400, text(response)
    assert message in text(response)
    assert nothing_filed()
    assert emails_to(pro_88_unused.user.email) == []


# -- the facts the service gathers from the database ----------------------------------------


def _incident(started_at, ended_at):
    from portal.incidents.models import Incident

    db.session.add(Incident(title="Render farm down", started_at=started_at, ended_at=ended_at))
    db.session.commit()


def test_the_service_sees_a_duplicate_payment_9_minutes_earlier(customer):
    paid = utcnow() - timedelta(days=2)
    first = make_purchase(customer, "pro", paid_at=paid - timedelta(minutes=9))
    make_purchase(customer, "basic", paid_at=paid - timedelta(minutes=2))
    later = make_purchase(customer, "pro", paid_at=paid)
    check = services.preview(customer, later, RequestReason.CHARGED_TWICE, None, False, utcnow())
    assert check.verdict == Verdict.LIKELY_ELIGIBLE
    assert check.stripe_reason == "duplicate"
    assert check.recommended_cents == 2000
    assert check.recommended_credits == 300
    assert f"(purchase {first.id}) and none of this purchase's 300 credits" in (
        check.rules[3].explanation
    )


def test_asked_on_the_first_payment_the_service_names_the_untouched_later_one(customer):
    paid = utcnow() - timedelta(days=2)
    first = make_purchase(customer, "pro", paid_at=paid)
    later = make_purchase(customer, "pro", paid_at=paid + timedelta(minutes=3))
    spend(customer, 40)  # drawn from the first purchase: FIFO
    check = services.preview(customer, first, RequestReason.CHARGED_TWICE, None, False, utcnow())
    assert check.verdict == Verdict.NEEDS_REVIEW
    assert check.recommended_cents == 0
    assert f"The duplicate is the later payment, not this one: purchase {later.id}," in (
        check.rules[3].explanation
    )


def test_the_review_step_tells_which_payment_is_the_duplicate(client, customer):
    paid = utcnow() - timedelta(days=2)
    first = make_purchase(customer, "pro", paid_at=paid)
    later = make_purchase(customer, "pro", paid_at=paid + timedelta(minutes=3))
    spend(customer, 40)
    reason = RequestReason.CHARGED_TWICE.value

    _, token = _open_form(client, first.id)
    on_first = text(post_form(client, form_data(token, first.id, "review", reason=reason)))
    assert f"The duplicate is the later payment, not this one: purchase {later.id}" in on_first
    assert "ask for the refund on that purchase, and it is refunded in full" in on_first
    assert "Estimated refund" not in on_first

    _, token = _open_form(client, later.id)
    on_later = text(post_form(client, form_data(token, later.id, "review", reason=reason)))
    assert "this payment is the duplicate, and it is refunded in full" in on_later
    assert "Estimated refund: $20.00 for 300 unused credits" in on_later
    assert nothing_filed()


def test_the_review_step_says_an_outage_must_last_more_than_48_hours(client, customer):
    purchase = make_purchase(customer, "pro", paid_at=utcnow() - timedelta(days=5))
    _incident(purchase.paid_at + timedelta(hours=5), purchase.paid_at + timedelta(hours=53))
    _, token = _open_form(client, purchase.id)
    reason = RequestReason.SERVICE_UNAVAILABLE.value
    words = text(post_form(client, form_data(token, purchase.id, "review", reason=reason)))
    assert "Downtime of more than 48 consecutive hours" in words
    assert (
        "\u201cRender farm down\u201d overlapped the time you held unused credits from this "
        "purchase by 48 hours; the policy needs more than 48 consecutive hours." in words
    )
    assert "Needs a closer look" in words


def test_a_second_purchase_whose_credits_were_used_is_no_duplicate_in_the_service(customer):
    paid = utcnow() - timedelta(days=2)
    first = make_purchase(customer, "pro", paid_at=paid)
    later = make_purchase(customer, "pro", paid_at=paid + timedelta(minutes=3))
    spend(customer, 350)  # all 300 of the first, then 50 of the second
    for purchase, words in (
        (later, "but 50 of this purchase's 300 credits have been used"),
        (first, f"again 3 minutes later (purchase {later.id}) and used its credits"),
    ):
        check = services.preview(
            customer, purchase, RequestReason.CHARGED_TWICE, None, False, utcnow()
        )
        assert words in check.rules[3].explanation
        assert check.stripe_reason == "requested_by_customer"
        assert check.verdict != Verdict.LIKELY_ELIGIBLE


@pytest.mark.parametrize(
    ("start_hours", "length_hours", "spend_at_hours", "verdict", "cents"),
    [
        pytest.param(5, 48 + 1 / 60, None, Verdict.LIKELY_ELIGIBLE, 586, id="48h01m while unused"),
        pytest.param(5, 48, None, Verdict.NEEDS_REVIEW, 586, id="exactly 48h is not enough"),
        pytest.param(5, 47.99, None, Verdict.NEEDS_REVIEW, 586, id="just under 48h"),
        pytest.param(-60, 50, None, Verdict.NEEDS_REVIEW, 586, id="ended before credited"),
        pytest.param(-56, 60, None, Verdict.NEEDS_REVIEW, 586, id="60h, only 4h after credited"),
        pytest.param(20, 60, 24, Verdict.LIKELY_INELIGIBLE, 0, id="60h, used up 4h in"),
        pytest.param(30, 72, 24, Verdict.LIKELY_INELIGIBLE, 0, id="after all were used"),
        pytest.param(30, None, None, Verdict.LIKELY_ELIGIBLE, 586, id="ongoing since"),
    ],
)
def test_the_service_weighs_incidents_against_when_the_credits_were_held(
    customer, start_hours, length_hours, spend_at_hours, verdict, cents
):
    credited = utcnow() - timedelta(days=5)
    purchase = make_purchase(customer, "pro", paid_at=credited)
    if spend_at_hours is None:
        spend(customer, 212)
    else:
        jobs.charge_job(
            "all-of-it",
            customer.email,
            "upscale",
            300,
            at=credited + timedelta(hours=spend_at_hours),
        )
    started = credited + timedelta(hours=start_hours)
    ended = None if length_hours is None else started + timedelta(hours=length_hours)
    _incident(started, ended)

    check = services.preview(
        customer, purchase, RequestReason.SERVICE_UNAVAILABLE, None, False, utcnow()
    )
    assert check.verdict == verdict
    assert check.recommended_cents == cents


def test_money_back_instead_of_missing_credits_files_a_full_refund_request(client, customer):
    purchase = make_purchase(customer, "pro", credited=False)
    response = file_through_form(
        client, purchase.id, reason=RequestReason.CREDITS_NOT_ADDED.value, money_back=True
    )
    assert response.status_code == 303, text(response)
    [filed] = refund_requests()
    assert filed.status == RequestStatus.OPEN
    assert filed.verdict == Verdict.LIKELY_ELIGIBLE
    assert filed.recommended_cents == 2000
    assert balance(customer.id) == 0
    assert ledger_entries(customer.id, EntryKind.PURCHASE_CREDIT) == []


def test_missing_credits_the_payment_provider_cannot_confirm_go_to_staff(client, customer):
    # The factory's made-up session id is unknown to the sandbox: nothing can be credited.
    purchase = make_purchase(customer, "pro", credited=False)
    response = file_through_form(client, purchase.id, reason=RequestReason.CREDITS_NOT_ADDED.value)
    assert response.status_code == 303, text(response)
    [filed] = refund_requests()
    assert filed.status == RequestStatus.OPEN
    assert filed.verdict == Verdict.NEEDS_REVIEW
    assert filed.decided_at is None
    assert balance(customer.id) == 0
    assert "auto_resolved" not in [event.kind for event in events_of(filed.id)]


def test_a_second_open_request_filed_past_the_checks_is_a_conflict_and_stores_nothing(
    customer, pro_88_unused
):
    def file(uploads):
        return services.file_request(
            customer,
            pro_88_unused,
            RequestReason.OTHER,
            DETAILS,
            "",
            None,
            False,
            uploads,
            utcnow(),
        )

    first = file([])
    with pytest.raises(Conflict) as refused:
        file([services.Upload("shot.png", PNG_BYTES)])
    assert refused.value.existing_id == first.id
    assert [request.id for request in refund_requests()] == [first.id]
    assert count(Attachment) == 0
    assert stored_files() == []


@pytest.mark.parametrize(
    ("sent_name", "content", "kept_name", "disposition"),
    [
        pytest.param("shot\x00.png", PNG_BYTES, "shot.png", "inline; filename=shot.png", id="NUL"),
        pytest.param(
            "a\x01b\x1bc\x7fd\x9f.jpg",
            JPEG_BYTES,
            "abcd.jpg",
            "inline; filename=abcd.jpg",
            id="control characters",
        ),
        pytest.param(
            "tab\tand  spaces.png",
            PNG_BYTES,
            "tab and spaces.png",
            'inline; filename="tab and spaces.png"',
            id="whitespace",
        ),
        pytest.param(
            "../../etc/passwd",
            PNG_BYTES,
            "passwd.png",
            "inline; filename=passwd.png",
            id="a path, no extension",
        ),
        pytest.param(
            "évidence ✓.jpeg",
            JPEG_BYTES,
            "évidence ✓.jpeg",
            "inline; filename=\"evidence .jpeg\"; filename*=UTF-8''%C3%A9vidence%20%E2%9C%93.jpeg",
            id="not ASCII",
        ),
        pytest.param(
            "report.html", PNG_BYTES, "report.html.png", None, id="another type's extension"
        ),
        pytest.param("\x00\x01\u202e", JPEG_BYTES, "screenshot.jpg", None, id="nothing left"),
        pytest.param("x" * 300 + ".png", PNG_BYTES, "x" * 96 + ".png", None, id="too long"),
    ],
)
def test_a_screenshots_name_is_cleaned_when_it_is_accepted(
    client, pro_88_unused, sent_name, content, kept_name, disposition
):
    response = file_through_form(client, pro_88_unused.id, files=[(content, sent_name)])
    assert response.status_code == 303, text(response)
    [attachment] = refund_requests()[0].attachments
    assert attachment.filename == kept_name

    served = client.get(f"/refunds/attachments/{attachment.id}")
    assert served.status_code == 200
    assert served.data == content
    header = served.headers["Content-Disposition"]
    assert header.isascii() and header.isprintable()
    if disposition is not None:
        assert header == disposition


@pytest.mark.parametrize(
    ("sent_name", "kept_name", "disposition"),
    [
        # Names a browser cannot put into a form as they are (it escapes these characters),
        # but a hand-made request can.
        ("C:\\Users\\me\\shot.png", "shot.png", "inline; filename=shot.png"),
        ("line\r\nbreak.png", "line break.png", 'inline; filename="line break.png"'),
        ('say "cheese".png', 'say "cheese".png', 'inline; filename="say \\"cheese\\".png"'),
    ],
)
def test_names_only_a_hand_made_request_can_send_are_cleaned_too(
    client, customer, pro_88_unused, sent_name, kept_name, disposition
):
    filed = services.file_request(
        customer,
        pro_88_unused,
        RequestReason.OTHER,
        DETAILS,
        "",
        None,
        False,
        [services.Upload(sent_name, PNG_BYTES)],
        utcnow(),
    )
    [attachment] = filed.attachments
    assert attachment.filename == kept_name
    served = client.get(f"/refunds/attachments/{attachment.id}")
    assert served.status_code == 200
    assert served.headers["Content-Disposition"] == disposition


def test_a_filing_whose_transaction_fails_leaves_no_screenshot_behind(
    customer, pro_88_unused, monkeypatch
):
    def mail_server_refuses(*args):
        raise RuntimeError("the outbox is full")

    monkeypatch.setattr(services, "_confirm_by_email", mail_server_refuses)
    with pytest.raises(RuntimeError):
        services.file_request(
            customer,
            pro_88_unused,
            RequestReason.OTHER,
            DETAILS,
            "",
            None,
            False,
            [services.Upload("shot.png", PNG_BYTES), services.Upload("more.jpg", JPEG_BYTES)],
            utcnow(),
        )
    assert nothing_filed()


def test_a_screenshot_is_served_with_the_security_headers_and_never_cached(client, pro_88_unused):
    file_through_form(client, pro_88_unused.id, files=[(PNG_BYTES, "shot.png")])
    [attachment] = refund_requests()[0].attachments

    served = client.get(f"/refunds/attachments/{attachment.id}")

    assert served.status_code == 200
    assert served.headers["Content-Type"] == "image/png"
    assert served.headers["Content-Disposition"] == "inline; filename=shot.png"
    assert served.headers["X-Content-Type-Options"] == "nosniff"
    assert served.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert served.headers["Cache-Control"] == "private, no-store"


def test_an_attachment_whose_file_is_lost_is_not_found(client, pro_88_unused):
    from portal.storage import StoredFile

    file_through_form(client, pro_88_unused.id, files=[(PNG_BYTES, "shot.png")])
    [attachment] = refund_requests()[0].attachments
    db.session.query(StoredFile).delete()
    db.session.commit()

    assert client.get(f"/refunds/attachments/{attachment.id}").status_code == 404
