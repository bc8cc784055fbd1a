"""Buying credits: Checkout, exactly-once fulfilment, and what Stripe tells us later.

Stripe is never called while a database lock is held: each operation first asks Stripe
what is true (a webhook is only a hint), then locks the purchase row, checks its state,
and acts, in one transaction.
"""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from flask import current_app
from sqlalchemy import func, select

from portal import policy
from portal.accounts.models import User
from portal.billing.gateway import gateway
from portal.billing.models import Purchase, PurchaseStatus, Refund, RefundStatus
from portal.db import locked
from portal.errors import AccountTerminated, NotFound, PaymentProviderError, ValidationError
from portal.extensions import db
from portal.ledger import services as ledger
from portal.ledger.models import EntryKind, LedgerEntry
from portal.money import format_cents
from portal.notifications.services import notify_staff, queue_email
from portal.ops.metrics import FULFILMENTS, REFUNDS
from portal.staff.audit import audit
from portal.timeutil import utcnow

log = logging.getLogger(__name__)

# A second click on Buy within this time reuses the pending purchase (and, through the
# idempotency key, the same Checkout Session) instead of starting another.
PENDING_REUSE_WINDOW = timedelta(minutes=30)

# Statuses from which a paid session may still be credited.
CREDITABLE = {
    PurchaseStatus.PENDING,
    PurchaseStatus.FAILED,
    PurchaseStatus.EXPIRED,
    PurchaseStatus.PAID,
}


class Fulfilment(StrEnum):
    CREDITED = "credited"
    ALREADY_CREDITED = "already_credited"
    PROCESSING = "processing"
    NOT_PAID = "not_paid"
    AMOUNT_MISMATCH = "amount_mismatch"
    REFUSED = "refused"
    UNKNOWN = "unknown"


def _checkout_key(purchase: Purchase) -> str:
    # The creation time keeps keys unique even if purchase ids restart (a reset test
    # database against the same Stripe account): Stripe refuses a reused key.
    return f"purchase-{purchase.id}-{purchase.created_at:%Y%m%dT%H%M%S%f}-checkout"


def _credit_key(purchase: Purchase) -> str:
    return f"purchase:{purchase.id}:credit"


def lock_purchase(purchase_id: int) -> Purchase | None:
    return locked(Purchase, Purchase.id == purchase_id)


def _purchase_id_of(stripe_object: dict) -> int | None:
    """Read our purchase id from a session's reference or any object's metadata."""
    metadata = stripe_object.get("metadata") or {}
    for candidate in (stripe_object.get("client_reference_id"), metadata.get("purchase_id")):
        if isinstance(candidate, str) and candidate.isdigit():
            return int(candidate)
    return None


# -- starting a purchase --------------------------------------------------------------


def start_checkout(user: User, package_code: str, success_url: str, cancel_url: str) -> str:
    """Record a pending purchase and open a Checkout Session for it; return its URL.

    :raises ValidationError: no such package.
    :raises AccountTerminated: the account may not buy.
    :raises PaymentProviderError: Stripe refused or could not be reached; the pending
        purchase stays, and the next attempt reuses it with the same idempotency key.
    """
    package = policy.PACKAGES_BY_CODE.get(package_code)
    if package is None:
        raise ValidationError("Choose one of the packages.", field="package")
    if user.is_terminated:
        raise AccountTerminated("terminated accounts cannot buy credits")
    purchase = db.session.scalar(
        select(Purchase)
        .where(
            Purchase.user_id == user.id,
            Purchase.package_code == package.code,
            Purchase.status == PurchaseStatus.PENDING,
            Purchase.created_at >= utcnow() - PENDING_REUSE_WINDOW,
        )
        .order_by(Purchase.id.desc())
        .limit(1)
    )
    if purchase is None:
        purchase = Purchase(
            user_id=user.id,
            package_code=package.code,
            credits=package.credits,
            amount_cents=package.price_cents,
            currency=package.currency,
        )
        db.session.add(purchase)
        db.session.commit()
    references = {"purchase_id": str(purchase.id), "user_id": str(user.id)}
    params = {
        "mode": "payment",
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": package.currency,
                    "unit_amount": package.price_cents,
                    "product_data": {
                        "name": f"{package.name}: {package.credits:,} credits",
                    },
                },
            }
        ],
        "client_reference_id": str(purchase.id),
        "metadata": references,
        "payment_intent_data": {"metadata": references},
        "success_url": success_url,
        "cancel_url": cancel_url,
    }
    if user.stripe_customer_id:
        params["customer"] = user.stripe_customer_id
    else:
        params["customer_email"] = user.email
    session = gateway().create_checkout_session(params, _checkout_key(purchase))
    purchase.stripe_checkout_session_id = session.id
    db.session.commit()
    return session.url


