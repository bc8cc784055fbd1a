"""Stripe webhook intake: verify, record once, dispatch to the billing services.

Stripe may deliver an event more than once and in any order, so every handler is
idempotent and looks the object up at Stripe rather than trusting the event's copy.
"""

import logging

from flask import Blueprint, jsonify, request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from portal.billing import services
from portal.billing.gateway import InvalidWebhook, gateway
from portal.billing.models import StripeEvent
from portal.errors import PaymentProviderError
from portal.extensions import csrf, db
from portal.ops.metrics import WEBHOOK_EVENTS
from portal.timeutil import utcnow

log = logging.getLogger(__name__)

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")
csrf.exempt(bp)


def _session_id(obj: dict) -> str:
    return obj["id"]


HANDLERS = {
    "checkout.session.completed": lambda obj: services.fulfil_checkout(_session_id(obj)),
    "checkout.session.async_payment_succeeded": lambda obj: services.fulfil_checkout(
        _session_id(obj)
    ),
    "checkout.session.async_payment_failed": lambda obj: services.checkout_failed(_session_id(obj)),
    "checkout.session.expired": lambda obj: services.checkout_expired(_session_id(obj)),
    "payment_intent.payment_failed": services.payment_attempt_failed,
    "charge.refunded": lambda obj: services.sync_refunds(obj["payment_intent"]),
    "refund.created": services.refund_changed,
    "refund.updated": services.refund_changed,
    "refund.failed": services.refund_changed,
    "charge.dispute.created": services.dispute_opened,
    "charge.dispute.closed": services.dispute_closed,
}


def _bad_request(message: str):
    response = jsonify({"error": "invalid_webhook", "message": message})
    response.status_code = 400
    return response


def _record(event: dict) -> StripeEvent:
    """Store the event once; a redelivery finds the row that is already there."""
    row = StripeEvent(stripe_event_id=event["id"], type=event["type"], payload=event)
    db.session.add(row)
    try:
        db.session.commit()
        return row
    except IntegrityError:
        db.session.rollback()
        return db.session.scalar(
            select(StripeEvent).where(StripeEvent.stripe_event_id == event["id"])
        )


@bp.post("/stripe")
def stripe_webhook():
    payload = request.get_data(cache=False)
    try:
        event = gateway().verify_event(payload, request.headers.get("Stripe-Signature"))
    except InvalidWebhook as error:
        log.warning("rejected Stripe webhook: %s", error)
        return _bad_request(str(error))
    if not isinstance(event.get("id"), str) or not isinstance(event.get("type"), str):
        return _bad_request("event without id or type")

    row = _record(event)
    if row.processed_at is not None:
        return jsonify({"received": True, "duplicate": True})

    handler = HANDLERS.get(event["type"])
    if handler is None:
        log.info("ignored Stripe event %s of type %s", event["id"], event["type"])
        outcome = "ignored"
    else:
        obj = event["data"]["object"]
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
            return _bad_request("event object without id")
        try:
            result = handler(obj)
        except PaymentProviderError:
            db.session.rollback()
            # 503 makes Stripe deliver again later, when it can be looked up.
            return jsonify({"error": "stripe_unavailable"}), 503
        outcome = str(getattr(result, "value", result is not None and result is not False))
    row = db.session.get(StripeEvent, row.id)
    row.processed_at = utcnow()
    row.outcome = outcome[:255]
    db.session.commit()
    WEBHOOK_EVENTS.labels(event["type"], outcome).inc()
    log.info("Stripe event %s (%s): %s", event["id"], event["type"], outcome)
    return jsonify({"received": True, "outcome": outcome})
