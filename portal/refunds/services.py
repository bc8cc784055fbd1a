"""Refund requests: gather the customer's facts, pre-check them, file, follow up.

Filing runs in three steps so that nothing waits on Stripe while holding a lock: compute
the pre-check from a snapshot, carry out what the portal can settle by itself (each its
own idempotent transaction), then store the request with its evidence in one transaction
(the screenshots are kept in the database, so they commit or vanish with the request).
"""

import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from portal import audit, policy, storage
from portal.accounts.models import User
from portal.billing import fulfilment
from portal.billing.models import Purchase, PurchaseStatus, Refund, RefundStatus
from portal.db import db, locked, transactional
from portal.errors import Conflict, NotFound, PaymentProviderError, ValidationError
from portal.jobs import services as jobs
from portal.jobs.models import Job, JobStatus
from portal.ledger.models import CreditLot, EntryKind, LedgerEntry, LotAllocation
from portal.notifications.services import queue_email
from portal.refunds import eligibility
from portal.refunds.eligibility import Action, Precheck, RequestReason, Verdict
from portal.refunds.models import (
    OPEN_STATUSES,
    Attachment,
    RefundRequest,
    RefundRequestEvent,
    RequestStatus,
    add_event,
)
from portal.refunds.snapshot import job_facts, snapshot_for
from portal.timeutil import add_business_days

MAX_ATTACHMENTS = 3
REASON_WORDS = {
    RequestReason.CREDITS_NOT_ADDED: "credits not added",
    RequestReason.CHARGED_TWICE: "charged twice",
    RequestReason.SERVICE_UNAVAILABLE: "service unavailable",
    RequestReason.JOB_FAILED: "a job failed",
    RequestReason.NOT_HAPPY: "not happy with the results",
    RequestReason.NO_LONGER_NEEDED: "credits no longer needed",
    RequestReason.OTHER: "something else",
}
MAX_ATTACHMENT_BYTES = storage.MAX_FILE_BYTES
# Screenshots are recognised by their first bytes, not by what the browser claims.
IMAGE_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": ("image/png", "png"),
    b"\xff\xd8\xff": ("image/jpeg", "jpg"),
}
# The endings a kept file name may have for each type; any other gets the type's own.
IMAGE_SUFFIXES = {"image/png": (".png",), "image/jpeg": (".jpg", ".jpeg")}
# Longest name a screenshot is kept and shown under, in characters, extension included.
MAX_FILENAME_LENGTH = 100


@dataclass(frozen=True)
class Upload:
    """A file as the customer's browser sent it: any name, any bytes."""

    filename: str
    content: bytes


@dataclass(frozen=True)
class Screenshot:
    """An accepted upload: a PNG or JPEG image under a clean name."""

    filename: str
    content_type: str
    extension: str
    content: bytes


def requestable_purchase(user: User, purchase_id: int | None, job: Job | None = None) -> Purchase:
    """Return the customer's purchase if a refund can be requested for it (or for `job`,
    one of its jobs).

    :raises NotFound: no such purchase, or another customer's.
    :raises Conflict: a request is already open (its id in `existing_id`), or the
        purchase was never paid, is disputed or is fully refunded.
    """
    purchase = db.session.get(Purchase, purchase_id) if purchase_id else None
    if purchase is None or purchase.user_id != user.id:
        raise NotFound("no such purchase")
    open_request = open_request_for(purchase.id)
    if open_request is not None:
        raise Conflict(_already_open(open_request, job), open_request.id)
    if purchase.paid_at is None:
        raise Conflict("This purchase was never paid, so there is nothing to refund.")
    if purchase.status == PurchaseStatus.DISPUTED:
        raise Conflict(
            "This payment is disputed with your bank; the dispute decides the refund, so a "
            "request cannot be filed here."
        )
    if purchase.refunded_cents >= purchase.amount_cents:
        raise Conflict("This purchase has already been refunded in full.")
    if _refund_on_its_way(purchase.id):
        # Its request may still return to review (undone, or the refund fails), and a
        # purchase has one open request at a time.
        raise Conflict(
            "A refund of this purchase is on its way to you. You can ask again once it has arrived."
        )
    return purchase


def _refund_on_its_way(purchase_id: int) -> bool:
    return (
        db.session.scalar(
            select(Refund.id)
            .where(
                Refund.purchase_id == purchase_id,
                Refund.refund_request_id.is_not(None),
                Refund.status.in_(
                    [RefundStatus.SCHEDULED, RefundStatus.PENDING, RefundStatus.REQUIRES_ACTION]
                ),
            )
            .limit(1)
        )
        is not None
    )


