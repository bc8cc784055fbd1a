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
from typing import NoReturn
from urllib.parse import urlencode

IDEMPOTENCY_TTL_SECONDS = 24 * 3600
SESSION_LIFETIME_SECONDS = 24 * 3600
REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")

# The test cards of the hosted page, by what they do.
CARD_SUCCEEDS = "4242424242424242"
CARD_DECLINED = "4000000000000002"
CARD_REFUND_FAILS = "4000000000005126"
CARD_DISPUTED = "4000000000000259"
CARD_INSUFFICIENT_FUNDS = "4000000000009995"
CARD_CHARGES_FAIL = "4000000000000341"
CARD_AUTHENTICATES = "4000002760003184"
DELAYED_METHOD = "delayed"
TEST_CARDS = {
    CARD_SUCCEEDS: "Card 4242 4242 4242 4242: payment succeeds",
    CARD_DECLINED: "Card 4000 0000 0000 0002: the bank declines it",
    CARD_REFUND_FAILS: "Card 4000 0000 0000 5126: payment succeeds, later refunds fail",
    CARD_DISPUTED: "Card 4000 0000 0000 0259: payment succeeds, then is disputed as fraud",
    CARD_INSUFFICIENT_FUNDS: "Card 4000 0000 0000 9995: declined for insufficient funds",
    CARD_CHARGES_FAIL: "Card 4000 0000 0000 0341: can be saved, but every payment is declined",
    CARD_AUTHENTICATES: "Card 4000 0027 6000 3184: the bank asks the cardholder to confirm "
    "every payment",
    DELAYED_METHOD: "Bank debit: payment settles later",
}

# The cards the bank declines, with Stripe's decline code and message for each
# (https://docs.stripe.com/testing#declined-payments).
DECLINES = {
    CARD_DECLINED: ("generic_decline", "Your card was declined."),
    CARD_INSUFFICIENT_FUNDS: ("insufficient_funds", "Your card has insufficient funds."),
    CARD_CHARGES_FAIL: ("generic_decline", "Your card was declined."),
}


def _card_declined(card_number: str) -> dict:
    """The error a declining test card leaves on what it was tried for, as Stripe's."""
    decline_code, message = DECLINES[card_number]
    return {
        "type": "card_error",
        "code": "card_declined",
        "decline_code": decline_code,
        "message": message,
    }


# Saving a card checks it with the bank, so these fail already when set up; 0341 is
# Stripe's card for "saves fine, then every charge fails".
DECLINED_WHEN_SAVED = (CARD_DECLINED, CARD_INSUFFICIENT_FUNDS)
NEEDS_AUTHENTICATION = "Your card was declined. This transaction requires authentication."
# The states from which Stripe lets a PaymentIntent be confirmed, and cancelled.
CONFIRMABLE = ("requires_payment_method", "requires_confirmation", "requires_action")
CANCELABLE = (*CONFIRMABLE, "requires_capture", "processing")
CANCELLATION_REASONS = ("abandoned", "duplicate", "fraudulent", "requested_by_customer")
# Stripe's smallest charge in dollars and most currencies: 50 cents.
MINIMUM_CHARGE = 50

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

    def __init__(self, status: int, type_: str, message: str, code=None, param=None, **more):
        super().__init__(message)
        self.status = status
        # `more`: what a card error adds (decline_code, the payment_intent it left unpaid).
        self.body = {
            "error": {"type": type_, "message": message, "code": code, "param": param, **more}
        }


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


def _snapshot(obj: dict) -> dict:
    """A deep copy of an object as it is now, for answers that must not change later
    (a card error's PaymentIntent, a replayed answer)."""
    return json.loads(json.dumps(obj))


def _flag(value) -> bool:
    """A boolean parameter as the form encoding carries it."""
    return str(value).lower() == "true"


def _integer(params: dict, name: str) -> int:
    if name not in params:
        raise _missing(name)
    try:
        return int(params[name])
    except (TypeError, ValueError):
        raise StripeError(
            400,
            "invalid_request_error",
            f"Invalid integer: {params[name]}",
            "parameter_invalid_integer",
            name,
        ) from None


