"""The sandbox's state and Stripe's rules for it: sessions, payments, refunds, events.

State lives in the server process (a restart forgets it), guarded by one lock. Objects
are plain dicts shaped like Stripe's, so that they serialise to the same JSON.
"""

import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

IDEMPOTENCY_TTL_SECONDS = 24 * 3600
SESSION_LIFETIME_SECONDS = 24 * 3600
REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")

# The test cards of the hosted page, by what they do.
CARD_SUCCEEDS = "4242424242424242"
CARD_DECLINED = "4000000000000002"
CARD_REFUND_FAILS = "4000000000005126"
CARD_DISPUTED = "4000000000000259"
DELAYED_METHOD = "delayed"
TEST_CARDS = {
    CARD_SUCCEEDS: "Card 4242 4242 4242 4242: payment succeeds",
    CARD_DECLINED: "Card 4000 0000 0000 0002: the bank declines it",
    CARD_REFUND_FAILS: "Card 4000 0000 0000 5126: payment succeeds, later refunds fail",
    CARD_DISPUTED: "Card 4000 0000 0000 0259: payment succeeds, then is disputed as fraud",
    DELAYED_METHOD: "Bank debit: payment settles later",
}

# Stripe's dispute statuses: an inquiry (warning_*) moves no money; a chargeback takes the
# disputed amount when it opens and gives it back only if the dispute is won.
DISPUTE_OPEN = ("warning_needs_response", "warning_under_review", "needs_response", "under_review")
DISPUTE_CLOSED = ("warning_closed", "won", "lost")


def _invoice_creation(requested) -> dict:
    """A session's `invoice_creation` as Stripe echoes it: off unless asked for."""
    requested = requested or {}
    enabled = str(requested.get("enabled", "false")).lower() == "true"
    data = requested.get("invoice_data") or {}
    return {
        "enabled": enabled,
        "invoice_data": {
            "description": data.get("description"),
            "metadata": data.get("metadata") or {},
        },
    }


def _saved_options(requested) -> dict | None:
    if not requested:
        return None
    return {
        "payment_method_save": requested.get("payment_method_save"),
        "allow_redisplay_filters": requested.get("allow_redisplay_filters") or ["always"],
    }


def _payment_method_details(method: str) -> dict:
    """A charge's `payment_method_details` as Stripe reports them: a test card by its
    brand and last four digits, the delayed method as a US bank account. The fingerprint
    is the same for the same card or account, as Stripe's is."""
    fingerprint = hashlib.sha256(f"sandbox:{method}".encode()).hexdigest()[:16]
    if method == DELAYED_METHOD:
        return {
            "type": "us_bank_account",
            "us_bank_account": {
                "bank_name": "STRIPE TEST BANK",
                "last4": "6789",
                "fingerprint": fingerprint,
            },
        }
    return {
        "type": "card",
        "card": {
            "brand": "visa",
            "last4": method[-4:],
            "fingerprint": fingerprint,
            "exp_month": 12,
            "exp_year": 2034,
            "funding": "credit",
            "country": "US",
        },
    }


class StripeError(Exception):
    """An error Stripe would answer with: HTTP status plus Stripe's error object."""

    def __init__(self, status: int, type_: str, message: str, code=None, param=None):
        super().__init__(message)
        self.status = status
        self.body = {"error": {"type": type_, "message": message, "code": code, "param": param}}


# The payment methods the hosted page offers: test cards, and a bank debit (DELAYED_METHOD).
PAYMENT_METHOD_TYPES = ("card", "us_bank_account")