def _already_open(open_request: RefundRequest, job: Job | None) -> str:
    """Why no new request can be filed, said about what the customer asked about."""
    reference = open_request.reference
    if job is None:
        return f"You already have an open request for this purchase ({reference})."
    if open_request.job_id == job.id:
        return f"You already asked about job {job.id}: request {reference} is open."
    # A purchase has one open request at a time (a unique index: the one place where staff
    # decide its money), so a job whose purchase is already asked about waits for it.
    about = (
        f"about job {open_request.job_id}"
        if open_request.job_id
        else REASON_WORDS[open_request.reason]
    )
    return (
        f"The credits job {job.id} used came from a purchase that already has an open "
        f"request, {reference} ({about}). A purchase has one open request at a time, so you "
        f"can ask about this job once {reference} is answered."
    )


def purchase_id_for_job(user: User, job: Job) -> int:
    """Return the purchase whose credits the customer's job spent (the oldest, if several):
    a request about a job is filed on it.

    :raises Conflict: the job spent only credits our team granted, which no purchase paid.
    """
    purchase_id = db.session.scalar(
        select(CreditLot.purchase_id)
        .join(LotAllocation, LotAllocation.lot_id == CreditLot.id)
        .join(LedgerEntry, LedgerEntry.id == LotAllocation.ledger_entry_id)
        .where(
            LedgerEntry.job_id == job.id,
            LedgerEntry.user_id == user.id,
            LedgerEntry.kind == EntryKind.JOB_CHARGE,
            CreditLot.purchase_id.is_not(None),
        )
        .order_by(CreditLot.created_at, CreditLot.id)
        .limit(1)
    )
    if purchase_id is None:
        raise Conflict(
            f"Job {job.id} was paid with credits our team gave you, not with a purchase, so "
            "there is no payment to refund."
        )
    return purchase_id


def job_note(job: Job) -> str | None:
    """What the policy says about the job's credits, for the form before anything is
    filed; None when filing is what returns them."""
    result = eligibility.job_rule(job_facts(job))
    if result.outcome == eligibility.Outcome.PASS and not job.credits_restored:
        return None
    return result.explanation


def open_request_for(purchase_id: int) -> RefundRequest | None:
    return db.session.scalar(
        select(RefundRequest).where(
            RefundRequest.purchase_id == purchase_id, RefundRequest.status.in_(OPEN_STATUSES)
        )
    )


def job_for_request(user: User, purchase: Purchase, job_id: int | None) -> Job | None:
    """Return the named job if the customer may ask about it.

    :raises ValidationError: the job is not the customer's or did not fail.
    """
    if job_id is None:
        return None
    job = db.session.get(Job, job_id)
    if job is None or job.user_id != user.id:
        raise ValidationError("That job is not one of yours.", field="job_id")
    if job.status != JobStatus.FAILED:
        raise ValidationError(
            f"Job {job.id} {job.status.value}; only failed jobs can be refunded.", field="job_id"
        )
    return job


def preview(
    user: User,
    purchase: Purchase,
    reason: RequestReason,
    job: Job | None,
    money_back_instead: bool,
    now: datetime,
) -> Precheck:
    """Run the pre-check for the review step; changes nothing."""
    snapshot = snapshot_for(user, purchase, reason, job, money_back_instead, now)
    return eligibility.precheck(snapshot, now)


def _check_uploads(uploads: list[Upload]) -> list[Screenshot]:
    if len(uploads) > MAX_ATTACHMENTS:
        raise ValidationError(f"Attach at most {MAX_ATTACHMENTS} screenshots.", "attachments")
    checked = []
    for upload in uploads:
        kind = next(
            (
                found
                for magic, found in IMAGE_SIGNATURES.items()
                if upload.content.startswith(magic)
            ),
            None,
        )
        content_type, extension = kind or ("", "png")
        name = screenshot_name(upload.filename, content_type, extension)
        if len(upload.content) > MAX_ATTACHMENT_BYTES:
            raise ValidationError(
                f"{name} is larger than {MAX_ATTACHMENT_BYTES // (1024 * 1024)} MB.",
                "attachments",
            )
        if kind is None:
            raise ValidationError(f"{name} is not a PNG or JPEG image.", "attachments")
        checked.append(Screenshot(name, content_type, extension, upload.content))
    return checked


