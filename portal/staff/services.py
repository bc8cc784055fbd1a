"""Staff-side services: refund decisions, assignment, messages, the overdue digest, and
terminating an account for a Terms of Use breach."""

from datetime import datetime

from flask import current_app
from sqlalchemy import select

from portal import audit, policy
from portal.accounts import services as accounts
from portal.accounts.models import AccountStatus, User
from portal.audit import Actor
from portal.billing.models import Purchase, PurchaseStatus, Refund
from portal.billing.money_back import approvals, state
from portal.db import db, locked, transactional
from portal.errors import Conflict, NotFound, ValidationError
from portal.jobs.models import Job
from portal.ledger import services as ledger
from portal.ledger.services import unused_credits
from portal.money import format_cents
from portal.notifications.services import notify_staff, queue_email
from portal.refunds.models import RefundRequest, RequestStatus, add_event, email_customer
from portal.refunds.services import preview
from portal.timeutil import company_deadline_day

# -- refund request decisions ------------------------------------------------------------
#
# Each decision is one service call and one transaction (`transactional`): lock the
# request, check that the status table allows the move, act, and write the timeline
# event, the audit line and the customer's e-mail together; a refusal rolls it all back.
# Money leaves later, through the worker, after the undo window.


DENIAL_REASONS = {
    "credits_used": "The credits of this purchase have already been used for processing jobs.",
    "results_quality": "Dissatisfaction with AI-generated results is not refunded: output "
    "quality depends on the input and on the nature of AI processing.",
    "window": f"The request came more than {policy.REFUND_WINDOW_DAYS} days after the purchase.",
    "terms_violation": "The account was closed for a violation of our Terms of Use.",
    "other": "",
}


def _locked_request(request_id: int) -> RefundRequest:
    request = locked(RefundRequest, RefundRequest.id == request_id)
    if request is None:
        raise NotFound("no such request")
    return request


def _locked_request_moving_to(request_id: int, status: RequestStatus) -> RefundRequest:
    """Lock the request and move it to `status`; a move its status forbids changes nothing.

    :raises Conflict: the request cannot move to `status` (say, it is already decided).
    """
    request = _locked_request(request_id)
    request.transition(status)
    return request


def _customer(request: RefundRequest) -> User:
    return db.session.get(User, request.user_id)


def _log(actor: Actor, action: str, request: RefundRequest, before=None, after=None) -> None:
    audit.record(
        action,
        "refund_request",
        request.id,
        actor_id=actor.user.id,
        before=before,
        after=after,
        ip_address=actor.ip_address,
    )


def _email_customer(request: RefundRequest, subject: str, body: str) -> None:
    email_customer(request, _customer(request).email, subject, body)


def take(request_id: int, actor: Actor) -> RefundRequest:
    """Assign the request to the acting staff member."""
    return assign(request_id, actor, actor.user.id)


@transactional
def assign(request_id: int, actor: Actor, assignee_id: int | None) -> RefundRequest:
    """Hand the request to a staff member, or release it with None.

    :raises ValidationError: the assignee is not staff.
    """
    request = _locked_request(request_id)
    assignee = None
    if assignee_id is not None:
        assignee = db.session.get(User, assignee_id)
        if assignee is None or not assignee.is_staff:
            raise ValidationError("Choose a staff member.", field="assignee")
    before = request.assignee_id
    request.assignee_id = assignee_id
    if request.status == RequestStatus.OPEN and assignee_id is not None:
        request.transition(RequestStatus.IN_REVIEW)
    add_event(
        request,
        "assigned",
        f"Assigned to {assignee.email}." if assignee else "Released back to the queue.",
        actor_id=actor.user.id,
        visible_to_customer=False,
    )
    _log(
        actor,
        "refund_request.assigned",
        request,
        {"assignee_id": before},
        {"assignee_id": assignee_id},
    )
    return request


@transactional
def add_note(request_id: int, actor: Actor, body: str) -> None:
    """Write an internal note, never shown to the customer."""
    request = _locked_request(request_id)
    add_event(request, "internal_note", body, actor_id=actor.user.id, visible_to_customer=False)
    _log(actor, "refund_request.noted", request)


