"""Helpers for the staff tests: real sandbox purchases, requests, staff actions, reads.

Money tests buy and pay through the in-process Stripe sandbox so that the PaymentIntent
exists there, file the request through the refunds service, and then act as staff either
through the pages (POST with a CSRF token) or through `portal.staff.services`.
"""

from datetime import datetime, timedelta

from flask import Flask, current_app
from flask.testing import FlaskClient
from sqlalchemy import func, select

from portal import policy
from portal.accounts.models import User
from portal.audit import AuditLogEntry
from portal.billing import fulfilment
from portal.billing.models import Purchase, PurchaseStatus, Refund
from portal.billing.money_back.state import UNDO_WINDOW
from portal.db import db
from portal.incidents.models import Incident
from portal.ledger.models import EntryKind, LedgerEntry
from portal.notifications.models import OutboxEmail
from portal.refunds import services as refunds
from portal.refunds.eligibility import RequestReason, Verdict
from portal.refunds.models import RefundRequest, RefundRequestEvent, RequestStatus
from portal.sandbox.store import CARD_SUCCEEDS, SandboxStore
from portal.staff import services as staff_services
from portal.timeutil import add_business_days, utcnow
from tests.billing.helpers import open_checkout, pay_in_store, payment_intent_of
from tests.factories import csrf_token, login_as
from tests.html_text import visible_text

DETAILS = "I bought the Pro package but no longer need most of the credits."
UNDO = UNDO_WINDOW
AFTER_UNDO_WINDOW = UNDO + timedelta(minutes=1)


# -- clients ------------------------------------------------------------------------------


def client_for(app: Flask, user: User | None = None) -> FlaskClient:
    """A fresh client (its own cookies), logged in as `user` unless None."""
    from tests.conftest import IsolatedClient

    app.test_client_class = IsolatedClient
    client = app.test_client()
    if user is not None:
        login_as(client, user)
    return client


text = visible_text


def detail_path(request_id: int) -> str:
    return f"/staff/requests/{request_id}"


def staff_post(client: FlaskClient, path: str, data: dict | None = None, request_id=None):
    """POST a staff action with a CSRF token from the request's page (or the queue)."""
    token = csrf_token(client, detail_path(request_id) if request_id else "/staff/incidents")
    return client.post(path, data={**(data or {}), "csrf_token": token})


def act(client: FlaskClient, request_id: int, action: str, **data):
    """POST /staff/requests/<id>/<action>; assert the usual 303 back to the request."""
    response = staff_post(
        client, f"/staff/requests/{request_id}/{action}", data, request_id=request_id
    )
    assert response.status_code == 303, response.get_data(as_text=True)
    assert response.headers["Location"].endswith(detail_path(request_id))
    return response


def act_on_refund(client: FlaskClient, refund: Refund, action: str):
    """POST /staff/refunds/<id>/<undo|retry> from the request's page."""
    request_id = refund.refund_request_id
    response = staff_post(
        client,
        f"/staff/refunds/{refund.id}/{action}",
        {"request_id": str(request_id)},
        request_id=request_id,
    )
    assert response.status_code == 303, response.get_data(as_text=True)
    return response


def flashes(client: FlaskClient, request_id: int) -> str:
    """The request page's text right after an action (its flash messages included)."""
    return text(client.get(detail_path(request_id)))


# -- the sandbox --------------------------------------------------------------------------


def sandbox() -> SandboxStore:
    return current_app.extensions["stripe_sandbox"]


def refunds_at_stripe(payment_intent: str) -> list[dict]:
    """The sandbox's refunds of one PaymentIntent, oldest first (the store keeps that order)."""
    store = sandbox()
    with store.lock:
        return [dict(r) for r in store.refunds.values() if r["payment_intent"] == payment_intent]


def charge_of(payment_intent: str) -> dict:
    store = sandbox()
    with store.lock:
        return dict(store.charges[store.payment_intents[payment_intent]["latest_charge"]])


def settle_at_stripe(stripe_refund_id: str) -> dict:
    """Let the card network finish a refund (its webhook is delivered inline)."""
    store = sandbox()
    with store.lock:
        settled = dict(store.settle_refund(stripe_refund_id))
    db.session.expire_all()
    return settled