def purchase_by_session(user_id: int, session_id: str) -> Purchase:
    """Return the customer's purchase for a Checkout Session id.

    :raises NotFound: no such session, or not this customer's.
    """
    purchase = db.session.scalar(
        select(Purchase).where(Purchase.stripe_checkout_session_id == session_id)
    )
    if purchase is None or purchase.user_id != user_id:
        raise NotFound("no such checkout")
    return purchase


def cancel_checkout(purchase: Purchase) -> None:
    """Close the checkout the customer walked away from, so it can no longer be paid."""
    if purchase.status != PurchaseStatus.PENDING or not purchase.stripe_checkout_session_id:
        return
    session = gateway().retrieve_checkout_session(purchase.stripe_checkout_session_id)
    if session["status"] == "open":
        session = gateway().expire_checkout_session(purchase.stripe_checkout_session_id)
    if session["status"] == "expired":
        _mark_unpaid(purchase.id, PurchaseStatus.EXPIRED, tell_customer=False)
    else:
        # It was paid meanwhile (another tab): credit it rather than cancel.
        fulfil_checkout(purchase.stripe_checkout_session_id)


# -- fulfilment -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Payment:
    payment_intent: str | None
    charge_id: str | None
    receipt_url: str | None


def _payment_details(session: dict) -> _Payment:
    intent = session.get("payment_intent")
    if not intent:
        return _Payment(None, None, None)
    if not isinstance(intent, dict):
        # Not expanded along with the session (see the gateway): one more call.
        intent = gateway().retrieve_payment_intent(intent)
    intent_id = intent.get("id")
    charge = intent.get("latest_charge")
    if isinstance(charge, dict):
        return _Payment(intent_id, charge.get("id"), charge.get("receipt_url"))
    return _Payment(intent_id, charge, None)


def fulfil_checkout(session_id: str) -> Fulfilment:
    """Credit the purchase behind a paid Checkout Session, exactly once (see `_fulfil`)."""
    outcome = _fulfil(session_id)
    FULFILMENTS.labels(outcome.value).inc()
    return outcome


def _fulfil(session_id: str) -> Fulfilment:
    """Credit the purchase behind a paid Checkout Session, exactly once.

    Safe to call any number of times, from the webhook, the success page and the
    reconciliation alike: the purchase row lock serialises concurrent calls, and the
    unique lot per purchase and ledger key make a second crediting impossible.

    :raises PaymentProviderError: Stripe could not be asked.
    """
    session = gateway().retrieve_checkout_session(session_id)
    purchase_id = _purchase_id_of(session)
    if purchase_id is None:
        log.warning("checkout session %s names no purchase", session_id)
        return Fulfilment.UNKNOWN
    paid = session.get("status") == "complete" and session.get("payment_status") == "paid"
    payment = _payment_details(session) if paid else _Payment(None, None, None)

    purchase = lock_purchase(purchase_id)
    if purchase is None or purchase.stripe_checkout_session_id not in (None, session_id):
        db.session.rollback()
        log.warning("checkout session %s does not belong to purchase %s", session_id, purchase_id)
        return Fulfilment.UNKNOWN
    purchase.stripe_checkout_session_id = session_id
    if purchase.credited_at is not None:
        db.session.rollback()
        return Fulfilment.ALREADY_CREDITED
    if not paid:
        db.session.commit()
        return Fulfilment.PROCESSING if session.get("status") == "complete" else Fulfilment.NOT_PAID
    _record_payment(purchase, payment)
    if session.get("amount_total") != purchase.amount_cents or (
        (session.get("currency") or "").lower() != purchase.currency
    ):
        return _hold_mismatch(purchase, session)
    if purchase.status not in CREDITABLE or purchase.refunded_cents >= purchase.amount_cents:
        # Refunded or disputed before we ever credited it: those credits must not exist.
        if purchase.refunded_cents >= purchase.amount_cents:
            purchase.status = PurchaseStatus.REFUNDED
        db.session.commit()
        return Fulfilment.REFUSED
    now = utcnow()
    purchase.status = (
        PurchaseStatus.PARTIALLY_REFUNDED if purchase.refunded_cents else PurchaseStatus.CREDITED
    )
    purchase.credited_at = now
    ledger.credit_purchase(purchase, _credit_key(purchase))
    if purchase.refunded_cents:
        _match_outside_refunds(purchase)
    audit("purchase.credited", "purchase", purchase.id, after={"credits": purchase.credits})
    queue_email(
        _customer_email(purchase),
        f"{purchase.credits:,} credits added to your account",
        f"Thank you for your purchase. {purchase.credits:,} credits "
        f"({format_cents(purchase.amount_cents, purchase.currency)}) are now in your balance.",
    )
    db.session.commit()
    return Fulfilment.CREDITED


