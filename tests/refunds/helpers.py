"""Helpers for the refund tests: snapshots for the pure pre-check, and the portal's state.

The first half builds `eligibility.Snapshot` objects with no database. The second half
reads what the database holds and drives the three-step form (fill in, review, submit)
through the test client.
"""

import io
import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from flask import current_app
from flask.testing import FlaskClient
from sqlalchemy import func, select
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import encode_multipart

from portal import policy
from portal.refunds import eligibility
from portal.refunds.eligibility import RequestReason
from tests.html_text import visible_text

VANCOUVER = ZoneInfo("America/Vancouver")

# Smallest files whose first bytes say what they are, as the portal checks them.
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 64
JPEG_BYTES = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 64

DETAILS = "I bought the Pro package and would like the unused credits refunded."


# -- moments ------------------------------------------------------------------------------


def utc(*parts: int) -> datetime:
    """A UTC moment: utc(2026, 3, 2, 7, 30)."""
    return datetime(*parts, tzinfo=UTC)


def vancouver(*parts: int) -> datetime:
    """A wall-clock moment in Vancouver, returned in UTC (as the database keeps it)."""
    return datetime(*parts, tzinfo=VANCOUVER).astimezone(UTC)


# -- snapshots for the pure pre-check ---------------------------------------------------


def purchase_facts(
    package: str = "pro",
    paid_at: datetime | None = None,
    credited: bool = True,
    credited_at: datetime | None = None,
    refunded_cents: int = 0,
    purchase_id: int = 1,
    unused: int | None = None,
    card: str | None = None,
) -> eligibility.PurchaseFacts:
    """Facts of a paid purchase of `package`, credited when it was paid unless told, and
    none of its credits used unless told."""
    chosen = policy.PACKAGES_BY_CODE[package]
    paid_at = paid_at or vancouver(2026, 3, 1, 23, 30)
    if credited and credited_at is None:
        credited_at = paid_at
    if unused is None:
        unused = chosen.credits if credited else 0
    return eligibility.PurchaseFacts(
        id=purchase_id,
        package_code=chosen.code,
        credits=chosen.credits,
        amount_cents=chosen.price_cents,
        currency=chosen.currency,
        paid_at=paid_at,
        credited_at=credited_at if credited else None,
        refunded_cents=refunded_cents,
        unused_credits=unused,
        payment_method_fingerprint=card,
    )


def snapshot(
    purchase: eligibility.PurchaseFacts | None = None,
    unused: int | None = None,
    reason: RequestReason = RequestReason.OTHER,
    **overrides,
) -> eligibility.Snapshot:
    """A snapshot of an ordinary case: a credited Pro purchase, `unused` credits left."""
    purchase = purchase or purchase_facts()
    if unused is None:
        unused = purchase.credits if purchase.credited_at is not None else 0
    overrides.setdefault("used_up_at", None)
    return eligibility.Snapshot(
        reason=reason, purchase=purchase, unused_credits=unused, **overrides
    )


def rule(check: eligibility.Precheck, code: str) -> eligibility.RuleResult:
    """The result of one rule, by its code."""
    found = [result for result in check.rules if result.code == code]
    assert len(found) == 1, f"{len(found)} results for rule {code!r}: {check.rules}"
    return found[0]


# -- reading pages ------------------------------------------------------------------------


text = visible_text


def has_form_field(response, name: str) -> bool:
    return f'name="{name}"' in response.get_data(as_text=True)


# -- what the database holds -------------------------------------------------------------


def count(model, *where) -> int:
    from portal.db import db

    return db.session.scalar(select(func.count()).select_from(model).where(*where))


def balance(user_id: int) -> int:
    from portal.accounts.models import User
    from portal.db import db

    db.session.expire_all()
    return db.session.scalar(select(User.credits_balance).where(User.id == user_id))


def refund_requests(purchase_id: int | None = None) -> list:
    from portal.db import db
    from portal.refunds.models import RefundRequest

    query = select(RefundRequest).order_by(RefundRequest.id)
    if purchase_id is not None:
        query = query.where(RefundRequest.purchase_id == purchase_id)
    db.session.expire_all()
    return list(db.session.scalars(query))


def events_of(request_id: int) -> list:
    from portal.db import db
    from portal.refunds.models import RefundRequestEvent

    return list(
        db.session.scalars(
            select(RefundRequestEvent)
            .where(RefundRequestEvent.request_id == request_id)
            .order_by(RefundRequestEvent.id)
        )
    )


def emails_to(address: str) -> list:
    from portal.db import db
    from portal.notifications.models import OutboxEmail

    return list(
        db.session.scalars(
            select(OutboxEmail).where(OutboxEmail.to_address == address).order_by(OutboxEmail.id)
        )
    )


def ledger_entries(user_id: int, kind) -> list:
    from portal.db import db
    from portal.ledger.models import LedgerEntry

    return list(
        db.session.scalars(
            select(LedgerEntry).where(LedgerEntry.user_id == user_id, LedgerEntry.kind == kind)
        )
    )