def _fields_always_sent(kind: str) -> dict:
    """Fields Stripe sends on every object of `kind` that the sandbox has no behaviour
    for, at the values they have in the portal's payments: no tax, no custom fields, no
    shipping, automatic capture, no dispute evidence yet. The contract test
    (tests/stripe_contract.py) finds any that Stripe requires and these lack."""
    fields = {
        "checkout.session": {
            "automatic_tax": {
                "enabled": False,
                "liability": None,
                "provider": None,
                "status": None,
            },
            "custom_fields": [],
            "custom_text": {
                "after_submit": None,
                "shipping_address": None,
                "submit": None,
                "terms_of_service_acceptance": None,
            },
            "payment_method_types": list(PAYMENT_METHOD_TYPES),
            "shipping_options": [],
        },
        "payment_intent": {
            "amount_capturable": 0,
            "amount_received": 0,
            "capture_method": "automatic_async",
            "confirmation_method": "automatic",
            "livemode": False,
            "payment_method_types": list(PAYMENT_METHOD_TYPES),
        },
        "charge": {
            "billing_details": {
                "address": None,
                "email": None,
                "name": None,
                "phone": None,
                "tax_id": None,
            },
            "captured": True,
            "livemode": False,
        },
        "invoice": {
            "amount_overpaid": 0,
            "amount_shipping": 0,
            "attempt_count": 1,
            "attempted": True,
            "automatic_tax": {
                "enabled": False,
                "liability": None,
                "provider": None,
                "status": None,
            },
            "collection_method": "charge_automatically",
            "default_tax_rates": [],
            "discounts": [],
            "issuer": {"type": "self"},
            "payment_settings": {
                "default_mandate": None,
                "payment_method_options": None,
                "payment_method_types": None,
            },
            "post_payment_credit_notes_amount": 0,
            "pre_payment_credit_notes_amount": 0,
            "starting_balance": 0,
        },
        "billing_portal.session": {"configuration": "bpc_sandbox_default"},
        "dispute": {
            "enhanced_eligibility_types": [],
            "evidence": {"enhanced_evidence": {}},
            "evidence_details": {
                "due_by": None,
                "enhanced_eligibility": {},
                "has_evidence": False,
                "past_due": False,
                "submission_count": 0,
                "submission_method": "not_submitted",
            },
        },
    }
    return fields[kind]


def _new_id(prefix: str) -> str:
    return f"{prefix}_test_{secrets.token_hex(12)}"


def _missing(param: str) -> StripeError:
    return StripeError(
        400,
        "invalid_request_error",
        f"Missing required param: {param}.",
        "parameter_missing",
        param,
    )


def _no_such(kind: str, object_id: str, param: str = "id") -> StripeError:
    return StripeError(
        404, "invalid_request_error", f"No such {kind}: '{object_id}'", "resource_missing", param
    )