def _record_payment(purchase: Purchase, payment: _Payment) -> None:
    purchase.paid_at = purchase.paid_at or utcnow()
    purchase.stripe_payment_intent_id = payment.payment_intent or purchase.stripe_payment_intent_id
    purchase.stripe_charge_id = payment.charge_id or purchase.stripe_charge_id
    purchase.receipt_url = payment.receipt_url or purchase.receipt_url


def _hold_mismatch(purchase: Purchase, session: dict) -> Fulfilment:
    """Keep a payment whose amount does not match its package away from the balance."""
    if purchase.status == PurchaseStatus.PAID:
        # Already held and reported when fulfilment first saw it.
        db.session.commit()
        return Fulfilment.AMOUNT_MISMATCH
    purchase.status = PurchaseStatus.PAID
    paid = format_cents(session.get("amount_total") or 0, session.get("currency") or "usd")
    expected = format_cents(purchase.amount_cents, purchase.currency)
    audit(
        "purchase.amount_mismatch",
        "purchase",
        purchase.id,
        before={"expected_cents": purchase.amount_cents, "currency": purchase.currency},
        after={"paid_cents": session.get("amount_total"), "currency": session.get("currency")},
    )
    notify_staff(
        f"Payment anomaly on purchase {purchase.id}",
        f"Checkout session {session.get('id')} was paid {paid}, but purchase {purchase.id} "
        f"({purchase.package_code}) expected {expected}. No credits were added; please review.",
    )
    db.session.commit()
    return Fulfilment.AMOUNT_MISMATCH


def _customer_email(purchase: Purchase) -> str:
    return db.session.scalar(select(User.email).where(User.id == purchase.user_id))


# -- payments that did not happen -----------------------------------------------------


def _mark_unpaid(purchase_id: int, status: PurchaseStatus, tell_customer: bool) -> bool:
    purchase = lock_purchase(purchase_id)
    if purchase is None or purchase.status not in (PurchaseStatus.PENDING, PurchaseStatus.FAILED):
        db.session.rollback()
        return False
    purchase.status = status
    if tell_customer:
        what = "could not be completed" if status == PurchaseStatus.FAILED else "expired"
        queue_email(
            _customer_email(purchase),
            f"Your {purchase.package_code.capitalize()} purchase {what}",
            f"Your payment of {format_cents(purchase.amount_cents, purchase.currency)} {what}, "
            "so no credits were added and nothing was charged. You can buy again at any time.",
        )
    db.session.commit()
    return True


def checkout_failed(session_id: str) -> bool:
    """Mark a purchase failed when its delayed payment did not go through."""
    session = gateway().retrieve_checkout_session(session_id)
    purchase_id = _purchase_id_of(session)
    if purchase_id is None or session.get("payment_status") == "paid":
        return False
    return _mark_unpaid(purchase_id, PurchaseStatus.FAILED, tell_customer=True)


def checkout_expired(session_id: str) -> bool:
    """Mark a purchase expired, if Stripe confirms its session really is."""
    session = gateway().retrieve_checkout_session(session_id)
    purchase_id = _purchase_id_of(session)
    if purchase_id is None or session.get("status") != "expired":
        return False
    return _mark_unpaid(purchase_id, PurchaseStatus.EXPIRED, tell_customer=True)


def payment_attempt_failed(payment_intent: dict) -> bool:
    """Mark a pending purchase failed after a declined card (the customer may retry)."""
    purchase_id = _purchase_id_of(payment_intent)
    if purchase_id is None:
        return False
    return _mark_unpaid(purchase_id, PurchaseStatus.FAILED, tell_customer=False)