def consume_charge_at_stripe(payment_intent: str, amount_cents: int) -> dict:
    """Refund straight at the sandbox, as from Stripe's dashboard."""
    store = sandbox()
    with store.lock:
        refund = dict(
            store.create_refund({"payment_intent": payment_intent, "amount": str(amount_cents)})
        )
    db.session.expire_all()
    return refund


def inject_failures(count: int) -> None:
    store = sandbox()
    with store.lock:
        store.failures_to_inject = count


class RefundCallSpy:
    """Record the idempotency key of every refund the portal asks Stripe for."""

    def __init__(self, monkeypatch, lose_answer_times: int = 0, during_first_call=None):
        from portal.billing.gateway import gateway
        from portal.errors import PaymentProviderError

        self.keys: list[str] = []
        target = gateway()
        real = target.create_refund
        remaining = [lose_answer_times]

        def create_refund(payment_intent, amount_cents, reason, idempotency_key, metadata=None):
            self.keys.append(idempotency_key)
            if during_first_call is not None and len(self.keys) == 1:
                during_first_call()  # e.g. another worker, while this call is in flight
            answer = real(payment_intent, amount_cents, reason, idempotency_key, metadata)
            if remaining[0] > 0:
                # Stripe made the refund but the answer never reached us (a timeout).
                remaining[0] -= 1
                raise PaymentProviderError("read timed out", retryable=True)
            return answer

        monkeypatch.setattr(target, "create_refund", create_refund)


# -- purchases and requests ---------------------------------------------------------------


def paid_purchase(user: User, package: str = "pro", card: str = CARD_SUCCEEDS) -> Purchase:
    """Buy and pay `package` at the sandbox, credited through fulfilment."""
    purchase_id, session_id = open_checkout(user, package)
    assert pay_in_store(session_id, card) == "paid"
    fulfilment.fulfil_checkout(session_id)
    db.session.expire_all()
    purchase = db.session.get(Purchase, purchase_id)
    assert purchase.status == PurchaseStatus.CREDITED
    assert purchase.stripe_payment_intent_id == payment_intent_of(session_id)
    return purchase


def file(
    user: User,
    purchase: Purchase,
    now: datetime | None = None,
    reason: RequestReason = RequestReason.OTHER,
    details: str = DETAILS,
) -> RefundRequest:
    """File a refund request through the customer-side service."""
    request = refunds.file_request(
        user, purchase, reason, details, "", None, False, [], now or utcnow()
    )
    assert request.status == RequestStatus.OPEN, request.status
    return request


def refundable_request(user: User, card: str = CARD_SUCCEEDS) -> tuple[Purchase, RefundRequest]:
    """A credited Pro purchase paid at the sandbox, with an open request for it."""
    purchase = paid_purchase(user, card=card)
    return purchase, file(user, purchase)


def spend(user: User, credits: int, external_id: str) -> None:
    from portal.jobs import services as jobs

    _, created = jobs.charge_job(external_id, user.email, "upscale", credits)
    assert created


def actor(user: User) -> staff_services.Actor:
    return staff_services.Actor(user, "127.0.0.1")


def approve_now(request: RefundRequest, staff: User, amount_cents: int | None = None, **kw):
    """Approve through the service; the default amount is the request's recommendation."""
    cents = request.recommended_cents if amount_cents is None else amount_cents
    return staff_services.approve(
        request.id, actor(staff), cents, kw.get("justification", ""), kw.get("now") or utcnow()
    )