@dataclass
class SandboxStore:
    sessions: dict = field(default_factory=dict)
    line_items: dict = field(default_factory=dict)
    payment_intents: dict = field(default_factory=dict)
    charges: dict = field(default_factory=dict)
    refunds: dict = field(default_factory=dict)
    disputes: dict = field(default_factory=dict)
    events: list = field(default_factory=list)
    idempotency: dict = field(default_factory=dict)
    refund_fails_for: set = field(default_factory=set)
    customers: dict = field(default_factory=dict)
    payment_methods: dict = field(default_factory=dict)
    # The test card number behind each saved payment method (never part of an answer).
    card_numbers: dict = field(default_factory=dict)
    invoices: dict = field(default_factory=dict)
    portal_sessions: dict = field(default_factory=dict)
    # Where the sandbox's stand-ins for Stripe's hosted pages are (invoices).
    pages_base: str = "/sandbox"
    # How many of the next API calls answer 500 (fault injection for tests).
    failures_to_inject: int = 0
    # Called with every new event; the app sends it to the portal's webhook endpoint.
    on_event: Callable[[dict], None] | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)

    # -- idempotency -------------------------------------------------------------------

    def replay(self, key: str | None, method: str, path: str, params: dict):
        """Return the stored (status, body) for a repeated key, or None for a new one.

        :raises StripeError: the key was used with other parameters.
        """
        if not key:
            return None
        fingerprint = hashlib.sha256(
            json.dumps([method, path, params], sort_keys=True).encode()
        ).hexdigest()
        stored = self.idempotency.get(key)
        if stored is None or time.time() - stored["at"] > IDEMPOTENCY_TTL_SECONDS:
            self.idempotency[key] = {"fingerprint": fingerprint, "at": time.time(), "result": None}
            return None
        if stored["fingerprint"] != fingerprint:
            raise StripeError(
                400,
                "idempotency_error",
                "Keys for idempotent requests can only be used with the same parameters they "
                "were first used with.",
            )
        return stored["result"]

    def remember(self, key: str | None, result: tuple[int, dict]) -> None:
        if key and key in self.idempotency:
            self.idempotency[key]["result"] = result

    # -- checkout sessions -------------------------------------------------------------

    def create_session(self, params: dict, hosted_url_for) -> dict:
        customer = params.get("customer")
        if customer is not None and customer not in self.customers:
            raise _no_such("customer", customer, "customer")
        if params.get("mode") != "payment":
            raise StripeError(
                400,
                "invalid_request_error",
                "The portal sandbox only supports mode=payment.",
                "parameter_invalid",
                "mode",
            )
        for required in ("success_url", "cancel_url", "line_items"):
            if not params.get(required):
                raise _missing(required)
        items = []
        total = 0
        currency = None
        for index, item in enumerate(params["line_items"]):
            price = item.get("price_data") or {}
            try:
                unit_amount = int(price["unit_amount"])
                quantity = int(item.get("quantity", 1))
            except (KeyError, TypeError, ValueError):
                raise _missing(f"line_items[{index}][price_data][unit_amount]") from None
            if unit_amount < 0 or quantity < 1:
                raise StripeError(
                    400,
                    "invalid_request_error",
                    "Invalid amount.",
                    "parameter_invalid",
                    f"line_items[{index}]",
                )
            currency = (price.get("currency") or "").lower()
            if not currency:
                raise _missing(f"line_items[{index}][price_data][currency]")
            name = (price.get("product_data") or {}).get("name", "Item")
            items.append(
                {
                    "id": _new_id("li"),
                    "object": "item",
                    "description": name,
                    "quantity": quantity,
                    "currency": currency,
                    "amount_subtotal": unit_amount * quantity,
                    "amount_total": unit_amount * quantity,
                    "price": {"object": "price", "unit_amount": unit_amount, "currency": currency},
                }
            )
            total += unit_amount * quantity
        now = int(time.time())
        session_id = _new_id("cs")
        session = {
            **_fields_always_sent("checkout.session"),
            "id": session_id,
            "object": "checkout.session",
            "mode": "payment",
            "status": "open",
            "payment_status": "unpaid",
            "livemode": False,
            "amount_subtotal": total,
            "amount_total": total,
            "currency": currency,
            "client_reference_id": params.get("client_reference_id"),
            "metadata": params.get("metadata") or {},
            "customer": params.get("customer"),
            "customer_email": params.get("customer_email"),
            "customer_details": {"email": params.get("customer_email")},
            "payment_intent": None,
            "payment_intent_data": params.get("payment_intent_data") or {},
            "payment_method_data": params.get("payment_method_data") or {},
            "invoice": None,
            "invoice_creation": _invoice_creation(params.get("invoice_creation")),
            "saved_payment_method_options": _saved_options(
                params.get("saved_payment_method_options")
            ),
            "success_url": params["success_url"],
            "cancel_url": params["cancel_url"],
            "created": now,
            "expires_at": int(params.get("expires_at") or now + SESSION_LIFETIME_SECONDS),
            "url": hosted_url_for(session_id),
        }
        self.sessions[session_id] = session
        self.line_items[session_id] = items
        # Answered as every read is: payment_intent_data is a parameter, not a field.
        return self.public_session(session_id)

    def session(self, session_id: str) -> dict:
        session = self.sessions.get(session_id)
        if session is None:
            raise _no_such("checkout.session", session_id, "session")
        return session

    def public_session(self, session_id: str, expand: list[str] = ()) -> dict:
        # The session's parameters that Stripe does not echo as fields.
        private = ("payment_intent_data", "payment_method_data")
        session = {k: v for k, v in self.session(session_id).items() if k not in private}
        if "line_items" in expand:
            session["line_items"] = self.list_of(
                self.line_items[session_id], f"/v1/checkout/sessions/{session_id}/line_items"
            )
        if "invoice" in expand and session.get("invoice"):
            session["invoice"] = dict(self.invoices[session["invoice"]])
        intent_id = session.get("payment_intent")
        wanted = {"payment_intent", "payment_intent.latest_charge"} & set(expand)
        if wanted and intent_id in self.payment_intents:
            intent = dict(self.payment_intents[intent_id])
            if "payment_intent.latest_charge" in wanted and intent.get("latest_charge"):
                intent["latest_charge"] = dict(self.charges[intent["latest_charge"]])
            session["payment_intent"] = intent
        return session

    @staticmethod
    def list_of(rows: list, url: str, has_more: bool = False) -> dict:
        return {"object": "list", "data": rows, "has_more": has_more, "url": url}

    def list_sessions(self, filters: dict) -> dict:
        try:
            limit = min(max(int(filters.get("limit", 10)), 1), 100)
        except ValueError:
            raise StripeError(
                400,
                "invalid_request_error",
                "Invalid integer: limit",
                "parameter_invalid_integer",
                "limit",
            ) from None
        created = filters.get("created") or {}
        rows = sorted(self.sessions.values(), key=lambda s: (s["created"], s["id"]), reverse=True)

        def keep(session):
            for op, test in (
                ("gte", int.__ge__),
                ("gt", int.__gt__),
                ("lte", int.__le__),
                ("lt", int.__lt__),
            ):
                if op in created and not test(session["created"], int(created[op])):
                    return False
            return all(
                not filters.get(name) or session.get(name) == filters[name]
                for name in ("status", "payment_intent", "customer")
            )

        rows = [row for row in rows if keep(row)]
        if filters.get("starting_after"):
            ids = [row["id"] for row in rows]
            if filters["starting_after"] not in ids:
                raise _no_such("checkout.session", filters["starting_after"], "starting_after")
            rows = rows[ids.index(filters["starting_after"]) + 1 :]
        page = [self.public_session(row["id"]) for row in rows[:limit]]
        return self.list_of(page, "/v1/checkout/sessions", has_more=len(rows) > limit)

    def expire_session(self, session_id: str) -> dict:
        session = self.session(session_id)
        if session["status"] != "open":
            raise StripeError(
                400,
                "invalid_request_error",
                f"Only Checkout Sessions with a status of open can be expired. "
                f"This Checkout Session has a status of {session['status']}.",
                "checkout_session_not_open",
            )
        session["status"] = "expired"
        self.record_event("checkout.session.expired", self.public_session(session_id))
        return self.public_session(session_id)

    # -- paying on the hosted page -----------------------------------------------------

    def _payment_intent_for(self, session: dict) -> dict:
        if session["payment_intent"]:
            return self.payment_intents[session["payment_intent"]]
        intent = {
            **_fields_always_sent("payment_intent"),
            "id": _new_id("pi"),
            "object": "payment_intent",
            "amount": session["amount_total"],
            "currency": session["currency"],
            "status": "requires_payment_method",
            "metadata": dict(session["payment_intent_data"].get("metadata") or {}),
            "latest_charge": None,
            "last_payment_error": None,
            "created": int(time.time()),
        }
        self.payment_intents[intent["id"]] = intent
        session["payment_intent"] = intent["id"]
        return intent

    def _charge(self, intent: dict, method: str) -> dict:
        charge_id = _new_id("ch")
        charge = {
            **_fields_always_sent("charge"),
            "id": charge_id,
            "object": "charge",
            "amount": intent["amount"],
            "amount_captured": intent["amount"],
            "amount_refunded": 0,
            "refunded": False,
            "currency": intent["currency"],
            "payment_intent": intent["id"],
            "paid": True,
            "disputed": False,
            "status": "succeeded",
            "receipt_url": f"https://pay.stripe.com/receipts/sandbox/{charge_id}",
            "payment_method_details": _payment_method_details(method),
            "created": int(time.time()),
            "metadata": dict(intent["metadata"]),
        }
        self.charges[charge_id] = charge
        intent["latest_charge"] = charge_id
        intent["amount_received"] = intent["amount"]
        intent["status"] = "succeeded"
        return charge

    def pay(self, session_id: str, method: str, save: bool = False) -> str:
        """Pay an open session with a test card, or with a saved payment method's id;
        return what happened. With `save` (the customer ticked "save my card") or the
        session's `setup_future_usage`, the card is saved to the session's customer."""
        session = self.session(session_id)
        if session["status"] != "open":
            return session["status"]
        if method in self.payment_methods:
            saved = self.payment_methods[method]
            if saved["customer"] is None or saved["customer"] != session["customer"]:
                return "declined"
            method = self.card_numbers[saved["id"]]
        intent = self._payment_intent_for(session)
        if method == CARD_DECLINED:
            intent["last_payment_error"] = {
                "type": "card_error",
                "code": "card_declined",
                "decline_code": "generic_decline",
                "message": "Your card was declined.",
            }
            self.record_event("payment_intent.payment_failed", dict(intent))
            return "declined"
        session["status"] = "complete"
        if method == DELAYED_METHOD:
            intent["status"] = "processing"
            self.record_event("checkout.session.completed", self.public_session(session_id))
            return "processing"
        charge = self._charge(intent, method)
        if method == CARD_REFUND_FAILS:
            self.refund_fails_for.add(charge["id"])
        future_usage = session["payment_intent_data"].get("setup_future_usage")
        if session["customer"] and (save or future_usage):
            # As Checkout does: a card the customer chose to save on the page is shown
            # again ("always"); one saved by `setup_future_usage` alone is "limited"
            # unless the session's `payment_method_data` says otherwise.
            redisplay = (session.get("payment_method_data") or {}).get("allow_redisplay")
            redisplay = redisplay or ("always" if save else "limited")
            saved = self._save_card(session["customer"], method, redisplay)
            intent["payment_method"] = saved["id"]
            intent["setup_future_usage"] = future_usage or "on_session"
        session["payment_status"] = "paid"
        if session["invoice_creation"]["enabled"]:
            session["invoice"] = self._paid_invoice(session, intent)["id"]
        self.record_event("checkout.session.completed", self.public_session(session_id))
        if method == CARD_DISPUTED:
            self.open_dispute(charge["id"], reason="fraudulent")
        return "paid"

    def settle_delayed(self, session_id: str, succeeded: bool) -> None:
        """Finish a delayed payment, as the bank eventually does."""
        session = self.session(session_id)
        intent = self.payment_intents.get(session["payment_intent"] or "")
        if session["status"] != "complete" or session["payment_status"] != "unpaid" or not intent:
            return
        if succeeded:
            self._charge(intent, DELAYED_METHOD)
            session["payment_status"] = "paid"
            self.record_event(
                "checkout.session.async_payment_succeeded", self.public_session(session_id)
            )
        else:
            intent["status"] = "requires_payment_method"
            self.record_event(
                "checkout.session.async_payment_failed", self.public_session(session_id)
            )

    # -- refunds -----------------------------------------------------------------------

    # -- customers, saved cards, invoices, the billing portal -----------------------

    def create_customer(self, params: dict) -> dict:
        customer = {
            "id": _new_id("cus"),
            "object": "customer",
            "email": params.get("email"),
            "name": params.get("name"),
            "metadata": params.get("metadata") or {},
            "invoice_settings": {"default_payment_method": None},
            "livemode": False,
            "created": int(time.time()),
        }
        self.customers[customer["id"]] = customer
        return customer

    def customer(self, customer_id: str) -> dict:
        customer = self.customers.get(customer_id)
        if customer is None:
            raise _no_such("customer", customer_id)
        return customer

    def _save_card(self, customer_id: str, card_number: str, redisplay: str) -> dict:
        """The customer's saved card for `card_number`: Checkout saves a card once, so
        paying again with it reuses the saved one (same fingerprint)."""
        details = _payment_method_details(card_number)
        for saved in self.payment_methods.values():
            if (
                saved["customer"] == customer_id
                and saved["card"]["fingerprint"] == details["card"]["fingerprint"]
            ):
                if redisplay == "always":
                    saved["allow_redisplay"] = "always"
                return saved
        saved = {
            "id": _new_id("pm"),
            "object": "payment_method",
            "type": "card",
            "card": {
                key: details["card"][key]
                for key in ("brand", "last4", "fingerprint", "exp_month", "exp_year", "funding")
            },
            "customer": customer_id,
            "allow_redisplay": redisplay,
            "billing_details": {"email": self.customer(customer_id)["email"]},
            "livemode": False,
            "created": int(time.time()),
        }
        self.payment_methods[saved["id"]] = saved
        self.card_numbers[saved["id"]] = card_number
        return saved

    def saved_cards(self, customer_id: str, redisplay: list[str] | None = None) -> list[dict]:
        """The customer's saved cards; with `redisplay`, only those whose `allow_redisplay`
        is one of its values (what Checkout and the list filter by)."""
        return [
            saved
            for saved in self.payment_methods.values()
            if saved["customer"] == customer_id
            and saved["type"] == "card"
            and (redisplay is None or saved["allow_redisplay"] in redisplay)
        ]

    def list_payment_methods(self, filters: dict) -> dict:
        customer_id = filters.get("customer")
        if not customer_id:
            raise _missing("customer")
        self.customer(customer_id)
        redisplay = [filters["allow_redisplay"]] if filters.get("allow_redisplay") else None
        return self.list_of(self.saved_cards(customer_id, redisplay), "/v1/payment_methods")

    def detach_payment_method(self, method_id: str) -> dict:
        saved = self.payment_methods.get(method_id)
        if saved is None:
            raise _no_such("payment_method", method_id)
        saved["customer"] = None
        return saved

    def _paid_invoice(self, session: dict, intent: dict) -> dict:
        """The invoice Checkout makes for a paid session with `invoice_creation` on."""
        number = len(self.invoices) + 1
        invoice_id = _new_id("in")
        data = session["invoice_creation"]["invoice_data"]
        # Stripe's own pages live on invoice.stripe.com; the sandbox serves its stand-ins
        # on the portal's site, so links from a receipt work with no network.
        base = f"{self.pages_base}/invoices"
        now = int(time.time())
        invoice = {
            **_fields_always_sent("invoice"),
            "id": invoice_id,
            "object": "invoice",
            "subtotal": session["amount_total"],
            "total": session["amount_total"],
            "period_start": now,
            "period_end": now,
            "status_transitions": {
                "finalized_at": now,
                "marked_uncollectible_at": None,
                "paid_at": now,
                "voided_at": None,
            },
            "lines": self.list_of([], f"/v1/invoices/{invoice_id}/lines"),
            "number": f"SBX-{number:05d}",
            "customer": session["customer"],
            "status": "paid",
            "currency": session["currency"],
            "amount_due": session["amount_total"],
            "amount_paid": session["amount_total"],
            "amount_remaining": 0,
            "description": data.get("description"),
            "metadata": data.get("metadata") or {},
            "hosted_invoice_url": f"{base}/{invoice_id}",
            "invoice_pdf": f"{base}/{invoice_id}.pdf",
            "livemode": False,
            "created": int(time.time()),
        }
        self.invoices[invoice_id] = invoice
        return invoice

    def create_portal_session(self, params: dict, page_url_for) -> dict:
        customer_id = params.get("customer")
        if not customer_id:
            raise _missing("customer")
        self.customer(customer_id)
        session_id = _new_id("bps")
        portal_session = {
            **_fields_always_sent("billing_portal.session"),
            "id": session_id,
            "object": "billing_portal.session",
            "customer": customer_id,
            "return_url": params.get("return_url"),
            "url": page_url_for(session_id),
            "livemode": False,
            "created": int(time.time()),
        }
        self.portal_sessions[session_id] = portal_session
        return portal_session

    def create_refund(self, params: dict) -> dict:
        intent_id = params.get("payment_intent")
        charge_id = params.get("charge")
        if not intent_id and not charge_id:
            raise _missing("payment_intent")
        if intent_id:
            intent = self.payment_intents.get(intent_id)
            if intent is None:
                raise _no_such("payment_intent", intent_id, "payment_intent")
            charge_id = intent["latest_charge"]
            if charge_id is None:
                raise StripeError(
                    400,
                    "invalid_request_error",
                    "This PaymentIntent does not have a successful charge to refund.",
                    "charge_not_refundable",
                    "payment_intent",
                )
        charge = self.charges.get(charge_id)
        if charge is None:
            raise _no_such("charge", charge_id, "charge")
        if any(not dispute["is_charge_refundable"] for dispute in self._disputes_of(charge_id)):
            raise StripeError(
                400,
                "invalid_request_error",
                f"Charge {charge_id} has been charged back; refunds are not allowed.",
                "charge_disputed",
            )
        remaining = charge["amount"] - charge["amount_refunded"]
        if remaining <= 0:
            raise StripeError(
                400,
                "invalid_request_error",
                f"Charge {charge_id} has already been refunded.",
                "charge_already_refunded",
            )
        try:
            amount = int(params.get("amount", remaining))
        except (TypeError, ValueError):
            raise StripeError(
                400,
                "invalid_request_error",
                "Invalid integer: amount",
                "parameter_invalid_integer",
                "amount",
            ) from None
        if amount <= 0:
            raise StripeError(
                400,
                "invalid_request_error",
                "Amount must be at least 1 cent.",
                "amount_too_small",
                "amount",
            )
        if amount > remaining:
            raise StripeError(
                400,
                "invalid_request_error",
                f"Refund amount ({amount}) is greater than unrefunded amount on "
                f"charge ({remaining})",
                "amount_too_large",
                "amount",
            )
        reason = params.get("reason")
        if reason is not None and reason not in REFUND_REASONS:
            raise StripeError(
                400,
                "invalid_request_error",
                f"Invalid reason: {reason}",
                "parameter_invalid",
                "reason",
            )
        refund = {
            "id": _new_id("re"),
            "object": "refund",
            "amount": amount,
            "currency": charge["currency"],
            "charge": charge_id,
            "payment_intent": charge["payment_intent"],
            "reason": reason,
            "status": "pending",
            "failure_reason": None,
            "created": int(time.time()),
            "metadata": params.get("metadata") or {},
        }
        self.refunds[refund["id"]] = refund
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        self.record_event("refund.created", dict(refund))
        self.record_event("charge.refunded", dict(charge))
        return refund

    def settle_refund(self, refund_id: str) -> dict:
        """Move a pending refund to its final state, as the card network does later."""
        refund = self.refunds.get(refund_id)
        if refund is None:
            raise _no_such("refund", refund_id)
        if refund["status"] != "pending":
            return refund
        charge = self.charges[refund["charge"]]
        if refund["charge"] in self.refund_fails_for:
            refund["status"] = "failed"
            refund["failure_reason"] = "expired_or_canceled_card"
            charge["amount_refunded"] -= refund["amount"]
            charge["refunded"] = False
            self.record_event("refund.failed", dict(refund))
        else:
            refund["status"] = "succeeded"
            self.record_event("refund.updated", dict(refund))
        return refund

    # -- disputes ----------------------------------------------------------------------

    def _disputes_of(self, charge_id: str) -> list[dict]:
        return [dispute for dispute in self.disputes.values() if dispute["charge"] == charge_id]

    def dispute(self, dispute_id: str) -> dict:
        dispute = self.disputes.get(dispute_id)
        if dispute is None:
            raise _no_such("dispute", dispute_id, "dispute")
        return dispute

    def open_dispute(self, charge_id: str, reason: str = "fraudulent", inquiry=False) -> dict:
        """The cardholder's bank disputes a payment: an inquiry, or a chargeback that takes
        the part of the payment not yet refunded."""
        charge = self.charges.get(charge_id)
        if charge is None:
            raise _no_such("charge", charge_id, "charge")
        amount = charge["amount"] - charge["amount_refunded"]
        earlier = self._disputes_of(charge_id)
        # One chargeback per payment; an inquiry may come before it.
        if (
            amount <= 0
            or any(dispute["status"] in DISPUTE_OPEN for dispute in earlier)
            or any(not dispute["status"].startswith("warning_") for dispute in earlier)
        ):
            raise StripeError(
                400,
                "invalid_request_error",
                f"Charge {charge_id} cannot be disputed now.",
                "charge_not_disputable",
            )
        dispute = {
            **_fields_always_sent("dispute"),
            "id": _new_id("dp"),
            "object": "dispute",
            "amount": amount,
            "currency": charge["currency"],
            "charge": charge_id,
            "payment_intent": charge["payment_intent"],
            "reason": reason,
            "status": "warning_needs_response" if inquiry else "needs_response",
            "is_charge_refundable": inquiry,
            "created": int(time.time()),
            "livemode": False,
            "metadata": {},
            "balance_transactions": [],
        }
        self.disputes[dispute["id"]] = dispute
        charge["disputed"] = True
        self.record_event("charge.dispute.created", dict(dispute))
        if not inquiry:
            self.record_event("charge.dispute.funds_withdrawn", dict(dispute))
        return dispute

    def close_dispute(self, dispute_id: str, won: bool) -> dict:
        """The bank decides: won (the money comes back) or lost (it stays with the cardholder).
        An inquiry simply closes with no money moved."""
        dispute = self.dispute(dispute_id)
        if dispute["status"] not in DISPUTE_OPEN:
            return dispute
        inquiry = dispute["status"].startswith("warning_")
        dispute["status"] = "warning_closed" if inquiry else "won" if won else "lost"
        self.record_event("charge.dispute.closed", dict(dispute))
        if dispute["status"] == "won":
            self.record_event("charge.dispute.funds_reinstated", dict(dispute))
        return dispute

    def list_disputes(self, filters: dict) -> dict:
        """Newest first, filtered by charge, payment_intent and created[gte]; paged with
        limit and starting_after as Stripe's lists are."""
        try:
            limit = min(max(int(filters.get("limit", 10)), 1), 100)
            since = int((filters.get("created") or {}).get("gte", 0))
        except (TypeError, ValueError, AttributeError):
            raise StripeError(
                400, "invalid_request_error", "Invalid integer.", "parameter_invalid_integer"
            ) from None
        rows = sorted(self.disputes.values(), key=lambda d: (d["created"], d["id"]), reverse=True)
        rows = [row for row in rows if row["created"] >= since]
        for name in ("charge", "payment_intent"):
            if filters.get(name):
                rows = [row for row in rows if row[name] == filters[name]]
        if filters.get("starting_after"):
            ids = [row["id"] for row in rows]
            if filters["starting_after"] not in ids:
                raise _no_such("dispute", filters["starting_after"], "starting_after")
            rows = rows[ids.index(filters["starting_after"]) + 1 :]
        page = [dict(row) for row in rows[:limit]]
        return self.list_of(page, "/v1/disputes", has_more=len(rows) > limit)

    # -- events ------------------------------------------------------------------------

    def record_event(self, event_type: str, obj: dict) -> dict:
        event = {
            "id": _new_id("evt"),
            "object": "event",
            "type": event_type,
            "api_version": "2026-10-28.endive",
            "created": int(time.time()),
            "livemode": False,
            "pending_webhooks": 1,
            "data": {"object": json.loads(json.dumps(obj))},
        }
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)
        return event