def stored_files() -> list:
    """Every file in the portal's storage, by key."""
    from portal.db import db
    from portal.storage import StoredFile

    db.session.expire_all()
    return list(db.session.scalars(select(StoredFile).order_by(StoredFile.key)))


def nothing_filed() -> bool:
    """No request, event, attachment row or stored file exists."""
    from portal.refunds.models import Attachment, RefundRequest, RefundRequestEvent

    return (
        count(RefundRequest) == 0
        and count(RefundRequestEvent) == 0
        and count(Attachment) == 0
        and stored_files() == []
    )


# -- setting up cases in the database -----------------------------------------------------


def spend(user, credits: int, external_id: str = "spend-1"):
    """Charge one job of `credits` through the jobs service; return the job."""
    from portal.jobs import services as jobs

    job, created = jobs.charge_job(external_id, user.email, "upscale", credits)
    assert created
    return job


def fail_without_restoring(job, reason=None):
    """Mark a job failed directly in the database, its credits NOT given back."""
    from portal.db import db
    from portal.jobs.models import FailureReason, JobStatus

    job.status = JobStatus.FAILED
    job.failure_reason = reason or FailureReason.PLATFORM_ERROR
    job.failure_detail = "worker lost"
    job.finished_at = job.created_at
    job.credits_restored = False
    db.session.commit()
    return job


def pay_at_sandbox(purchase, monkeypatch) -> str:
    """Give `purchase` a real, paid Checkout Session at the in-process sandbox.

    Factory purchases carry made-up session ids the sandbox does not know; fulfilment
    asks the sandbox, so a purchase that is to be credited needs a real paid session.
    """
    from portal.db import db

    monkeypatch.setitem(current_app.config, "SANDBOX_WEBHOOKS", "off")
    store = current_app.extensions["stripe_sandbox"]
    package = policy.PACKAGES_BY_CODE[purchase.package_code]
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
        "success_url": "http://portal.test/credits/success",
        "cancel_url": "http://portal.test/credits/cancel",
        "client_reference_id": str(purchase.id),
        "metadata": {"purchase_id": str(purchase.id)},
    }
    with store.lock:
        session_id = store.create_session(params, lambda sid: f"/x/{sid}")["id"]
        assert store.pay(session_id, "4242424242424242") == "paid"
    purchase.stripe_checkout_session_id = session_id
    db.session.commit()
    return session_id


# -- the form -----------------------------------------------------------------------------


def new_form_path(purchase_id: int | None = None, job_id: int | None = None) -> str:
    if job_id is not None:
        return f"/refunds/new?job_id={job_id}"
    return f"/refunds/new?purchase_id={purchase_id}"


_CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


def csrf_of(response) -> str:
    match = _CSRF.search(response.get_data(as_text=True))
    assert match, "no CSRF token on the page"
    return match.group(1)


def form_data(
    token: str,
    purchase_id: int,
    step: str = "review",
    reason: str = RequestReason.OTHER.value,
    details: str = DETAILS,
    job_id: int | None = None,
    money_back: bool = False,
    **extra,
) -> dict:
    data = {
        "csrf_token": token,
        "purchase_id": str(purchase_id),
        "job_id": str(job_id) if job_id else "",
        "reason": reason,
        "details": details,
        "transaction_ids": "",
        "step": step,
        **extra,
    }
    if money_back:
        data["money_back"] = "y"
    return data


def post_form(client: FlaskClient, data: dict, files: list[tuple[bytes, str]] = ()):
    """POST the refund form, with `files` as (content, filename) screenshots.

    The multipart body is encoded in memory: the test client would spool a large one to
    a temporary file that it never closes (a ResourceWarning, an error under pytest).
    """
    if not files:
        return client.post("/refunds/new", data=data)
    fields = MultiDict(data)
    for content, name in files:
        fields.add("attachments", FileStorage(io.BytesIO(content), filename=name))
    boundary, body = encode_multipart(fields)
    return client.post(
        "/refunds/new", data=body, content_type=f"multipart/form-data; boundary={boundary}"
    )


def file_through_form(
    client: FlaskClient,
    purchase_id: int | None = None,
    job_id: int | None = None,
    files: list[tuple[bytes, str]] = (),
    **fields,
):
    """Open the form, review, then submit; return the submit response."""
    page = client.get(new_form_path(purchase_id, job_id))
    assert page.status_code == 200, text(page)
    token = csrf_of(page)
    purchase_id = purchase_id or int(
        re.search(r'name="purchase_id" type="hidden" value="(\d+)"', page.get_data(as_text=True))[1]
    )
    review = post_form(client, form_data(token, purchase_id, "review", job_id=job_id, **fields))
    assert review.status_code == 200, text(review)
    return post_form(
        client, form_data(token, purchase_id, "submit", job_id=job_id, **fields), files
    )
