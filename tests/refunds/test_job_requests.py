"""Asking about a job: "Ask about this job" on a failed job's page opens /refunds/new?job_id=N."""

import re
from datetime import timedelta

from portal.db import db
from portal.jobs import services as jobs
from portal.jobs.models import FailureReason
from portal.ledger import services as ledger
from portal.refunds.eligibility import RequestReason, Verdict, refund_deadline
from portal.refunds.models import RequestStatus
from portal.timeutil import utcnow
from tests.factories import make_purchase
from tests.refunds.helpers import (
    balance,
    csrf_of,
    file_through_form,
    form_data,
    has_form_field,
    new_form_path,
    post_form,
    refund_requests,
    spend,
    text,
)

INVALID_INPUT = "failed because its input could not be processed; the policy refunds only "
NO_DEADLINE = "The refund policy sets no deadline for failed jobs"
SELECTED_JOB_FAILED = re.compile(r'<option (?=[^>]*selected)(?=[^>]*value="job_failed")')


def _invalid_input_job(customer, credits: int = 12, external_id: str = "bad-input"):
    job = spend(customer, credits, external_id)
    return jobs.fail_job(job.id, FailureReason.INVALID_INPUT, "not an image")


def _deadline(purchase) -> str:
    return refund_deadline(purchase.paid_at).strftime("%b %-d, %Y")


def test_an_invalid_input_job_opens_its_form_saying_the_policy_does_not_refund_it(client, customer):
    purchase = make_purchase(customer, "pro")
    job = _invalid_input_job(customer)

    page = client.get(new_form_path(job_id=job.id))

    assert page.status_code == 200, text(page)
    words = text(page)
    assert f"About job {job.id} (upscale), which failed." in words
    assert f"Job {job.id} {INVALID_INPUT}failures caused by the platform." in words
    assert SELECTED_JOB_FAILED.search(page.get_data(as_text=True))
    assert f'name="job_id" type="hidden" value="{job.id}"' in page.get_data(as_text=True)
    assert f'name="purchase_id" type="hidden" value="{purchase.id}"' in page.get_data(as_text=True)

    response = file_through_form(client, job_id=job.id, reason=RequestReason.JOB_FAILED.value)
    assert response.status_code == 303, text(response)
    [filed] = refund_requests()
    assert filed.job_id == job.id
    assert filed.status == RequestStatus.OPEN
    assert filed.verdict == Verdict.LIKELY_INELIGIBLE
    [job_rule] = [rule for rule in filed.precheck["rules"] if rule["code"] == "failed_job"]
    assert job_rule["outcome"] == "fail"
    # Nothing moved: the job's credits stay spent.
    assert balance(customer.id) == 288


def test_a_job_whose_purchase_has_an_open_request_is_answered_about_the_job(client, customer):
    purchase = make_purchase(customer, "pro")
    assert file_through_form(client, purchase.id).status_code == 303
    [unrelated] = refund_requests()
    job = _invalid_input_job(customer)

    page = client.get(new_form_path(job_id=job.id))

    # Not a redirect to the unrelated request: a page about the job, which names and
    # links the open request and says why this job has to wait for it.
    assert page.status_code == 409
    words = text(page)
    assert "You already have an open request for this purchase" not in words
    assert f"About job {job.id} (upscale), which failed." in words
    assert f"Job {job.id} {INVALID_INPUT}failures caused by the platform." in words
    assert (
        f"The credits job {job.id} used came from a purchase that already has an open request, "
        f"{unrelated.reference} (something else). A purchase has one open request at a time, "
        f"so you can ask about this job once {unrelated.reference} is answered."
    ) in words
    assert f'href="/refunds/{unrelated.id}"' in page.get_data(as_text=True)
    assert f'href="/jobs/{job.id}"' in page.get_data(as_text=True)
    assert not has_form_field(page, "details")
    assert len(refund_requests()) == 1


def test_a_job_asked_about_already_links_its_own_open_request(client, customer):
    make_purchase(customer, "pro")
    job = _invalid_input_job(customer)
    assert file_through_form(client, job_id=job.id, reason="job_failed").status_code == 303
    [filed] = refund_requests()

    page = client.get(new_form_path(job_id=job.id))

    assert page.status_code == 409
    assert f"You already asked about job {job.id}: request {filed.reference} is open." in text(page)
    assert f'href="/refunds/{filed.id}"' in page.get_data(as_text=True)
    assert len(refund_requests()) == 1


def test_a_job_paid_with_granted_credits_says_there_is_no_payment_to_refund(client, customer):
    ledger.grant(customer.id, 20, "grant:goodwill", "goodwill")
    db.session.commit()
    job = _invalid_input_job(customer)

    page = client.get(new_form_path(job_id=job.id))

    assert page.status_code == 409
    words = text(page)
    assert (
        f"Job {job.id} was paid with credits our team gave you, not with a purchase, so there "
        "is no payment to refund."
    ) in words
    assert f"Job {job.id} {INVALID_INPUT}" in words
    assert refund_requests() == []


def test_another_customers_job_is_not_found(client, customer):
    from tests.factories import make_user

    stranger = make_user()
    make_purchase(stranger, "pro")
    job = _invalid_input_job(stranger)
    make_purchase(customer, "pro")

    assert client.get(new_form_path(job_id=job.id)).status_code == 404


def test_the_job_form_gives_the_deadline_the_policy_gives_failed_jobs(client, customer):
    # Bought three weeks ago; the job failed today. The purchase's 30 days are about its
    # money: the policy sets failed jobs no window of their own.
    purchase = make_purchase(customer, "pro", paid_at=utcnow() - timedelta(days=21))
    job = _invalid_input_job(customer)

    words = text(client.get(new_form_path(job_id=job.id)))

    assert NO_DEADLINE in words
    assert (
        "when a job fails because of a problem on our side, its credits are returned to your "
        "balance automatically."
    ) in words
    assert (
        f"Refunds of this purchase's money are accepted until {_deadline(purchase)}, "
        "Vancouver time (30 days after you paid)."
    ) in words
    assert "Requests are accepted until" not in words

    # A request about the purchase itself keeps its window.
    purchase_words = text(client.get(new_form_path(purchase.id)))
    assert f"Requests are accepted until {_deadline(purchase)}, Vancouver time." in purchase_words
    assert NO_DEADLINE not in purchase_words


def test_a_job_whose_credits_came_back_says_so_on_the_form(client, customer):
    make_purchase(customer, "pro")
    job = spend(customer, 12)
    jobs.fail_job(job.id, FailureReason.PLATFORM_ERROR, "worker lost")

    words = text(client.get(new_form_path(job_id=job.id)))

    assert f"Job {job.id} failed on our side and its 12 credits were already returned" in words


def test_the_reason_stays_selected_and_the_job_stays_named_after_a_field_error(client, customer):
    purchase = make_purchase(customer, "pro")
    job = _invalid_input_job(customer)
    page = client.get(new_form_path(job_id=job.id))
    token = csrf_of(page)

    for step in ("review", "submit"):
        response = post_form(
            client,
            form_data(token, purchase.id, step, reason="job_failed", job_id=job.id, details=""),
        )

        assert response.status_code == 400
        html = response.get_data(as_text=True)
        assert SELECTED_JOB_FAILED.search(html), step
        assert f'name="job_id" type="hidden" value="{job.id}"' in html
        words = text(response)
        assert "Tell us in a few words what happened." in words
        assert f"About job {job.id} (upscale), which failed." in words
        assert f"Job {job.id} {INVALID_INPUT}" in words
        assert NO_DEADLINE in words
    assert refund_requests() == []