def screenshot_name(sent: str, content_type: str, extension: str) -> str:
    """The name a screenshot is kept and shown under, from the name the browser sent.

    Only the last part of a path is kept, without control or invisible characters (a NUL
    cannot be stored at all, and a line break or a right-to-left mark has no place in a
    download's name), whitespace collapsed, ending in an extension of the image's type,
    at most MAX_FILENAME_LENGTH characters; "screenshot.png" when nothing is left.
    """
    name = re.split(r"[/\\]", sent)[-1]
    # Whitespace of any kind (tabs, line breaks) becomes one space; other control and
    # invisible characters go.
    name = "".join(
        char for char in name if char.isspace() or not unicodedata.category(char).startswith("C")
    )
    name = " ".join(name.split()).lstrip(". ")
    if not name:
        return f"screenshot.{extension}"
    if not name.lower().endswith(IMAGE_SUFFIXES.get(content_type, (f".{extension}",))):
        name = f"{name}.{extension}"
    if len(name) > MAX_FILENAME_LENGTH:
        stem, _, suffix = name.rpartition(".")
        name = f"{stem[: MAX_FILENAME_LENGTH - len(suffix) - 1].rstrip()}.{suffix}"
    return name


def _settle_automatically(
    purchase: Purchase, job: Job | None, actions: tuple[Action, ...]
) -> list[str]:
    """Carry out what the portal can settle itself; return what was done, in words."""
    done = []
    if Action.ADD_MISSING_CREDITS in actions:
        try:
            outcome = fulfilment.fulfil_purchase(purchase)
        except PaymentProviderError:
            outcome = None
        if outcome in (fulfilment.Fulfilment.CREDITED, fulfilment.Fulfilment.ALREADY_CREDITED):
            done.append(f"The {purchase.credits:,} missing credits were added to your balance.")
    if Action.RESTORE_JOB_CREDITS in actions and job is not None:
        jobs.restore_failed_job(job.id)
        done.append(f"The {job.credits:,} credits of job {job.id} were returned to your balance.")
    return done


def file_request(
    user: User,
    purchase: Purchase,
    reason: RequestReason,
    details: str,
    transaction_ids: str,
    job: Job | None,
    money_back_instead: bool,
    uploads: list[Upload],
    now: datetime,
) -> RefundRequest:
    """File a refund request with its pre-check and evidence, settling it when possible.

    :raises ValidationError: an attachment is too large, not an image, or one too many.
    :raises Conflict: a request for this purchase is already open.
    """
    checked = _check_uploads(uploads)
    check, done = _precheck_and_settle(user, purchase, reason, job, money_back_instead, now)
    request = _new_request(user, purchase, job, reason, details, transaction_ids, check, done, now)
    try:
        return _store_request(request, user, purchase, check, done, checked)
    except IntegrityError:
        existing = open_request_for(purchase.id)
        raise Conflict(
            "A request for this purchase is already open.", existing.id if existing else None
        ) from None


@transactional
def _store_request(
    request: RefundRequest,
    user: User,
    purchase: Purchase,
    check: Precheck,
    done: list[str],
    screenshots: list[Screenshot],
) -> RefundRequest:
    """The new request, its timeline, screenshots, audit record and e-mail: one transaction."""
    now = request.created_at
    db.session.add(request)
    db.session.flush()
    add_event(request, "filed", f"Request filed: {REASON_WORDS[request.reason]}.", now=now)
    add_event(request, "precheck", check.summary, now=now)
    for line in done:
        add_event(request, "auto_resolved", line, now=now)
    _store_attachments(request, screenshots)
    audit.record(
        "refund_request.filed",
        "refund_request",
        request.id,
        actor_id=user.id,
        after={"verdict": check.verdict.value, "recommended_cents": check.recommended_cents},
    )
    _confirm_by_email(user, request, purchase, done)
    return request


def _precheck_and_settle(
    user: User,
    purchase: Purchase,
    reason: RequestReason,
    job: Job | None,
    money_back_instead: bool,
    now: datetime,
) -> tuple[Precheck, list[str]]:
    """The pre-check, after the portal settled what it can by itself; and what it did."""
    check = preview(user, purchase, reason, job, money_back_instead, now)
    done = _settle_automatically(purchase, job, check.actions) if check.actions else []
    if check.actions and not done:
        # The portal could not settle it after all (e.g. the payment needs a human look).
        check = eligibility.Precheck(
            Verdict.NEEDS_REVIEW,
            check.rules,
            check.recommended_cents,
            check.recommended_credits,
            check.stripe_reason,
            (),
            "The portal could not settle this by itself; staff will look at it.",
        )
    return check, done