@transactional
def message_customer(request_id: int, actor: Actor, body: str) -> None:
    """Send the customer a message: on their timeline and by e-mail."""
    request = _locked_request(request_id)
    add_event(request, "staff_message", body, actor_id=actor.user.id)
    _email_customer(request, "a message from our team", body)
    _log(actor, "refund_request.messaged", request)


@transactional
def ask_for_information(request_id: int, actor: Actor, question: str, now: datetime) -> None:
    """Ask the customer for more information; the response clock pauses until they reply.

    :raises Conflict: the request is already decided.
    """
    request = _locked_request_moving_to(request_id, RequestStatus.WAITING_ON_CUSTOMER)
    request.clock_paused_at = now
    add_event(request, "information_requested", question, actor_id=actor.user.id, now=now)
    _email_customer(
        request,
        "we need a little more information",
        f"{question}\n\nPlease answer on the request's page in the portal.",
    )
    _log(actor, "refund_request.information_requested", request)


@transactional
def deny(request_id: int, actor: Actor, reason_code: str, message: str, now: datetime) -> None:
    """Deny the request with a reason the customer sees.

    :raises ValidationError: no reason given.
    :raises Conflict: the request is already decided.
    """
    if reason_code not in DENIAL_REASONS:
        raise ValidationError("Choose a reason.", field="reason")
    reason_text = " ".join(part for part in (DENIAL_REASONS[reason_code], message.strip()) if part)
    if not reason_text:
        raise ValidationError("Write the reason the customer will read.", field="message")
    request = _locked_request_moving_to(request_id, RequestStatus.DENIED)
    request.decided_at = now
    request.decided_by_id = actor.user.id
    request.decision_reason = reason_text
    request.clock_paused_at = None
    add_event(request, "decision", f"Not refunded. {reason_text}", actor_id=actor.user.id, now=now)
    _email_customer(
        request,
        "our decision",
        # Where to write with questions is in every customer e-mail's footer (the
        # sender is a no-reply address).
        f"We looked at your request and cannot refund it. {reason_text}",
    )
    _log(actor, "refund_request.denied", request, after={"reason": reason_code})


def recommendation_now(request: RefundRequest, now: datetime):
    """Re-run the pre-check on today's data (the customer may have spent credits since)."""
    purchase = db.session.get(Purchase, request.purchase_id)
    job = db.session.get(Job, request.job_id) if request.job_id else None
    return preview(
        _customer(request), purchase, request.reason, job, asked_for_money_back(request), now
    )


def asked_for_money_back(request: RefundRequest) -> bool:
    """Whether the check is about money rather than the credits the portal added at filing."""
    return "add_missing_credits" not in request.precheck.get("actions", [])


@transactional
def approve(
    request_id: int, actor: Actor, amount_cents: int, justification: str, now: datetime
) -> Refund:
    """Approve a refund: remove the purchase's unused credits and schedule the money back.

    The refund waits out the undo window, then the worker sends it to Stripe (and only
    then tells the customer).

    :raises ValidationError: the amount is not positive, exceeds what is left to refund,
        or exceeds the unused credits' value without a justification.
    :raises Conflict: the request is already decided, or the payment is disputed.
    """
    purchase_id = db.session.scalar(
        select(RefundRequest.purchase_id).where(RefundRequest.id == request_id)
    )
    if purchase_id is None:
        raise NotFound("no such request")
    purchase = state.lock_purchase(purchase_id)
    request = _locked_request(request_id)
    if not request.is_open:
        raise Conflict("This request was already decided.")
    left = approvals.refundable_cents(purchase)
    if not 0 < amount_cents <= left:
        raise ValidationError(f"Refund between $0.01 and {format_cents(left)}.", "amount")
    check = recommendation_now(request, now)
    unused = unused_credits(purchase)
    package = policy.PACKAGES_BY_CODE.get(purchase.package_code)
    unused_value = package.refund_for_unused(unused) if package else 0
    if amount_cents > max(unused_value, check.recommended_cents) and not justification.strip():
        raise ValidationError(
            f"More than the unused credits' value ({format_cents(unused_value)}) needs a "
            "written justification.",
            field="justification",
        )
    refund, credits = approvals.schedule_refund(
        purchase,
        request,
        amount_cents,
        check.stripe_reason,
        actor.user.id,
        f"refund of {request.reference}",
        now,
    )
    _record_approval(request, actor, refund, credits, unused, justification, now)
    return refund


