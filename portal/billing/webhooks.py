"""Stripe webhook intake: verify, record once, dispatch to the billing services and to
money_back.

Stripe may deliver an event more than once and in any order, so every handler is
idempotent and looks the object up at Stripe rather than trusting the event's copy.
The answer tells Stripe whether to deliver again: 400 for a body that is not an event,
503 while Stripe cannot be asked (it retries), and 200 for everything handled, including
events about objects Stripe does not have (retrying would not change that).
"""

import logging
import re

from flask import Blueprint, jsonify, request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, StatementError

from portal.billing import auto_recharge, fulfilment
from portal.billing.gateway import STRIPE_ID, InvalidWebhook, NoSuchObject, gateway
from portal.billing.models import StripeEvent
from portal.billing.money_back import reported
from portal.db import db
from portal.errors import PaymentProviderError
from portal.extensions import csrf
from portal.ops.counters import WEBHOOK_EVENTS
from portal.timeutil import utcnow

log = logging.getLogger(__name__)

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")
csrf.exempt(bp)


def _session_id(obj: dict) -> str:
    return obj["id"]


def _checkout_completed(obj: dict):
    # A session's mode never changes, so the event's copy can say which life cycle it
    # belongs to: a card set up for auto-recharge, or a purchase paid.
    if obj.get("mode") == "setup":
        return auto_recharge.card_set_up(_session_id(obj))
    return fulfilment.fulfil_checkout(_session_id(obj))


def _payment_failed(obj: dict):
    # A recharge is settled as Stripe has it; a Checkout purchase's declined attempt is
    # marked failed (the customer may still try another card in Checkout).
    settled = auto_recharge.payment_intent_changed(obj)
    return settled if settled is not None else fulfilment.payment_attempt_failed(obj)


HANDLERS = {
    "checkout.session.completed": _checkout_completed,
    "checkout.session.async_payment_succeeded": lambda obj: fulfilment.fulfil_checkout(
        _session_id(obj)
    ),
    "checkout.session.async_payment_failed": lambda obj: fulfilment.checkout_failed(
        _session_id(obj)
    ),
    "checkout.session.expired": lambda obj: fulfilment.checkout_expired(_session_id(obj)),
    "payment_intent.payment_failed": _payment_failed,
    # A recharge has no session: its PaymentIntent's events are the ones to follow.
    "payment_intent.succeeded": auto_recharge.payment_intent_changed,
    "payment_intent.canceled": auto_recharge.payment_intent_changed,
    "charge.refunded": lambda obj: reported.sync_refunds(obj.get("payment_intent")),
    "refund.created": lambda obj: reported.refund_changed(obj["id"]),
    "refund.updated": lambda obj: reported.refund_changed(obj["id"]),
    "refund.failed": lambda obj: reported.refund_changed(obj["id"]),
    # Every dispute event is only a reason to ask Stripe how the dispute stands now.
    "charge.dispute.created": lambda obj: fulfilment.dispute_changed(obj["id"]),
    "charge.dispute.updated": lambda obj: fulfilment.dispute_changed(obj["id"]),
    "charge.dispute.closed": lambda obj: fulfilment.dispute_changed(obj["id"]),
    "charge.dispute.funds_withdrawn": lambda obj: fulfilment.dispute_changed(obj["id"]),
    "charge.dispute.funds_reinstated": lambda obj: fulfilment.dispute_changed(obj["id"]),
}


# The outcome of an event whose object Stripe answers it does not have: acknowledged and
# recorded, so that Stripe stops delivering it, and nothing else.
NOT_AT_STRIPE = "ignored: not at Stripe"

# Stripe's ids and event types; anything else in a signed body is refused, not stored.
EVENT_TYPE = re.compile(r"[a-z0-9_.]{1,100}")


def _looks_like(value, pattern: re.Pattern) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def _bad_request(message: str):
    response = jsonify({"error": "invalid_webhook", "message": message})
    response.status_code = 400
    return response


def _record(event: dict) -> StripeEvent | None:
    """Store the event once; a redelivery finds the row that is already there.

    Returns None for a body the database cannot store (text no column accepts).
    """
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
    except (StatementError, UnicodeEncodeError):
        db.session.rollback()
        return None


@bp.post("/stripe")
def stripe_webhook():
    payload = request.get_data(cache=False)
    try:
        event = gateway().verify_event(payload, request.headers.get("Stripe-Signature"))
    except InvalidWebhook as error:
        log.warning("rejected Stripe webhook: %s", error)
        return _bad_request(str(error))
    if not (_looks_like(event.get("id"), STRIPE_ID) and _looks_like(event.get("type"), EVENT_TYPE)):
        return _bad_request("event without a valid id or type")
    obj = event["data"]["object"]
    if event["type"] in HANDLERS and not (
        isinstance(obj, dict) and _looks_like(obj.get("id"), STRIPE_ID)
    ):
        return _bad_request("event object without a valid id")

    row = _record(event)
    if row is None:
        return _bad_request("event body cannot be stored")
    if row.processed_at is not None:
        return jsonify({"received": True, "duplicate": True})

    handler = HANDLERS.get(event["type"])
    if handler is None:
        log.info("ignored Stripe event %s of type %s", event["id"], event["type"])
        outcome = "ignored"
    else:
        try:
            result = handler(obj)
            outcome = str(getattr(result, "value", result is not None and result is not False))
        except NoSuchObject as error:
            db.session.rollback()
            log.warning(
                "Stripe event %s names an object Stripe does not have: %s", event["id"], error
            )
            outcome = NOT_AT_STRIPE
        except PaymentProviderError:
            db.session.rollback()
            # 503 makes Stripe deliver again later, when it can be looked up.
            return jsonify({"error": "stripe_unavailable"}), 503
    row = db.session.get(StripeEvent, row.id)
    row.processed_at = utcnow()
    row.outcome = outcome[:255]
    db.session.commit()
    WEBHOOK_EVENTS.labels(event["type"], outcome).inc()
    log.info("Stripe event %s (%s): %s", event["id"], event["type"], outcome)
    return jsonify({"received": True, "outcome": outcome})