def bulk_requests(
    customer: User,
    count: int,
    due_at=None,
    created_at=None,
    **overrides,
) -> list[RefundRequest]:
    """Insert `count` open requests (each on its own purchase) in one transaction.

    `due_at` and `created_at` are callables of the index, for queue ordering tests.
    """
    now = utcnow()
    package = policy.PACKAGES_BY_CODE["pro"]
    purchases = [
        Purchase(
            user_id=customer.id,
            package_code=package.code,
            credits=package.credits,
            amount_cents=package.price_cents,
            currency=package.currency,
            status=PurchaseStatus.PAID,
            created_at=now,
            paid_at=now,
        )
        for _ in range(count)
    ]
    db.session.add_all(purchases)
    db.session.flush()
    precheck = {
        "verdict": Verdict.NEEDS_REVIEW.value,
        "rules": [],
        "recommended_cents": 0,
        "recommended_credits": 0,
        "stripe_reason": "requested_by_customer",
        "actions": [],
        "summary": "Staff will look at your case.",
    }
    values = {
        "reason": RequestReason.OTHER,
        "status": RequestStatus.OPEN,
        "verdict": Verdict.NEEDS_REVIEW,
        "recommended_cents": 0,
    }
    values.update(overrides)
    requests = []
    for index, purchase in enumerate(purchases):
        created = created_at(index) if created_at else now - timedelta(hours=1)
        request = RefundRequest(
            user_id=customer.id,
            purchase_id=purchase.id,
            details=f"bulk request {index}",
            precheck=dict(precheck, verdict=values["verdict"].value),
            due_at=due_at(index) if due_at else add_business_days(created, 5),
            created_at=created,
            **values,
        )
        requests.append(request)
    db.session.add_all(requests)
    db.session.commit()
    return requests


# -- what the database says ---------------------------------------------------------------


def count(model, *where) -> int:
    return db.session.scalar(select(func.count()).select_from(model).where(*where))


def fresh(model, row_id: int):
    db.session.expire_all()
    return db.session.get(model, row_id)


def balance(user_id: int) -> int:
    db.session.expire_all()
    return db.session.scalar(select(User.credits_balance).where(User.id == user_id))


def refunds_for(request_id: int) -> list[Refund]:
    db.session.expire_all()
    return list(
        db.session.scalars(
            select(Refund).where(Refund.refund_request_id == request_id).order_by(Refund.id)
        )
    )


def the_refund(request_id: int) -> Refund:
    found = refunds_for(request_id)
    assert len(found) == 1, found
    return found[0]


def entries(user_id: int, kind: EntryKind) -> list[LedgerEntry]:
    return list(
        db.session.scalars(
            select(LedgerEntry)
            .where(LedgerEntry.user_id == user_id, LedgerEntry.kind == kind)
            .order_by(LedgerEntry.id)
        )
    )


def events(request_id: int, kind: str | None = None) -> list[RefundRequestEvent]:
    query = select(RefundRequestEvent).where(RefundRequestEvent.request_id == request_id)
    if kind is not None:
        query = query.where(RefundRequestEvent.kind == kind)
    return list(db.session.scalars(query.order_by(RefundRequestEvent.id)))


def audit_rows(action: str, target_id: int | None = None) -> list[AuditLogEntry]:
    query = select(AuditLogEntry).where(AuditLogEntry.action == action)
    if target_id is not None:
        query = query.where(AuditLogEntry.target_id == target_id)
    return list(db.session.scalars(query.order_by(AuditLogEntry.id)))


def emails_to(address: str) -> list[OutboxEmail]:
    return list(
        db.session.scalars(
            select(OutboxEmail).where(OutboxEmail.to_address == address).order_by(OutboxEmail.id)
        )
    )


def state_snapshot() -> dict:
    """Everything a staff action could change, to prove that nothing did."""
    db.session.expire_all()
    return {
        "requests": sorted(
            (r.id, r.status.value, r.assignee_id, r.due_at, r.clock_paused_at, r.decision_reason)
            for r in db.session.scalars(select(RefundRequest))
        ),
        "refunds": sorted(
            (r.id, r.status.value, r.attempt, r.idempotency_key)
            for r in db.session.scalars(select(Refund))
        ),
        "purchases": sorted(
            (p.id, p.status.value, p.committed_refund_cents, p.refunded_cents)
            for p in db.session.scalars(select(Purchase))
        ),
        "incidents": sorted(
            (i.id, i.title, i.started_at, i.ended_at) for i in db.session.scalars(select(Incident))
        ),
        "events": count(RefundRequestEvent),
        "audit": count(AuditLogEntry),
        "ledger": count(LedgerEntry),
        "emails": count(OutboxEmail),
        "balances": sorted(db.session.execute(select(User.id, User.credits_balance)).all()),
    }


def ledger_check_passes(app: Flask) -> bool:
    result = app.test_cli_runner().invoke(args=["ledger-check"])
    return result.exit_code == 0
