"""Helpers for the Checkout tests: buying, paying at the sandbox, signed webhooks, reads."""

import json
import secrets
import time
from urllib.parse import urlsplit

import stripe
from flask import current_app
from flask.testing import FlaskClient
from sqlalchemy import func, select

from portal.accounts.models import User
from portal.audit import AuditLogEntry
from portal.billing import checkout
from portal.billing.gateway import gateway
from portal.billing.models import Purchase, PurchaseOrigin, Refund, StripeEvent
from portal.db import db
from portal.ledger.models import CreditLot, EntryKind, LedgerEntry
from portal.notifications.models import OutboxEmail
from portal.sandbox.store import CARD_SUCCEEDS, SandboxStore
from tests.factories import csrf_token
from tests.html_text import visible_text

SUCCESS_URL = "http://portal.test/credits/success?session_id={CHECKOUT_SESSION_ID}"
CANCEL_URL = "http://portal.test/credits/cancel"


def sandbox() -> SandboxStore:
    """The current app's Stripe stand-in (shared by every test of the app)."""
    return current_app.extensions["stripe_sandbox"]


plain = visible_text


# -- buying and paying ------------------------------------------------------------------


def post_buy(
    client: FlaskClient, package: str = "pro", with_csrf: bool = True, save_card: bool = False
):
    data = {"package": package}
    if save_card:
        data["save_card"] = "y"
    if with_csrf:
        data["csrf_token"] = csrf_token(client, "/credits/buy")
    return client.post("/credits/buy", data=data)


def session_id_of(response) -> str:
    """The Checkout Session id a Buy response redirects to (the sandbox's hosted page)."""
    assert response.status_code == 303, response.get_data(as_text=True)
    path = urlsplit(response.headers["Location"]).path
    assert path.startswith("/sandbox/checkout/cs_"), path
    return path.rsplit("/", 1)[1]


def buy(client: FlaskClient, package: str = "pro") -> str:
    """Press Buy for `package`; return the Checkout Session id."""
    return session_id_of(post_buy(client, package))


def pay_on_page(client: FlaskClient, session_id: str, card: str = CARD_SUCCEEDS):
    """Pay on the sandbox's hosted page with a test card; return the (redirect) response."""
    token = csrf_token(client, f"/sandbox/checkout/{session_id}")
    return client.post(
        f"/sandbox/checkout/{session_id}/pay", data={"card": card, "csrf_token": token}
    )


def open_checkout(user: User, package: str = "pro") -> tuple[int, str]:
    """Start a checkout through the service; return (purchase id, session id)."""
    checkout.start_checkout(user, package, SUCCESS_URL, CANCEL_URL)
    purchase = db.session.scalar(
        select(Purchase).where(Purchase.user_id == user.id).order_by(Purchase.id.desc()).limit(1)
    )
    return purchase.id, purchase.stripe_checkout_session_id


def pay_in_store(session_id: str, card: str = CARD_SUCCEEDS) -> str:
    store = sandbox()
    with store.lock:
        outcome = store.pay(session_id, card)
    db.session.expire_all()
    return outcome


def settle_delayed(session_id: str, succeeded: bool) -> None:
    store = sandbox()
    with store.lock:
        store.settle_delayed(session_id, succeeded=succeeded)
    db.session.expire_all()


def refund_in_store(payment_intent: str, amount_cents: int, metadata: dict | None = None) -> dict:
    """Refund as from Stripe's dashboard (not through the portal)."""
    store = sandbox()
    with store.lock:
        refund = store.create_refund(
            {
                "payment_intent": payment_intent,
                "amount": str(amount_cents),
                "metadata": metadata or {},
            }
        )
    db.session.expire_all()
    return refund


def dispute_in_store(session_id: str, inquiry: bool = False) -> dict:
    """The cardholder's bank disputes the session's payment (a chargeback, or an inquiry)."""
    store = sandbox()
    with store.lock:
        charge = store.payment_intents[store.session(session_id)["payment_intent"]]
        dispute = store.open_dispute(charge["latest_charge"], inquiry=inquiry)
    db.session.expire_all()
    return dict(dispute)


def close_dispute_in_store(dispute_id: str, won: bool) -> dict:
    store = sandbox()
    with store.lock:
        dispute = store.close_dispute(dispute_id, won=won)
    db.session.expire_all()
    return dict(dispute)