def _new_request(
    user: User,
    purchase: Purchase,
    job: Job | None,
    reason: RequestReason,
    details: str,
    transaction_ids: str,
    check: Precheck,
    done: list[str],
    now: datetime,
) -> RefundRequest:
    resolved = bool(done)
    return RefundRequest(
        user_id=user.id,
        purchase_id=purchase.id,
        job_id=job.id if job else None,
        reason=reason,
        details=details,
        transaction_ids=transaction_ids,
        status=RequestStatus.RESOLVED_AUTOMATICALLY if resolved else RequestStatus.OPEN,
        verdict=check.verdict,
        precheck=check.to_json(),
        recommended_cents=check.recommended_cents,
        recommended_credits=check.recommended_credits,
        due_at=add_business_days(now, policy.RESPONSE_BUSINESS_DAYS_MAX),
        decided_at=now if resolved else None,
        created_at=now,
    )


def _store_attachments(request: RefundRequest, screenshots: list[Screenshot]) -> None:
    """Store the screenshots under unguessable keys, in the request's transaction."""
    for screenshot in screenshots:
        key = f"{secrets.token_hex(16)}.{screenshot.extension}"
        storage.put(key, screenshot.content, screenshot.content_type)
        db.session.add(
            Attachment(
                request_id=request.id,
                filename=screenshot.filename,
                content_type=screenshot.content_type,
                size_bytes=len(screenshot.content),
                storage_key=key,
            )
        )


def _confirm_by_email(user: User, request: RefundRequest, purchase: Purchase, done: list[str]):
    if done:
        body = "We settled your request straight away:\n\n" + "\n".join(done)
    else:
        body = (
            f"We received your refund request for your {purchase.package_code.capitalize()} "
            f"purchase. We aim to answer within {policy.RESPONSE_BUSINESS_DAYS_MIN}-"
            f"{policy.RESPONSE_BUSINESS_DAYS_MAX} business days. An approved refund reaches "
            f"the original payment method within {policy.PAYOUT_BUSINESS_DAYS_MIN}-"
            f"{policy.PAYOUT_BUSINESS_DAYS_MAX} business days."
        )
    queue_email(user.email, f"Refund request {request.reference} received", body)


def requests_for_customer(user_id: int) -> list[RefundRequest]:
    return list(
        db.session.scalars(
            select(RefundRequest)
            .where(RefundRequest.user_id == user_id)
            .order_by(RefundRequest.id.desc())
        )
    )


def request_for_customer(user_id: int, request_id: int) -> RefundRequest:
    """Return the customer's own request.

    :raises NotFound: no such request, or another customer's.
    """
    request = db.session.get(RefundRequest, request_id)
    if request is None or request.user_id != user_id:
        raise NotFound("no such request")
    return request


def customer_timeline(request: RefundRequest) -> list[RefundRequestEvent]:
    return list(
        db.session.scalars(
            select(RefundRequestEvent)
            .where(
                RefundRequestEvent.request_id == request.id,
                RefundRequestEvent.visible_to_customer.is_(True),
            )
            .order_by(RefundRequestEvent.id)
        )
    )


@transactional
def customer_reply(user: User, request: RefundRequest, body: str, now: datetime) -> None:
    """Record the customer's answer to a question from staff and restart the clock.

    :raises Conflict: staff are not waiting on the customer.
    """
    request = locked(RefundRequest, RefundRequest.id == request.id)
    if request.status != RequestStatus.WAITING_ON_CUSTOMER:
        raise Conflict("This request is not waiting for your answer.")
    if request.clock_paused_at is not None:
        # The response clock stood still while staff waited for the customer.
        request.due_at = request.due_at + (now - request.clock_paused_at)
        request.clock_paused_at = None
    request.transition(RequestStatus.IN_REVIEW)
    add_event(request, "customer_message", body, actor_id=user.id, now=now)
    audit.record("refund_request.customer_replied", "refund_request", request.id, actor_id=user.id)


def attachment_for(user: User, attachment_id: int) -> tuple[Attachment, bytes]:
    """Return an attachment and its file's bytes, for its owner or for staff.

    :raises NotFound: no such attachment, not the caller's to see, or its file is lost.
    """
    attachment = db.session.get(Attachment, attachment_id)
    if attachment is None:
        raise NotFound("no such attachment")
    owner_id = db.session.scalar(
        select(RefundRequest.user_id).where(RefundRequest.id == attachment.request_id)
    )
    if owner_id != user.id and not user.is_staff:
        raise NotFound("no such attachment")
    stored = storage.get(attachment.storage_key)
    if stored is None:
        raise NotFound("the attachment's file is lost")
    return attachment, stored.content