def _no_method_to_confirm() -> StripeError:
    return StripeError(
        400,
        "invalid_request_error",
        "You cannot confirm this PaymentIntent because it's missing a payment method. You can "
        "either update the PaymentIntent with a payment method and then confirm it again, or "
        "confirm it again directly with a payment method.",
        "payment_intent_unexpected_state",
    )


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
    setup_intents: dict = field(default_factory=dict)
    # Where each PaymentIntent sends the customer back after authenticating (its
    # confirmation's `return_url`, which Stripe keeps but does not show as a field).
    return_urls: dict = field(default_factory=dict)
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
    invoice_items: dict = field(default_factory=dict)
    # The payments attached to each invoice (InvoicePayment objects), by invoice id.
    invoice_payments: dict = field(default_factory=dict)
    # Invoices numbered so far: Stripe numbers an invoice when it is finalised.
    invoices_numbered: int = 0
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
        if params.get("mode") not in ("payment", "setup"):
            raise StripeError(
                400,
                "invalid_request_error",
                "The portal sandbox supports mode=payment and mode=setup only.",
                "parameter_invalid",
                "mode",
            )
        for required in ("success_url", "cancel_url"):
            if not params.get(required):
                raise _missing(required)
        if "payment_method_types" in params:
            # Renamed allowed_payment_method_types in the API version the portal pins.
            raise StripeError(
                400,
                "invalid_request_error",
                "Received unknown parameter: payment_method_types",
                "parameter_unknown",
                "payment_method_types",
            )
        if params["mode"] == "setup":
            return self._create_setup_session(params, hosted_url_for)
        if not params.get("line_items"):
            raise _missing("line_items")
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

    def _create_setup_session(self, params: dict, hosted_url_for) -> dict:
        """A setup-mode session: it saves a card for later and takes no money, so it has
        no amounts, PaymentIntent or invoice, only the SetupIntent it completes."""
        if params.get("line_items"):
            raise StripeError(
                400,
                "invalid_request_error",
                "You cannot pass `line_items` in `setup` mode.",
                "parameter_invalid",
                "line_items",
            )
        if not params.get("customer"):
            # Stripe would save the card to no one; the portal always names its customer.
            raise StripeError(
                400,
                "invalid_request_error",
                "The portal sandbox saves a card in setup mode only to a `customer`.",
                "parameter_missing",
                "customer",
            )
        allowed = params.get("allowed_payment_method_types")
        if (allowed or ["card"]) != ["card"]:
            raise StripeError(
                400,
                "invalid_request_error",
                "The portal sandbox saves cards only: allowed_payment_method_types must be "
                "['card'].",
                "parameter_invalid",
                "allowed_payment_method_types",
            )
        now = int(time.time())
        session_id = _new_id("cs")
        setup = self._new_setup_intent(params["customer"], params.get("setup_intent_data") or {})
        self.sessions[session_id] = {
            **_fields_always_sent("checkout.session"),
            "id": session_id,
            "object": "checkout.session",
            "mode": "setup",
            "status": "open",
            "payment_status": "no_payment_required",
            "payment_method_types": ["card"],
            "allowed_payment_method_types": allowed,
            "livemode": False,
            "amount_subtotal": None,
            "amount_total": None,
            "currency": (params.get("currency") or "").lower() or None,
            "client_reference_id": params.get("client_reference_id"),
            "metadata": params.get("metadata") or {},
            "customer": params["customer"],
            "customer_email": params.get("customer_email"),
            "customer_details": {"email": params.get("customer_email")},
            "payment_intent": None,
            "payment_intent_data": {},
            "payment_method_data": {},
            "setup_intent": setup["id"],
            "invoice": None,
            "invoice_creation": None,
            "saved_payment_method_options": None,
            "success_url": params["success_url"],
            "cancel_url": params["cancel_url"],
            "created": now,
            "expires_at": int(params.get("expires_at") or now + SESSION_LIFETIME_SECONDS),
            "url": hosted_url_for(session_id),
        }
        self.line_items[session_id] = []
        return self.public_session(session_id)

    def _new_setup_intent(self, customer_id: str, data: dict) -> dict:
        """The SetupIntent a setup-mode session completes, made with the session as
        Checkout makes it: for off-session use, waiting for the customer's card."""
        setup_id = _new_id("seti")
        setup = {
            "id": setup_id,
            "object": "setup_intent",
            "status": "requires_payment_method",
            "usage": "off_session",
            "customer": customer_id,
            "description": data.get("description"),
            "metadata": data.get("metadata") or {},
            "payment_method": None,
            "payment_method_types": ["card"],
            "last_setup_error": None,
            "next_action": None,
            "cancellation_reason": None,
            "client_secret": f"{setup_id}_secret_{secrets.token_hex(8)}",
            "livemode": False,
            "created": int(time.time()),
        }
        self.setup_intents[setup_id] = setup
        return setup

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
        setup_id = session.get("setup_intent")
        wanted = {"setup_intent", "setup_intent.payment_method"} & set(expand)
        if wanted and setup_id in self.setup_intents:
            setup = dict(self.setup_intents[setup_id])
            if "setup_intent.payment_method" in wanted and setup["payment_method"]:
                setup["payment_method"] = dict(self.payment_methods[setup["payment_method"]])
            session["setup_intent"] = setup
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
        if method in DECLINES:
            intent["last_payment_error"] = _card_declined(method)
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

    def save_card_on_page(self, session_id: str, card_number: str) -> str:
        """Complete an open setup-mode session with a test card, as the customer does on
        the hosted page; return what happened ("saved", "declined", or the session's
        status when it is no longer open)."""
        session = self.session(session_id)
        if session["status"] != "open":
            return session["status"]
        setup = self.setup_intents[session["setup_intent"]]
        if card_number in DECLINED_WHEN_SAVED:
            setup["last_setup_error"] = _card_declined(card_number)
            self.record_event("setup_intent.setup_failed", dict(setup))
            return "declined"
        # With no consent collected for showing it again, Checkout saves a card set up
        # for later as "limited": usable off-session, not offered at the next checkout.
        # (A card that asks for authentication gets it here: the page stands in for it.)
        saved = self._save_card(session["customer"], card_number, "limited")
        setup.update(status="succeeded", payment_method=saved["id"], last_setup_error=None)
        session["status"] = "complete"
        self.record_event("setup_intent.succeeded", dict(setup))
        self.record_event("checkout.session.completed", self.public_session(session_id))
        return "saved"

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
        invoice_id = _new_id("in")
        data = session["invoice_creation"]["invoice_data"]
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
            "customer": session["customer"],
            "status": "paid",
            "currency": session["currency"],
            "amount_due": session["amount_total"],
            "amount_paid": session["amount_total"],
            "amount_remaining": 0,
            "description": data.get("description"),
            "metadata": data.get("metadata") or {},
            **self._numbered(invoice_id),
            "livemode": False,
            "created": int(time.time()),
        }
        self.invoices[invoice_id] = invoice
        return invoice

    def _numbered(self, invoice_id: str) -> dict:
        """The next invoice number and the invoice's pages, given when it is finalised."""
        self.invoices_numbered += 1
        # Stripe's own pages live on invoice.stripe.com; the sandbox serves its stand-ins
        # on the portal's site, so links from a receipt work with no network.
        base = f"{self.pages_base}/invoices"
        return {
            "number": f"SBX-{self.invoices_numbered:05d}",
            "hosted_invoice_url": f"{base}/{invoice_id}",
            "invoice_pdf": f"{base}/{invoice_id}.pdf",
        }

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

    # -- payment intents: charging a saved card --------------------------------------

    def payment_intent(self, intent_id: str) -> dict:
        intent = self.payment_intents.get(intent_id)
        if intent is None:
            raise _no_such("payment_intent", intent_id, "intent")
        return intent

    def public_payment_intent(self, intent_id: str, expand=()) -> dict:
        intent = dict(self.payment_intent(intent_id))
        if "latest_charge" in expand and intent["latest_charge"]:
            intent["latest_charge"] = dict(self.charges[intent["latest_charge"]])
        return intent

    def _existing_customer(self, customer_id: str) -> dict:
        customer = self.customers.get(customer_id)
        if customer is None:
            raise _no_such("customer", customer_id, "customer")
        return customer

    def _usable_method(self, method_id: str, customer_id: str | None) -> dict:
        """The saved card `method_id`, if a payment for `customer_id` may use it: Stripe
        charges a saved card only for the customer it is attached to.

        :raises StripeError: no such payment method, or not this customer's.
        """
        saved = self.payment_methods.get(method_id)
        if saved is None:
            raise _no_such("PaymentMethod", method_id, "payment_method")
        if saved["customer"] is None:
            message = (
                "The provided PaymentMethod was previously used with a PaymentIntent without "
                "Customer attachment, shared with a connected account without Customer "
                "attachment, or was detached from a Customer. It may not be used again. To use "
                "a PaymentMethod multiple times, you must attach it to a Customer first."
            )
        elif customer_id is None:
            message = (
                f"The `payment_method` parameter supplied {method_id} belongs to the Customer "
                f"{saved['customer']}. Please include the Customer in the `customer` parameter "
                "on the PaymentIntent."
            )
        elif saved["customer"] != customer_id:
            message = (
                f"The customer does not have a payment method with the ID {method_id}. The "
                "payment method must be attached to the customer."
            )
        else:
            return saved
        raise StripeError(400, "invalid_request_error", message, param="payment_method")

    def create_payment_intent(self, params: dict, expand=()) -> dict:
        """Create a PaymentIntent; with `confirm`, charge its payment method at once.

        :raises StripeError: a parameter Stripe refuses, or the card error of a charge
            the bank declined or wants authenticated (the PaymentIntent stays, unpaid).
        """
        amount = _integer(params, "amount")
        if amount < MINIMUM_CHARGE:
            raise StripeError(
                400,
                "invalid_request_error",
                f"Amount must be at least {MINIMUM_CHARGE} cents.",
                "amount_too_small",
                "amount",
            )
        currency = (params.get("currency") or "").lower()
        if not currency:
            raise _missing("currency")
        customer_id = params.get("customer")
        if customer_id:
            self._existing_customer(customer_id)
        method_id = params.get("payment_method")
        if method_id:
            self._usable_method(method_id, customer_id)
        confirm = _flag(params.get("confirm"))
        off_session = params.get("off_session") in ("true", "one_off", "recurring")
        if off_session and not confirm:
            raise StripeError(
                400,
                "invalid_request_error",
                "You can only pass `off_session` when `confirm` is true.",
                "parameter_invalid",
                "off_session",
            )
        if confirm and not method_id:
            raise _no_method_to_confirm()
        intent_id = _new_id("pi")
        intent = {
            **_fields_always_sent("payment_intent"),
            "id": intent_id,
            "object": "payment_intent",
            "amount": amount,
            "currency": currency,
            "customer": customer_id,
            "payment_method": method_id,
            "payment_method_types": ["card"],
            "description": params.get("description"),
            "metadata": params.get("metadata") or {},
            "status": "requires_confirmation" if method_id else "requires_payment_method",
            "latest_charge": None,
            "last_payment_error": None,
            "next_action": None,
            "canceled_at": None,
            "cancellation_reason": None,
            "setup_future_usage": None,
            "client_secret": f"{intent_id}_secret_{secrets.token_hex(8)}",
            "created": int(time.time()),
        }
        self.payment_intents[intent_id] = intent
        self.record_event("payment_intent.created", dict(intent))
        if confirm:
            self._confirm(intent, method_id, off_session, params.get("return_url"))
        return self.public_payment_intent(intent_id, expand)

    def confirm_payment_intent(self, intent_id: str, params: dict, expand=()) -> dict:
        """Confirm a PaymentIntent, with the customer present unless `off_session`: a card
        that wants authenticating sends them to the bank's page first (`next_action`).

        :raises StripeError: the PaymentIntent cannot be confirmed in its state, the
            payment method is not the customer's, or the card error of a refused charge.
        """
        intent = self.payment_intent(intent_id)
        if intent["status"] not in CONFIRMABLE:
            raise StripeError(
                400,
                "invalid_request_error",
                f"You cannot confirm this PaymentIntent because it has a status of "
                f"{intent['status']}. Only a PaymentIntent with one of the following statuses "
                f"may be confirmed: {', '.join(CONFIRMABLE)}.",
                "payment_intent_unexpected_state",
                payment_intent=_snapshot(intent),
            )
        method_id = params.get("payment_method") or intent["payment_method"]
        if not method_id:
            raise _no_method_to_confirm()
        self._usable_method(method_id, intent["customer"])
        off_session = params.get("off_session") in ("true", "one_off", "recurring")
        self._confirm(intent, method_id, off_session, params.get("return_url"))
        return self.public_payment_intent(intent_id, expand)

    def _confirm(self, intent: dict, method_id: str, off_session: bool, return_url) -> None:
        """Charge the card behind `method_id` for `intent`, as the bank answers for it.

        :raises StripeError: the card error of a decline, or of an off-session charge
            the bank wants the cardholder to authenticate.
        """
        card_number = self.card_numbers[method_id]
        intent.update(payment_method=method_id, next_action=None, last_payment_error=None)
        if card_number in DECLINES:
            decline_code, message = DECLINES[card_number]
            self._refused(intent, "card_declined", decline_code, message)
        if card_number == CARD_AUTHENTICATES:
            if off_session:
                # Nobody is there to authenticate: the portal brings the customer back
                # on-session to confirm this same PaymentIntent.
                self._refused(
                    intent,
                    "authentication_required",
                    "authentication_required",
                    NEEDS_AUTHENTICATION,
                )
            self.return_urls[intent["id"]] = return_url
            intent["status"] = "requires_action"
            intent["next_action"] = {
                "type": "redirect_to_url",
                "redirect_to_url": {
                    "url": f"{self.pages_base}/authenticate/{intent['id']}",
                    "return_url": return_url,
                },
            }
            self.record_event("payment_intent.requires_action", dict(intent))
            return
        self._succeed(intent, card_number)

    def _refused(self, intent: dict, code: str, decline_code: str, message: str) -> NoReturn:
        """Leave `intent` unpaid after the bank's refusal and answer as Stripe does: a 402
        card error that carries the PaymentIntent and the payment method it tried.

        :raises StripeError: always.
        """
        method = _snapshot(self.payment_methods[intent["payment_method"]])
        # The failed card is no longer the PaymentIntent's: it is named in the error.
        intent.update(
            status="requires_payment_method",
            payment_method=None,
            last_payment_error={
                "type": "card_error",
                "code": code,
                "decline_code": decline_code,
                "message": message,
                "payment_method": method,
            },
        )
        self.record_event("payment_intent.payment_failed", dict(intent))
        raise StripeError(
            402,
            "card_error",
            message,
            code,
            decline_code=decline_code,
            payment_intent=_snapshot(intent),
            payment_method=method,
        )

    def _succeed(self, intent: dict, card_number: str) -> None:
        charge = self._charge(intent, card_number)
        charge.update(
            customer=intent["customer"],
            payment_method=intent["payment_method"],
            description=intent["description"],
        )
        if card_number == CARD_REFUND_FAILS:
            self.refund_fails_for.add(charge["id"])
        self.record_event("payment_intent.succeeded", dict(intent))
        self._pay_invoices_awaiting(intent)
        if card_number == CARD_DISPUTED:
            self.open_dispute(charge["id"], reason="fraudulent")

    def authenticate(self, intent_id: str, succeeded: bool) -> str | None:
        """The cardholder answers the bank's challenge for a PaymentIntent that requires
        action: it is then paid, or back to needing a payment method. Return where to
        send them: the confirmation's return_url with the outcome appended, as Stripe
        does (None when the confirmation gave no return_url)."""
        intent = self.payment_intent(intent_id)
        if intent["status"] == "requires_action":
            intent["next_action"] = None
            if succeeded:
                self._succeed(intent, self.card_numbers[intent["payment_method"]])
            else:
                method = _snapshot(self.payment_methods[intent["payment_method"]])
                intent.update(
                    status="requires_payment_method",
                    payment_method=None,
                    last_payment_error={
                        "type": "invalid_request_error",
                        "code": "payment_intent_authentication_failure",
                        "message": "The provided PaymentMethod has failed authentication. You "
                        "can provide payment_method_data or a new PaymentMethod to attempt to "
                        "fulfill this PaymentIntent again.",
                        "payment_method": method,
                    },
                )
                self.record_event("payment_intent.payment_failed", dict(intent))
        target = self.return_urls.get(intent_id)
        if not target:
            return None
        outcome = {
            "payment_intent": intent_id,
            "payment_intent_client_secret": intent.get("client_secret") or "",
            "redirect_status": "succeeded" if intent["status"] == "succeeded" else "failed",
        }
        return f"{target}{'&' if '?' in target else '?'}{urlencode(outcome)}"

    def cancel_payment_intent(self, intent_id: str, params: dict) -> dict:
        """Cancel a PaymentIntent that is not paid (nor being paid).

        :raises StripeError: its state allows no cancelling, or an unknown reason.
        """
        intent = self.payment_intent(intent_id)
        reason = params.get("cancellation_reason")
        if reason is not None and reason not in CANCELLATION_REASONS:
            raise StripeError(
                400,
                "invalid_request_error",
                f"Invalid cancellation_reason: must be one of {', '.join(CANCELLATION_REASONS)}",
                "parameter_invalid",
                "cancellation_reason",
            )
        if intent["status"] not in CANCELABLE:
            raise StripeError(
                400,
                "invalid_request_error",
                f"You cannot cancel this PaymentIntent because it has a status of "
                f"{intent['status']}. Only a PaymentIntent with one of the following statuses "
                f"may be canceled: {', '.join(CANCELABLE)}.",
                "payment_intent_unexpected_state",
                payment_intent=_snapshot(intent),
            )
        intent.update(
            status="canceled",
            canceled_at=int(time.time()),
            cancellation_reason=reason,
            next_action=None,
        )
        self.record_event("payment_intent.canceled", dict(intent))
        return dict(intent)

    # -- invoices for payments made outside Checkout ----------------------------------

    def invoice(self, invoice_id: str) -> dict:
        invoice = self.invoices.get(invoice_id)
        if invoice is None:
            raise _no_such("invoice", invoice_id, "invoice")
        return invoice

    def public_invoice(self, invoice_id: str, expand=()) -> dict:
        invoice = dict(self.invoice(invoice_id))
        # `payments` is sent only when asked for, as Stripe does.
        if "payments" in expand:
            invoice["payments"] = self.list_of(
                [dict(payment) for payment in self.invoice_payments.get(invoice_id, [])],
                f"/v1/invoices/{invoice_id}/payments",
            )
        return invoice

    def create_invoice(self, params: dict, expand=()) -> dict:
        """A draft invoice: no number yet, lines added by invoice items, then finalised.

        :raises StripeError: no such customer, or a way of collecting the sandbox lacks.
        """
        customer_id = params.get("customer")
        if not customer_id:
            raise _missing("customer")
        self._existing_customer(customer_id)
        collection = params.get("collection_method") or "charge_automatically"
        if collection != "charge_automatically":
            raise StripeError(
                400,
                "invalid_request_error",
                "The portal sandbox makes invoices with collection_method=charge_automatically "
                "only.",
                "parameter_invalid",
                "collection_method",
            )
        invoice_id = _new_id("in")
        now = int(time.time())
        invoice = {
            **_fields_always_sent("invoice"),
            "id": invoice_id,
            "object": "invoice",
            "status": "draft",
            "number": None,
            "hosted_invoice_url": None,
            "invoice_pdf": None,
            "customer": customer_id,
            "currency": (params.get("currency") or "usd").lower(),
            "collection_method": collection,
            "auto_advance": _flag(params.get("auto_advance")),
            "billing_reason": "manual",
            "attempted": False,
            "attempt_count": 0,
            "subtotal": 0,
            "subtotal_excluding_tax": 0,
            "total": 0,
            "total_excluding_tax": 0,
            "amount_due": 0,
            "amount_paid": 0,
            "amount_remaining": 0,
            "description": params.get("description"),
            "metadata": params.get("metadata") or {},
            "period_start": now,
            "period_end": now,
            "status_transitions": {
                "finalized_at": None,
                "marked_uncollectible_at": None,
                "paid_at": None,
                "voided_at": None,
            },
            "lines": self.list_of([], f"/v1/invoices/{invoice_id}/lines"),
            "livemode": False,
            "created": now,
        }
        self.invoices[invoice_id] = invoice
        self.invoice_payments[invoice_id] = []
        if params.get("pending_invoice_items_behavior") == "include":
            for item in self.invoice_items.values():
                if item["customer"] == customer_id and item["invoice"] is None:
                    item["invoice"] = invoice_id
                    self._add_line(invoice, item)
        self.record_event("invoice.created", dict(invoice))
        return self.public_invoice(invoice_id, expand)

    def create_invoice_item(self, params: dict) -> dict:
        """An invoice item: a line of the draft invoice it names, or pending for the
        customer's next invoice.

        :raises StripeError: a missing amount or currency, no such customer or invoice,
            an invoice of another customer or currency, or one no longer a draft.
        """
        customer_id = params.get("customer")
        if not customer_id:
            raise _missing("customer")
        self._existing_customer(customer_id)
        amount = _integer(params, "amount")
        currency = (params.get("currency") or "").lower()
        if not currency:
            raise _missing("currency")
        invoice = None
        if params.get("invoice"):
            invoice = self.invoice(params["invoice"])
            if invoice["customer"] != customer_id:
                raise StripeError(
                    400,
                    "invalid_request_error",
                    f"The invoice {invoice['id']} belongs to another customer.",
                    "parameter_invalid",
                    "invoice",
                )
            if invoice["status"] != "draft":
                raise StripeError(
                    400,
                    "invalid_request_error",
                    f"Invoice items can only be added to draft invoices; {invoice['id']} "
                    f"is {invoice['status']}.",
                    "invoice_not_editable",
                    "invoice",
                )
            if invoice["currency"] != currency:
                raise StripeError(
                    400,
                    "invalid_request_error",
                    f"The currency {currency} differs from the invoice's ({invoice['currency']}).",
                    "parameter_invalid",
                    "currency",
                )
        now = int(time.time())
        item = {
            "id": _new_id("ii"),
            "object": "invoiceitem",
            "amount": amount,
            "currency": currency,
            "customer": customer_id,
            "date": now,
            "description": params.get("description"),
            # Stripe's default: discounts apply to any line but a credit.
            "discountable": amount >= 0,
            "discounts": [],
            "invoice": invoice["id"] if invoice else None,
            "livemode": False,
            "metadata": params.get("metadata") or {},
            "period": {"start": now, "end": now},
            "proration": False,
            "quantity": 1,
            "quantity_decimal": "1",
            "tax_rates": [],
        }
        self.invoice_items[item["id"]] = item
        if invoice is not None:
            self._add_line(invoice, item)
        self.record_event("invoiceitem.created", dict(item))
        return dict(item)

    def _add_line(self, invoice: dict, item: dict) -> None:
        invoice["lines"]["data"].append(
            {
                "id": _new_id("il"),
                "object": "line_item",
                "amount": item["amount"],
                "currency": item["currency"],
                "description": item["description"],
                "discountable": item["discountable"],
                "discounts": [],
                "invoice": invoice["id"],
                "livemode": False,
                "metadata": dict(item["metadata"]),
                "period": dict(item["period"]),
                "quantity": 1,
                "subtotal": item["amount"],
                "parent": {
                    "type": "invoice_item_details",
                    "invoice_item_details": {
                        "invoice_item": item["id"],
                        "proration": False,
                        "proration_details": {"credited_items": None},
                        "subscription": None,
                    },
                    "subscription_item_details": None,
                },
            }
        )
        for total in (
            "subtotal",
            "subtotal_excluding_tax",
            "total",
            "total_excluding_tax",
            "amount_due",
            "amount_remaining",
        ):
            invoice[total] += item["amount"]

    def finalize_invoice(self, invoice_id: str, params: dict, expand=()) -> dict:
        """Finalise a draft: it gets its number and pages, and waits for payment (or is
        paid at once when nothing is due).

        :raises StripeError: the invoice is not a draft.
        """
        invoice = self.invoice(invoice_id)
        if invoice["status"] != "draft":
            raise StripeError(
                400,
                "invalid_request_error",
                f"This invoice is already finalized, you can't re-finalize a non-draft invoice "
                f"({invoice_id} is {invoice['status']}).",
            )
        if params.get("auto_advance") is not None:
            invoice["auto_advance"] = _flag(params["auto_advance"])
        now = int(time.time())
        invoice.update(status="open", **self._numbered(invoice_id))
        invoice["status_transitions"]["finalized_at"] = now
        self.record_event("invoice.finalized", dict(invoice))
        if invoice["amount_remaining"] == 0:
            self._mark_paid(invoice)
        return self.public_invoice(invoice_id, expand)

    def attach_payment(self, invoice_id: str, params: dict, expand=()) -> dict:
        """Attach the customer's PaymentIntent to an open invoice: paid now if the intent
        has succeeded, or when it does.

        :raises StripeError: the invoice is not open, or the PaymentIntent is unknown,
            another customer's, in another currency, canceled or attached already.
        """
        invoice = self.invoice(invoice_id)
        intent_id = params.get("payment_intent")
        if not intent_id:
            raise _missing("payment_intent")
        intent = self.payment_intents.get(intent_id)
        if intent is None:
            raise _no_such("payment_intent", intent_id, "payment_intent")
        if invoice["status"] != "open":
            raise StripeError(
                400,
                "invalid_request_error",
                f"Payments can only be attached to open invoices; {invoice_id} is "
                f"{invoice['status']}.",
            )
        problem = None
        if intent["customer"] != invoice["customer"]:
            problem = "belongs to another customer than the invoice"
        elif intent["currency"] != invoice["currency"]:
            problem = "is in another currency than the invoice"
        elif intent["status"] == "canceled":
            problem = "is canceled"
        elif any(
            payment["payment"]["payment_intent"] == intent_id
            for payments in self.invoice_payments.values()
            for payment in payments
        ):
            problem = "is already attached to an invoice"
        if problem:
            raise StripeError(
                400,
                "invalid_request_error",
                f"The PaymentIntent {intent_id} {problem}.",
                "parameter_invalid",
                "payment_intent",
            )
        now = int(time.time())
        payment = {
            "id": _new_id("inpay"),
            "object": "invoice_payment",
            "amount_paid": None,
            "amount_requested": invoice["amount_remaining"],
            "created": now,
            "currency": invoice["currency"],
            "invoice": invoice_id,
            "is_default": True,
            "livemode": False,
            "payment": {"type": "payment_intent", "payment_intent": intent_id},
            "status": "open",
            "status_transitions": {"canceled_at": None, "paid_at": None},
        }
        self.invoice_payments[invoice_id].append(payment)
        if intent["status"] == "succeeded":
            self._apply_payment(invoice, payment, intent)
        return self.public_invoice(invoice_id, expand)

    def _pay_invoices_awaiting(self, intent: dict) -> None:
        """Apply a PaymentIntent that has just succeeded to the open invoices it was
        attached to before it did."""
        for invoice_id, payments in self.invoice_payments.items():
            for payment in payments:
                if (
                    payment["payment"]["payment_intent"] == intent["id"]
                    and payment["status"] == "open"
                    and self.invoices[invoice_id]["status"] == "open"
                ):
                    self._apply_payment(self.invoices[invoice_id], payment, intent)

    def _apply_payment(self, invoice: dict, payment: dict, intent: dict) -> None:
        paid = min(intent["amount_received"], invoice["amount_remaining"])
        payment.update(status="paid", amount_paid=paid)
        payment["status_transitions"]["paid_at"] = int(time.time())
        invoice["amount_paid"] += paid
        invoice["amount_remaining"] -= paid
        invoice["amount_overpaid"] += intent["amount_received"] - paid
        invoice["attempted"] = True
        if invoice["amount_remaining"] == 0:
            self._mark_paid(invoice)

    def _mark_paid(self, invoice: dict) -> None:
        invoice["status"] = "paid"
        invoice["status_transitions"]["paid_at"] = int(time.time())
        self.record_event("invoice.paid", dict(invoice))
        self.record_event("invoice.payment_succeeded", dict(invoice))

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