def expire_in_store(session_id: str) -> None:
    store = sandbox()
    with store.lock:
        store.expire_session(session_id)
    db.session.expire_all()


def session_at_stripe(session_id: str) -> dict:
    store = sandbox()
    with store.lock:
        return json.loads(json.dumps(store.session(session_id)))


def payment_intent_of(session_id: str) -> str:
    intent = session_at_stripe(session_id)["payment_intent"]
    assert intent, f"session {session_id} has no payment intent"
    return intent


# -- auto-recharge: a card saved for later, charged off-session ---------------------------

SETUP_SUCCESS_URL = "http://portal.test/account/auto-recharge/card?session_id={CHECKOUT_SESSION_ID}"
SETUP_CANCEL_URL = "http://portal.test/account/auto-recharge"
AUTHENTICATED_URL = "http://portal.test/account/auto-recharge/authenticated"


def open_card_setup(user: User) -> str:
    """Start saving a card for auto-recharge, with the request the portal sends; return
    the setup-mode Checkout Session id."""
    metadata = {"user_id": str(user.id), "purpose": "auto_recharge"}
    params = {
        "mode": "setup",
        "customer": checkout.stripe_customer(user),
        # Named payment_method_types before the API version the portal pins.
        "allowed_payment_method_types": ["card"],
        "metadata": metadata,
        "setup_intent_data": {"description": "Card for auto-recharge", "metadata": metadata},
        "success_url": SETUP_SUCCESS_URL,
        "cancel_url": SETUP_CANCEL_URL,
    }
    return gateway().create_checkout_session(params, f"card-setup-{secrets.token_hex(6)}").id


def set_up_card(client: FlaskClient, user: User, card: str = CARD_SUCCEEDS) -> str:
    """Save `card` for `user` on the sandbox's setup page; return the PaymentMethod id."""
    session_id = open_card_setup(user)
    response = pay_on_page(client, session_id, card)
    assert response.status_code == 303, response.get_data(as_text=True)
    assert session_id in response.headers["Location"]
    session = gateway().retrieve_setup_session(session_id)
    return session["setup_intent"]["payment_method"]["id"]


def recharge_params(user: User, payment_method: str, amount_cents: int = 2000) -> dict:
    """The PaymentIntent the auto-recharge worker makes for `user` (then confirms)."""
    return {
        "amount": amount_cents,
        "currency": "usd",
        "customer": user.stripe_customer_id,
        "payment_method": payment_method,
        "description": "Auto-recharge: Pro package, 300 credits",
        # No purchase of this id exists: the webhook handlers find nothing to change.
        "metadata": {"purchase_id": "999999", "user_id": str(user.id)},
    }


def charge_saved_card(user: User, payment_method: str, key: str | None = None) -> dict:
    """Charge `payment_method` off-session through the gateway as the worker does (make
    the PaymentIntent, then confirm it); the PaymentIntent."""
    key = key or f"recharge-{secrets.token_hex(6)}"
    intent = gateway().create_payment_intent(recharge_params(user, payment_method), key)
    return gateway().confirm_off_session(intent["id"], f"{key}-confirm")


def invoice_recharge(user: User, payment_intent: str, key: str | None = None) -> dict:
    """Invoice a paid recharge through the gateway, as the portal will; the invoice."""
    return gateway().invoice_payment(
        user.stripe_customer_id,
        payment_intent,
        {"amount": 2000, "currency": "usd", "description": "Pro package, 300 credits"},
        {"purchase_id": "999999"},
        key or f"recharge-invoice-{secrets.token_hex(6)}",
    )


def authenticate_on_page(client: FlaskClient, intent_id: str, outcome: str = "complete"):
    """Complete (or fail) the bank's check on the sandbox's 3-D Secure page."""
    token = csrf_token(client, f"/sandbox/authenticate/{intent_id}")
    return client.post(
        f"/sandbox/authenticate/{intent_id}", data={"outcome": outcome, "csrf_token": token}
    )


# -- events and webhooks ----------------------------------------------------------------


def events_for(event_type: str, **match) -> list[dict]:
    """The sandbox's events of `event_type` whose object has the given field values."""
    store = sandbox()
    with store.lock:
        events = list(store.events)
    return [
        event
        for event in events
        if event["type"] == event_type
        and all(event["data"]["object"].get(key) == value for key, value in match.items())
    ]