def _record_approval(
    request: RefundRequest,
    actor: Actor,
    refund: Refund,
    credits: int,
    unused: int,
    justification: str,
    now: datetime,
) -> None:
    """The approval on the request, its timeline and the audit log (the customer hears
    of it when the money leaves)."""
    request.transition(RequestStatus.APPROVED)
    request.decided_at = now
    request.decided_by_id = actor.user.id
    request.decision_reason = justification.strip() or None
    request.clock_paused_at = None
    amount = format_cents(refund.amount_cents, refund.currency)
    add_event(
        request,
        "decision",
        f"Approved: {amount} back to your original payment method"
        + (f"; {credits:,} unused credits leave your balance." if credits else "."),
        actor_id=actor.user.id,
        now=now,
    )
    add_event(
        request,
        "refund_scheduled",
        f"Refund of {amount} scheduled.",
        actor_id=actor.user.id,
        now=now,
    )
    _log(
        actor,
        "refund_request.approved",
        request,
        before={"unused_credits": unused, "recommended_cents": request.recommended_cents},
        after={
            "amount_cents": refund.amount_cents,
            "credits_removed": credits,
            "refund_id": refund.id,
        },
    )


@transactional
def undo_approval(refund_id: int, actor: Actor, now: datetime) -> None:
    """Cancel a scheduled refund inside its undo window and reopen the request.

    Nothing reaches the customer: the approval e-mail goes only when the money leaves.

    :raises Conflict: the refund was already sent or the window has passed.
    """
    refund = approvals.undo(refund_id, now)
    request = _locked_request(refund.refund_request_id)
    request.reopen()
    add_event(
        request,
        "decision_undone",
        "The approval was withdrawn before any money moved; the credits are back in your balance.",
        actor_id=actor.user.id,
        now=now,
    )
    _log(actor, "refund_request.approval_undone", request, after={"refund_id": refund.id})


@transactional
def retry_refund(refund_id: int, actor: Actor, now: datetime) -> Refund:
    """Try a failed refund again: a new attempt (Stripe's refusal is final for the old key).

    :raises Conflict: the refund has not failed, or the payment is now disputed.
    :raises ValidationError: the amount no longer fits what is left to refund.
    """
    request_id = db.session.scalar(select(Refund.refund_request_id).where(Refund.id == refund_id))
    refund = approvals.retry(refund_id, f"refund of request {request_id}, again", now)
    request = _locked_request(refund.refund_request_id)
    if request.status != RequestStatus.APPROVED:
        request.transition(RequestStatus.APPROVED)
    add_event(
        request,
        "refund_scheduled",
        "The refund is being tried again.",
        actor_id=actor.user.id,
        now=now,
    )
    _log(
        actor, "refund.retried", request, after={"refund_id": refund.id, "attempt": refund.attempt}
    )
    return refund