# -- refunds and disputes reported by Stripe ------------------------------------------


def _purchase_for_payment(payment_intent: str | None) -> Purchase | None:
    if not isinstance(payment_intent, str) or not payment_intent:
        return None
    found = db.session.scalar(
        select(Purchase.id).where(Purchase.stripe_payment_intent_id == payment_intent)
    )
    if found is None:
        found = _purchase_id_of(gateway().retrieve_payment_intent(payment_intent))
    return lock_purchase(found) if found is not None else None


def sync_refunds(payment_intent: str | None) -> Purchase | None:
    """Bring a purchase's refunded amount in line with Stripe's charge, as it is now.

    Refunds issued outside the portal (Stripe's dashboard) remove the matching share of
    the purchase's unused credits.
    """
    if not isinstance(payment_intent, str) or not payment_intent:
        return None
    intent = gateway().retrieve_payment_intent(payment_intent)
    charge = intent.get("latest_charge")
    if not isinstance(charge, dict):
        return None
    purchase = _purchase_for_payment(payment_intent)
    if purchase is None:
        db.session.rollback()
        return None
    before = purchase.refunded_cents
    purchase.stripe_payment_intent_id = purchase.stripe_payment_intent_id or payment_intent
    purchase.refunded_cents = min(int(charge.get("amount_refunded") or 0), purchase.amount_cents)
    fully_refunded = purchase.refunded_cents == purchase.amount_cents
    if purchase.status != PurchaseStatus.DISPUTED and purchase.credited_at is not None:
        purchase.status = (
            PurchaseStatus.REFUNDED
            if fully_refunded
            else PurchaseStatus.PARTIALLY_REFUNDED
            if purchase.refunded_cents
            else PurchaseStatus.CREDITED
        )
    elif fully_refunded and purchase.status in CREDITABLE:
        # Refunded before it was ever credited: it must never be credited now.
        purchase.status = PurchaseStatus.REFUNDED
    if purchase.credited_at is not None:
        _match_outside_refunds(purchase)
    if before != purchase.refunded_cents:
        audit(
            "purchase.refund_synced",
            "purchase",
            purchase.id,
            before={"refunded_cents": before},
            after={"refunded_cents": purchase.refunded_cents},
        )
    db.session.commit()
    return purchase