def the_event(event_type: str, **match) -> dict:
    found = events_for(event_type, **match)
    assert len(found) == 1, f"{len(found)} {event_type} events match {match}"
    return found[0]


def fake_event(event_type: str, obj: dict) -> dict:
    """An event Stripe never sent, shaped like one."""
    return {
        "id": f"evt_test_{secrets.token_hex(12)}",
        "object": "event",
        "type": event_type,
        "api_version": "2026-10-28.endive",
        "created": int(time.time()),
        "livemode": False,
        "pending_webhooks": 1,
        "data": {"object": obj},
    }


def signature(payload: bytes, secret: str | None = None, timestamp: int | None = None) -> str:
    secret = secret or current_app.config["STRIPE_WEBHOOK_SECRET"]
    # The library signs "{t}.{payload}" with the payload as text.
    return stripe.WebhookSignature.generate_signature_header(
        payload.decode(), secret, timestamp=timestamp
    )


def post_webhook(client: FlaskClient, payload: bytes, header: str | None):
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Stripe-Signature"] = header
    return client.post("/webhooks/stripe", data=payload, headers=headers)


def deliver(client: FlaskClient, event: dict, expect: int = 200):
    """Sign `event` as Stripe does and POST it to the webhook endpoint."""
    payload = json.dumps(event).encode()
    response = post_webhook(client, payload, signature(payload))
    assert response.status_code == expect, response.get_data(as_text=True)
    db.session.expire_all()
    return response


# -- what the database says -------------------------------------------------------------


def _count(model, *where) -> int:
    return db.session.scalar(select(func.count()).select_from(model).where(*where))


def balance(user_id: int) -> int:
    db.session.expire_all()
    return db.session.scalar(select(User.credits_balance).where(User.id == user_id))


def entries(user_id: int, kind: EntryKind | None = None) -> list[LedgerEntry]:
    query = select(LedgerEntry).where(LedgerEntry.user_id == user_id)
    if kind is not None:
        query = query.where(LedgerEntry.kind == kind)
    return list(db.session.scalars(query.order_by(LedgerEntry.id)))


def lot_count(user_id: int) -> int:
    return _count(CreditLot, CreditLot.user_id == user_id)


def purchase_lot(purchase_id: int) -> CreditLot | None:
    return db.session.scalar(select(CreditLot).where(CreditLot.purchase_id == purchase_id))


def purchases_of(user_id: int) -> list[Purchase]:
    db.session.expire_all()
    return list(
        db.session.scalars(
            select(Purchase).where(Purchase.user_id == user_id).order_by(Purchase.id)
        )
    )


def purchase(purchase_id: int) -> Purchase:
    db.session.expire_all()
    return db.session.get(Purchase, purchase_id)


def purchase_of_session(session_id: str) -> Purchase:
    db.session.expire_all()
    found = db.session.scalar(
        select(Purchase).where(Purchase.stripe_checkout_session_id == session_id)
    )
    assert found is not None, f"no purchase for {session_id}"
    return found


def stripe_event_rows(event_id: str) -> list[StripeEvent]:
    return list(
        db.session.scalars(select(StripeEvent).where(StripeEvent.stripe_event_id == event_id))
    )


def stripe_event_count() -> int:
    return _count(StripeEvent)


def recharges_of(user_id: int) -> list[Purchase]:
    """The customer's auto-recharges, oldest first, as the database has them now."""
    db.session.expire_all()
    return list(
        db.session.scalars(
            select(Purchase)
            .where(Purchase.user_id == user_id, Purchase.origin == PurchaseOrigin.AUTO_RECHARGE)
            .order_by(Purchase.id)
        )
    )


def refunds_of(purchase_id: int) -> list[Refund]:
    return list(db.session.scalars(select(Refund).where(Refund.purchase_id == purchase_id)))


def emails_to(address: str) -> list[OutboxEmail]:
    return list(
        db.session.scalars(
            select(OutboxEmail).where(OutboxEmail.to_address == address).order_by(OutboxEmail.id)
        )
    )


def audit_rows(action: str, purchase_id: int) -> list[AuditLogEntry]:
    return list(
        db.session.scalars(
            select(AuditLogEntry).where(
                AuditLogEntry.action == action,
                AuditLogEntry.target_type == "purchase",
                AuditLogEntry.target_id == purchase_id,
            )
        )
    )