@transactional
def credit_instead(request_id: int, actor: Actor, now: datetime) -> None:
    """Settle a never-credited purchase by adding its credits instead of refunding money.

    :raises Conflict: the purchase's credits were already added, or the request decided.
    """
    purchase_id = db.session.scalar(
        select(RefundRequest.purchase_id).where(RefundRequest.id == request_id)
    )
    purchase = state.lock_purchase(purchase_id) if purchase_id else None
    request = _locked_request(request_id)
    if not request.is_open or purchase.credited_at is not None or purchase.paid_at is None:
        raise Conflict(
            "Only an open request for a paid purchase whose credits never arrived "
            "can be settled with credits."
        )
    purchase.status = PurchaseStatus.CREDITED
    purchase.credited_at = now
    ledger.credit_purchase(purchase, purchase.credit_key)
    request.transition(RequestStatus.APPROVED)
    request.decided_at = now
    request.decided_by_id = actor.user.id
    request.decision_reason = "Credits added instead of a refund."
    add_event(
        request,
        "decision",
        f"The {purchase.credits:,} missing credits were added to your balance.",
        actor_id=actor.user.id,
        now=now,
    )
    _log(actor, "refund_request.credited_instead", request, after={"credits": purchase.credits})
    _email_customer(
        request,
        "credits added",
        f"We added the {purchase.credits:,} missing credits to your balance.",
    )


@transactional
def send_overdue_digest(now: datetime) -> int:
    """E-mail staff the list of open requests past their response date; return how many."""
    overdue = db.session.scalars(
        select(RefundRequest).where(RefundRequest.overdue(now)).order_by(RefundRequest.due_at)
    ).all()
    if overdue:
        lines = [
            f"{request.reference}  due {company_deadline_day(request.due_at)}  "
            f"{request.reason.value}"
            for request in overdue
        ]
        notify_staff(
            f"{len(overdue)} overdue refund request(s)",
            "These refund requests are past their response date "
            f"({policy.COMPANY_TIMEZONE_NAME} time):\n\n" + "\n".join(lines),
        )
    return len(overdue)


# -- terminating an account for a Terms of Use breach -----------------------------------

TERMINATION_REASON_MAX_LENGTH = 1000


@transactional
def terminate_for_terms_breach(
    user_id: int, reason: str, actor_id: int | None, ip_address: str | None, now: datetime
) -> User:
    """Terminate a customer's account for a Terms of Use breach and tell them why.

    Buying and the jobs API refuse the account from now on, its sessions end, and its
    refund requests meet the policy's termination rule in the pre-check. The customer
    can still log in to see their history. `actor_id` None is an operator at the
    command line.

    :raises ValidationError: no reason, or one too long.
    :raises NotFound: no such account.
    :raises Conflict: a staff account, or one already terminated or closed.
    """
    reason = reason.strip()
    if not reason:
        raise ValidationError("Write the reason the customer will read.", field="reason")
    if len(reason) > TERMINATION_REASON_MAX_LENGTH:
        raise ValidationError(
            f"Keep the reason under {TERMINATION_REASON_MAX_LENGTH:,} characters.", field="reason"
        )
    user = locked(User, User.id == user_id)
    if user is None:
        raise NotFound("no such account")
    if user.is_staff:
        raise Conflict("Staff accounts are not terminated: take the staff role away instead.")
    if user.status == AccountStatus.TERMINATED:
        raise Conflict(f"Customer {user.id}'s account is already terminated.")
    if user.status == AccountStatus.CLOSED:
        raise Conflict(f"Customer {user.id}'s account is closed; there is nothing to terminate.")
    before = {"status": user.status.value}
    accounts.mark_terminated(user, reason, now)
    audit.record(
        "account.terminated",
        "user",
        user.id,
        actor_id=actor_id,
        before=before,
        after={"status": user.status.value, "reason": reason},
        ip_address=ip_address,
    )
    queue_email(user.email, "Your account has been terminated", _termination_notice(reason))
    return user


def _termination_notice(reason: str) -> str:
    support = current_app.config["SUPPORT_EMAIL"]
    return (
        f"We have terminated your {policy.PRODUCT_NAME} account for a violation of our "
        f"Terms of Use.\n\nThe reason: {reason}\n\n"
        "From now on the account cannot buy credits, and its credits can no longer be "
        "spent on processing jobs. You can still log in to see your purchases, credits "
        "and refund requests.\n\n"
        "Our refund policy does not generally issue refunds on account termination due to "
        "a violation of our Terms of Use: any refund request from this account is assessed "
        "under that rule.\n\n"
        f"If you believe this is a mistake, write to us at {support}."
    )