def _match_outside_refunds(purchase: Purchase) -> None:
    """Keep the credits removed for refunds made outside the portal in step with them.

    Money refunded through Stripe's dashboard removes the matching share of unused
    credits (rounded up: refunding part of a credit's price removes that credit); if
    such a refund later fails, the credits come back.
    """
    at_stripe = db.session.scalar(
        select(func.coalesce(func.sum(Refund.amount_cents), 0)).where(
            Refund.purchase_id == purchase.id,
            Refund.refund_request_id.is_not(None),
            Refund.stripe_refund_id.is_not(None),
            Refund.status.in_(
                [RefundStatus.PENDING, RefundStatus.REQUIRES_ACTION, RefundStatus.SUCCEEDED]
            ),
        )
    )
    outside_cents = max(purchase.refunded_cents - at_stripe, 0)
    due = -(-outside_cents * purchase.credits // purchase.amount_cents)
    outside_entries = db.session.execute(
        select(func.count(), func.coalesce(func.sum(LedgerEntry.credits), 0)).where(
            LedgerEntry.purchase_id == purchase.id,
            LedgerEntry.kind.in_([EntryKind.REFUND_CLAW_BACK, EntryKind.CLAW_BACK_REVERSAL]),
            LedgerEntry.refund_id.is_(None),
        )
    ).one()
    count, net = outside_entries
    removed = -net
    key = f"purchase:{purchase.id}:outside-refund:{count + 1}"
    if due > removed:
        credits = min(due - removed, ledger.unused_credits(purchase))
        if credits > 0:
            ledger.claw_back(purchase, credits, key, memo="refunded through Stripe")
    elif due < removed:
        ledger.give_back(purchase, removed - due, key, memo="refund through Stripe failed")


def record_refund(refund: dict) -> Refund | None:
    """Keep our copy of a Stripe refund (including dashboard ones) in step with Stripe."""
    stripe_id = refund.get("id")
    intent = refund.get("payment_intent")
    if not isinstance(stripe_id, str) or not isinstance(intent, str) or not intent:
        return None
    purchase = _purchase_for_payment(intent)
    if purchase is None:
        db.session.rollback()
        return None
    metadata = refund.get("metadata") or {}
    ours, attempt = metadata.get("refund_id"), metadata.get("attempt")
    row = db.session.scalar(select(Refund).where(Refund.stripe_refund_id == stripe_id))
    if row is None and isinstance(ours, str) and ours.isdigit():
        candidate = db.session.get(Refund, int(ours))
        # Only news of the current attempt counts: a late event about an earlier,
        # failed attempt must not undo the retry.
        if (
            candidate is not None
            and attempt == str(candidate.attempt)
            and (candidate.stripe_refund_id in (None, stripe_id))
        ):
            row = candidate
        elif candidate is not None:
            db.session.rollback()
            return candidate
    if row is None:
        row = Refund(
            purchase_id=purchase.id,
            amount_cents=int(refund.get("amount") or 0),
            currency=refund.get("currency") or purchase.currency,
            reason=refund.get("reason") or "requested_by_customer",
            idempotency_key=f"stripe:{stripe_id}",
        )
        db.session.add(row)
    row.stripe_refund_id = stripe_id
    status = refund.get("status")
    if row.refund_request_id is not None:
        # The portal's own refunds settle through the functions that also move credits.
        db.session.commit()
        if status == RefundStatus.SUCCEEDED:
            return refund_succeeded(row.id)
        if status in (RefundStatus.FAILED, RefundStatus.CANCELED):
            return refund_failed(row.id, refund.get("failure_reason") or status)
        return row
    if status in {member.value for member in RefundStatus}:
        row.status = RefundStatus(status)
    row.failure_reason = refund.get("failure_reason") or row.failure_reason
    row.updated_at = utcnow()
    db.session.commit()
    return row


def refund_changed(refund: dict) -> Refund | None:
    """Record a refund's new state, then re-read the charge so amounts and credits agree."""
    row = record_refund(refund)
    sync_refunds(refund.get("payment_intent"))
    return row


def dispute_opened(dispute: dict) -> Purchase | None:
    """Mark the purchase disputed, hold its unused credits and tell staff."""
    purchase = _purchase_for_payment(dispute.get("payment_intent"))
    if purchase is None:
        db.session.rollback()
        return None
    if purchase.status != PurchaseStatus.DISPUTED:
        before = purchase.status.value
        purchase.status = PurchaseStatus.DISPUTED
        held = None
        if purchase.credited_at is not None:
            held = ledger.hold_for_dispute(purchase, f"dispute:{dispute.get('id')}:hold")
        audit(
            "purchase.disputed",
            "purchase",
            purchase.id,
            before={"status": before},
            after={"dispute": dispute.get("id"), "credits_held": -held.credits if held else 0},
        )
        notify_staff(
            f"Dispute opened on purchase {purchase.id}",
            f"Stripe dispute {dispute.get('id')} ({dispute.get('reason') or 'no reason given'}) "
            f"was opened for {format_cents(int(dispute.get('amount') or 0))}. "
            f"{-held.credits if held else 0} unused credits are on hold.",
        )
    db.session.commit()
    return purchase


def dispute_closed(dispute: dict) -> Purchase | None:
    """Release held credits when a dispute is won; keep them held when it is lost."""
    purchase = _purchase_for_payment(dispute.get("payment_intent"))
    if purchase is None:
        db.session.rollback()
        return None
    outcome = dispute.get("status")
    hold = db.session.scalar(
        select(LedgerEntry).where(
            LedgerEntry.idempotency_key == f"dispute:{dispute.get('id')}:hold"
        )
    )
    credit_now = None
    if outcome == "won" and purchase.status == PurchaseStatus.DISPUTED:
        if hold is not None:
            ledger.restore(hold, f"dispute:{dispute.get('id')}:release", memo="dispute won")
        if purchase.credited_at is None:
            # Disputed before its credits were added: it is creditable again.
            purchase.status = PurchaseStatus.PAID
            credit_now = purchase.stripe_checkout_session_id
        else:
            purchase.status = (
                PurchaseStatus.PARTIALLY_REFUNDED
                if purchase.refunded_cents
                else PurchaseStatus.CREDITED
            )
    audit("purchase.dispute_closed", "purchase", purchase.id, after={"outcome": outcome})
    notify_staff(
        f"Dispute closed on purchase {purchase.id}: {outcome}",
        f"Stripe dispute {dispute.get('id')} closed as {outcome}.",
    )
    db.session.commit()
    if credit_now:
        fulfil_checkout(credit_now)
    return purchase


# -- reconciliation ---------------------------------------------------------------------


@dataclass(frozen=True)
class ReconcileResult:
    session_id: str
    purchase_id: int | None
    outcome: Fulfilment


def reconcile(since: datetime) -> list[ReconcileResult]:
    """Run fulfilment on every completed Checkout Session since `since`; return them all.

    This is how a payment whose webhook was lost still gets its credits.
    """
    results = []
    for session in gateway().completed_checkout_sessions(int(since.astimezone(UTC).timestamp())):
        outcome = fulfil_checkout(session["id"])
        results.append(ReconcileResult(session["id"], _purchase_id_of(session), outcome))
    return results


# -- refunds the portal sends -------------------------------------------------------------


def _unfinished_after() -> timedelta:
    """A send still without Stripe's answer after this long was cut off: send it again."""
    return timedelta(seconds=current_app.config["REFUND_RESEND_AFTER_SECONDS"])


def refund_key(refund: Refund) -> str:
    """The Stripe idempotency key of a refund's current attempt."""
    return f"refund-{refund.id}-{refund.created_at:%Y%m%dT%H%M%S%f}-attempt-{refund.attempt}"


def lock_refund(refund_id: int, skip_locked: bool = False) -> Refund | None:
    return locked(Refund, Refund.id == refund_id, skip_locked=skip_locked)


def due_refund_ids(now: datetime, limit: int = 50) -> list[int]:
    """Refunds to send now: scheduled ones past their undo window, and sends left unfinished."""
    unfinished = (Refund.status == RefundStatus.PENDING) & Refund.stripe_refund_id.is_(None)
    return list(
        db.session.scalars(
            select(Refund.id)
            .where(
                ((Refund.status == RefundStatus.SCHEDULED) & (Refund.scheduled_for <= now))
                | (unfinished & (Refund.sent_at <= now - _unfinished_after()))
            )
            .order_by(Refund.id)
            .limit(limit)
        )
    )


def send_refund(refund_id: int, now: datetime) -> Refund | None:
    """Send one due refund to Stripe, exactly once, and record what Stripe answered.

    The refund is claimed (marked pending) in its own transaction before Stripe is
    called, so two workers never send it twice; if the process dies mid-call, the next
    run sends it again with the same idempotency key, which Stripe answers with the
    refund it already made.
    """
    refund = lock_refund(refund_id, skip_locked=True)
    due = refund is not None and (
        (refund.status == RefundStatus.SCHEDULED and refund.scheduled_for <= now)
        or (
            # Left unfinished by a worker that stopped mid-call, not one still calling.
            refund.status == RefundStatus.PENDING
            and refund.stripe_refund_id is None
            and refund.sent_at <= now - _unfinished_after()
        )
    )
    if not due:
        db.session.rollback()
        return None
    refund.status = RefundStatus.PENDING
    refund.sent_at = now
    purchase = db.session.get(Purchase, refund.purchase_id)
    payment_intent = purchase.stripe_payment_intent_id
    key, amount, reason = refund_key(refund), refund.amount_cents, refund.reason
    metadata = {
        "refund_id": str(refund.id),
        "attempt": str(refund.attempt),
        "purchase_id": str(purchase.id),
    }
    db.session.commit()
    if payment_intent is None:
        return refund_failed(refund_id, "The purchase has no Stripe payment to refund.")
    try:
        answer = gateway().create_refund(payment_intent, amount, reason, key, metadata)
    except PaymentProviderError as error:
        if error.retryable:
            log.warning("refund %s not sent yet (%s); it will be retried", refund_id, error)
            return refund
        return refund_failed(refund_id, str(error))
    return refund_answered(refund_id, answer)


def refund_answered(refund_id: int, answer: dict) -> Refund | None:
    """Store Stripe's refund id and status on our record, and act on a final status."""
    refund = lock_refund(refund_id)
    if refund is None:
        db.session.rollback()
        return None
    # Stripe's answer names the refund of this attempt (a retry is a new Stripe refund).
    refund.stripe_refund_id = answer.get("id") or refund.stripe_refund_id
    status = answer.get("status")
    db.session.commit()
    if status == RefundStatus.SUCCEEDED:
        return refund_succeeded(refund_id)
    if status in (RefundStatus.FAILED, RefundStatus.CANCELED):
        return refund_failed(refund_id, answer.get("failure_reason") or status)
    return refund


def _request_event(refund: Refund, kind: str, body: str) -> None:
    if refund.refund_request_id is None:
        return
    from portal.refunds.models import RefundRequestEvent

    db.session.add(RefundRequestEvent(request_id=refund.refund_request_id, kind=kind, body=body))


def refund_succeeded(refund_id: int) -> Refund | None:
    """Mark a refund settled and tell the customer (once)."""
    refund = lock_refund(refund_id)
    if refund is None or refund.status == RefundStatus.SUCCEEDED:
        db.session.rollback()
        return refund
    refund.status = RefundStatus.SUCCEEDED
    REFUNDS.labels("succeeded").inc()
    purchase = db.session.get(Purchase, refund.purchase_id)
    amount = format_cents(refund.amount_cents, refund.currency)
    _request_event(
        refund,
        "refund_settled",
        f"{amount} was refunded to your original payment "
        "method. Banks usually show it within "
        f"{policy.PAYOUT_BUSINESS_DAYS_MIN}-{policy.PAYOUT_BUSINESS_DAYS_MAX} "
        "business days.",
    )
    audit("refund.succeeded", "refund", refund.id, after={"amount_cents": refund.amount_cents})
    queue_email(
        _customer_email(purchase),
        f"Your refund of {amount} was sent",
        f"We refunded {amount} to the card or account you paid with. It usually shows "
        f"within {policy.PAYOUT_BUSINESS_DAYS_MIN}-{policy.PAYOUT_BUSINESS_DAYS_MAX} "
        "business days.",
    )
    db.session.commit()
    return refund


def refund_failed(refund_id: int, why: str) -> Refund | None:
    """Record a refund that did not go through: give the credits back, free the amount.

    The request returns to review so that staff see it and can retry.
    """
    from portal.refunds.models import RefundRequest, RequestStatus

    refund = lock_refund(refund_id)
    if refund is None or refund.status in (RefundStatus.FAILED, RefundStatus.CANCELED):
        db.session.rollback()
        return refund
    purchase = lock_purchase(refund.purchase_id)
    refund.status = RefundStatus.FAILED
    REFUNDS.labels("failed").inc()
    refund.failure_reason = why[:500]
    purchase.committed_refund_cents -= refund.amount_cents
    reverse_claw_back(refund, "refund did not go through")
    amount = format_cents(refund.amount_cents, refund.currency)
    if refund.refund_request_id is not None:
        request = db.session.get(RefundRequest, refund.refund_request_id)
        if request.status == RequestStatus.APPROVED:
            request.transition(RequestStatus.IN_REVIEW)
            request.decided_at = None
            request.decided_by_id = None
        _request_event(
            refund,
            "refund_failed",
            f"The refund of {amount} did not go through "
            f"({why}). The credits are back in your balance; our team will follow up.",
        )
    audit("refund.failed", "refund", refund.id, after={"reason": why[:200]})
    queue_email(
        _customer_email(purchase),
        f"Your refund of {amount} did not go through",
        "The refund could not be completed, so the credits it would have removed are "
        "back in your balance. Our team will contact you about another way.",
    )
    notify_staff(f"Refund {refund.id} failed", f"Refund {refund.id} of {amount} failed: {why}")
    db.session.commit()
    return refund


def reverse_claw_back(refund: Refund, why: str, suffix: str = "reversal") -> None:
    """Give back the credits the refund's current attempt removed, if it removed any."""
    taken = db.session.scalar(
        select(LedgerEntry).where(LedgerEntry.idempotency_key == claw_back_key(refund))
    )
    if taken is not None:
        ledger.restore(taken, f"{claw_back_key(refund)}:{suffix}", memo=why)


def claw_back_key(refund: Refund) -> str:
    return f"refund:{refund.id}:attempt-{refund.attempt}:claw-back"


def send_due_refunds(now: datetime) -> int:
    """Send every refund that is due; return how many were sent or settled."""
    sent = 0
    for refund_id in due_refund_ids(now):
        if send_refund(refund_id, now) is not None:
            sent += 1
    return sent
