"""The one door to Stripe: Checkout Sessions, refunds, disputes and webhook verification.

Only this module imports `stripe`. It hands the rest of the portal plain dicts and raises
the portal's own errors, so services never see Stripe's types. Pointing it elsewhere
(the sandbox, a local server) is configuration: STRIPE_API_BASE, or, in sandbox mode
with no base set, a transport that calls this same app in-process.
"""

import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import stripe
from flask import Flask, current_app

from portal.db import parse_id
from portal.errors import PaymentProviderError
from portal.sandbox.wsgi import call_app

log = logging.getLogger(__name__)

IN_PROCESS_BASE = "http://sandbox.invalid/sandbox"
# Signatures older than this many seconds are refused (Stripe's own default), and so are
# signatures dated more than this far ahead: no honest clock is that far off.
TOLERANCE = 300
# Stripe's events nest a dozen levels at most, expanded objects included. A body nested
# much deeper is not an event, and would only strain whatever walks it next (the JSON
# column, the logs).
MAX_EVENT_DEPTH = 64
# Stripe's ids: letters, digits and underscores. Nothing else can name a Stripe object,
# so nothing else is put into the path of a request to Stripe.
STRIPE_ID = re.compile(r"[A-Za-z0-9_]{1,255}")


class InvalidWebhook(Exception):
    """A webhook whose signature, timestamp or body cannot be trusted."""


class NoSuchObject(PaymentProviderError):
    """Stripe has no object with that id (its 404, `resource_missing`).

    Whatever named the object (an event, a link) is about nothing the portal can act on,
    and asking again will not change Stripe's answer.
    """


class InProcessHttpClient(stripe.HTTPClient):
    """Carry the Stripe library's requests to this app's sandbox without a network."""

    name = "portal-in-process"

    def __init__(self, app: Flask):
        super().__init__()
        self.app = app

    def request(self, method, url, headers, post_data=None, *, _usage=None):
        body = post_data.encode() if isinstance(post_data, str) else post_data
        status, response_headers, content = call_app(
            self.app, method.upper(), url, dict(headers or {}), body
        )
        return content.decode(), status, response_headers

    def request_stream(self, method, url, headers, post_data=None, *, _usage=None):
        raise NotImplementedError("streaming is not used by the portal")

    def close(self):
        pass


@dataclass(frozen=True)
class CheckoutSession:
    id: str
    url: str


class StripeGateway:
    """Calls to Stripe that the portal makes, with its error handling in one place."""

    def __init__(
        self,
        secret_key: str,
        webhook_secrets: list[str],
        api_base: str | None = None,
        http_client: stripe.HTTPClient | None = None,
    ):
        self.webhook_secrets = [secret for secret in webhook_secrets if secret]
        self.client = stripe.StripeClient(
            secret_key,
            base_addresses={"api": api_base} if api_base else None,
            # Retries reuse the library's own idempotency key, so they are safe.
            max_network_retries=2,
            http_client=http_client,
        )

    def _call(self, what: str, call):
        try:
            return call().to_dict()
        except stripe.StripeError as error:
            raise _provider_error(what, error) from error

    @staticmethod
    def _check_id(kind: str, object_id) -> None:
        """Refuse, as Stripe would, an id that cannot be one of Stripe's.

        :raises NoSuchObject: `object_id` is not shaped like a Stripe id.
        """
        if not (isinstance(object_id, str) and STRIPE_ID.fullmatch(object_id)):
            raise NoSuchObject(f"No such {kind}: {object_id!r}", code="resource_missing")

    def create_checkout_session(self, params: dict, idempotency_key: str) -> CheckoutSession:
        """Create a Checkout Session; the key makes a repeated call return the same one."""
        session = self._call(
            "checkout session creation",
            lambda: self.client.v1.checkout.sessions.create(
                params=params, options={"idempotency_key": idempotency_key}
            ),
        )
        return CheckoutSession(id=session["id"], url=session["url"])

    def retrieve_checkout_session(self, session_id: str) -> dict:
        """The session with its PaymentIntent, that intent's charge and the session's
        invoice, in one call."""
        self._check_id("checkout.session", session_id)
        return self._call(
            "checkout session lookup",
            lambda: self.client.v1.checkout.sessions.retrieve(
                session_id, params={"expand": ["payment_intent.latest_charge", "invoice"]}
            ),
        )

    def expire_checkout_session(self, session_id: str) -> dict:
        self._check_id("checkout.session", session_id)
        return self._call(
            "checkout session expiry",
            lambda: self.client.v1.checkout.sessions.expire(session_id),
        )

    def completed_checkout_sessions(self, created_since: int) -> Iterator[dict]:
        """Yield every complete Checkout Session created at or after `created_since`."""
        params = {"status": "complete", "created": {"gte": created_since}, "limit": 100}
        while True:
            page = self._call(
                "checkout session listing",
                lambda params=params: self.client.v1.checkout.sessions.list(params=params),
            )
            yield from page["data"]
            if not page["has_more"] or not page["data"]:
                return
            params = {**params, "starting_after": page["data"][-1]["id"]}

    # -- customers, saved cards and the billing portal --------------------------------

    def create_customer(self, email: str, metadata: dict, idempotency_key: str) -> str:
        """Create the Stripe Customer for an account; return its id. The key makes a
        repeated or concurrent call return the same customer."""
        customer = self._call(
            "customer creation",
            lambda: self.client.v1.customers.create(
                params={"email": email, "metadata": metadata},
                options={"idempotency_key": idempotency_key},
            ),
        )
        return customer["id"]

    def saved_cards(self, customer_id: str) -> list[dict]:
        """The cards saved to a customer that Checkout offers again, as Stripe has them
        now (those saved for redisplay: Checkout shows only `always`)."""
        self._check_id("customer", customer_id)
        page = self._call(
            "saved card listing",
            lambda: self.client.v1.payment_methods.list(
                params={
                    "customer": customer_id,
                    "type": "card",
                    "allow_redisplay": "always",
                    "limit": 10,
                }
            ),
        )
        return page["data"]

    def create_billing_portal_session(self, customer_id: str, return_url: str) -> str:
        """A short-lived link to Stripe's customer portal (cards, invoices); its URL."""
        self._check_id("customer", customer_id)
        portal_session = self._call(
            "billing portal session creation",
            lambda: self.client.v1.billing_portal.sessions.create(
                params={"customer": customer_id, "return_url": return_url}
            ),
        )
        return portal_session["url"]

    # -- auto-recharge: the card set up for it, off-session charges, their invoices ----

    def retrieve_setup_session(self, session_id: str) -> dict:
        """A setup-mode Checkout Session with its SetupIntent and the card it saved."""
        self._check_id("checkout.session", session_id)
        return self._call(
            "setup session lookup",
            lambda: self.client.v1.checkout.sessions.retrieve(
                session_id, params={"expand": ["setup_intent.payment_method"]}
            ),
        )

    def create_payment_intent(self, params: dict, idempotency_key: str) -> dict:
        """Create a PaymentIntent without confirming it: nothing is charged yet."""
        return self._call(
            "payment intent creation",
            lambda: self.client.v1.payment_intents.create(
                params=params, options={"idempotency_key": idempotency_key}
            ),
        )

    def confirm_off_session(self, intent_id: str, idempotency_key: str) -> dict:
        """Charge a PaymentIntent's card with the customer away; return the PaymentIntent
        as Stripe has it, paid or not.

        A card error (a decline, `authentication_required`) is an answer here, not a
        failure: Stripe sends the PaymentIntent it left unpaid along with the error.

        :raises PaymentProviderError: Stripe refused the request or could not be reached.
        """
        self._check_id("payment_intent", intent_id)
        try:
            intent = self.client.v1.payment_intents.confirm(
                intent_id,
                params={"off_session": True, "expand": ["latest_charge"]},
                options={"idempotency_key": idempotency_key},
            )
        except stripe.CardError as error:
            body = (error.json_body or {}).get("error") or {}
            if isinstance(body.get("payment_intent"), dict):
                log.info("Stripe did not charge the saved card: %s", body.get("code"))
                return body["payment_intent"]
            raise _provider_error("off-session charge", error) from error
        except stripe.StripeError as error:
            raise _provider_error("off-session charge", error) from error
        return intent.to_dict()

    def confirm_payment_intent(self, intent_id: str, payment_method: str, return_url: str) -> dict:
        """Confirm a PaymentIntent with the customer present; the answer's `next_action`
        says where to send them to authenticate, and `return_url` brings them back."""
        self._check_id("payment_intent", intent_id)
        return self._call(
            "payment intent confirmation",
            lambda: self.client.v1.payment_intents.confirm(
                intent_id, params={"payment_method": payment_method, "return_url": return_url}
            ),
        )

    def cancel_payment_intent(self, intent_id: str) -> dict:
        """Cancel an unpaid PaymentIntent, so that it can never be charged."""
        self._check_id("payment_intent", intent_id)
        return self._call(
            "payment intent cancellation",
            lambda: self.client.v1.payment_intents.cancel(
                intent_id, params={"cancellation_reason": "abandoned"}
            ),
        )

    def invoice_payment(
        self,
        customer_id: str,
        payment_intent: str,
        line: dict,
        metadata: dict,
        idempotency_key: str,
    ) -> dict:
        """A numbered, paid invoice for a payment made outside Checkout; return it.

        The invoice is made as a draft with one line (`line`: amount, currency,
        description), finalised without collecting, and paid by attaching the succeeded
        PaymentIntent. Each step has its own key, so calling again after a failure part
        way resumes where it stopped.
        """
        self._check_id("payment_intent", payment_intent)

        def options(step: str) -> dict:
            return {"idempotency_key": f"{idempotency_key}-{step}"}

        invoices = self.client.v1.invoices
        invoice = self._call(
            "invoice creation",
            lambda: invoices.create(
                params={
                    "customer": customer_id,
                    "currency": line["currency"],
                    "collection_method": "charge_automatically",
                    "auto_advance": False,
                    "pending_invoice_items_behavior": "exclude",
                    "description": line["description"],
                    "metadata": metadata,
                },
                options=options("invoice"),
            ),
        )
        self._call(
            "invoice item creation",
            lambda: self.client.v1.invoice_items.create(
                params={
                    "customer": customer_id,
                    "invoice": invoice["id"],
                    "amount": line["amount"],
                    "currency": line["currency"],
                    "description": line["description"],
                    "metadata": metadata,
                },
                options=options("line"),
            ),
        )
        self._call(
            "invoice finalisation",
            lambda: invoices.finalize_invoice(
                invoice["id"], params={"auto_advance": False}, options=options("finalize")
            ),
        )
        return self._call(
            "invoice payment",
            lambda: invoices.attach_payment(
                invoice["id"], params={"payment_intent": payment_intent}, options=options("pay")
            ),
        )

    def retrieve_payment_intent(self, intent_id: str) -> dict:
        self._check_id("payment_intent", intent_id)
        return self._call(
            "payment intent lookup",
            lambda: self.client.v1.payment_intents.retrieve(
                intent_id, params={"expand": ["latest_charge"]}
            ),
        )

    def create_refund(
        self,
        payment_intent: str,
        amount_cents: int,
        reason: str,
        idempotency_key: str,
        metadata: dict | None = None,
    ) -> dict:
        """Refund part or all of a payment to the original payment method."""
        return self._call(
            "refund creation",
            lambda: self.client.v1.refunds.create(
                params={
                    "payment_intent": payment_intent,
                    "amount": amount_cents,
                    "reason": reason,
                    "metadata": metadata or {},
                },
                options={"idempotency_key": idempotency_key},
            ),
        )

    def retrieve_refund(self, refund_id: str) -> dict:
        self._check_id("refund", refund_id)
        return self._call("refund lookup", lambda: self.client.v1.refunds.retrieve(refund_id))

    def retrieve_dispute(self, dispute_id: str) -> dict:
        self._check_id("dispute", dispute_id)
        return self._call("dispute lookup", lambda: self.client.v1.disputes.retrieve(dispute_id))

    def disputes_since(self, created_since: int) -> Iterator[dict]:
        """Yield every dispute opened at or after `created_since`, newest first."""
        params = {"created": {"gte": created_since}, "limit": 100}
        while True:
            page = self._call(
                "dispute listing",
                lambda params=params: self.client.v1.disputes.list(params=params),
            )
            yield from page["data"]
            if not page["has_more"] or not page["data"]:
                return
            params = {**params, "starting_after": page["data"][-1]["id"]}

    def verify_event(self, payload: bytes, signature_header: str | None) -> dict:
        """Check a webhook's signature against each current secret and return the event.

        Several secrets are accepted so that the endpoint secret can be rotated.

        :raises InvalidWebhook: no secret matches, the header is malformed, stale or dated
            in the future, or the body is not an event.
        """
        if not signature_header or not self.webhook_secrets:
            raise InvalidWebhook("missing signature")
        text = payload.decode("utf-8", errors="replace")
        for secret in self.webhook_secrets:
            try:
                # The library refuses only signatures older than the tolerance.
                stripe.WebhookSignature.verify_header(text, signature_header, secret, TOLERANCE)
            except stripe.SignatureVerificationError:
                continue
            if _signed_at(signature_header) > time.time() + TOLERANCE:
                raise InvalidWebhook("signature timestamp is in the future")
            return _parse_event(text)
        raise InvalidWebhook("signature does not match")


def _signed_at(signature_header: str) -> int:
    """The `t=` timestamp of a Stripe-Signature header that the library has just
    verified, read as the library reads it (the first `t` item)."""
    items = [item.split("=", 2) for item in signature_header.split(",")]
    return int(next(item[1] for item in items if item[0] == "t"))


def _parse_event(text: str) -> dict:
    """The event a verified body holds.

    :raises InvalidWebhook: the body is not JSON, is nested deeper than any event, or is
        not shaped like an event.
    """
    try:
        document = json.loads(text)
    except RecursionError as error:
        # The parser recurses once per level: a deep enough body exhausts the stack.
        raise InvalidWebhook("body is nested too deeply") from error
    except ValueError as error:
        raise InvalidWebhook("body is not JSON") from error
    if _depth(document) > MAX_EVENT_DEPTH:
        raise InvalidWebhook("body is nested too deeply")
    if not isinstance(document, dict) or not isinstance(document.get("data"), dict):
        raise InvalidWebhook("body is not an event")
    if "object" not in document["data"]:
        raise InvalidWebhook("event without data.object")
    return document


def _depth(document) -> int:
    """How deeply the objects and arrays of a parsed JSON document nest (without recursion)."""
    deepest = 0
    pending = [(document, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict | list):
            deepest = max(deepest, depth)
            children = value.values() if isinstance(value, dict) else value
            pending.extend((child, depth + 1) for child in children)
    return deepest


def _provider_error(what: str, error: stripe.StripeError) -> PaymentProviderError:
    """The portal's error for one of Stripe's: `NoSuchObject` for its 404, and retryable
    when asking again may help (no connection, Stripe's 5xx, its rate limit)."""
    log.warning("Stripe refused or failed %s: %s", what, error.user_message or error)
    status = error.http_status or 0
    if isinstance(error, stripe.InvalidRequestError) and status == 404:
        return NoSuchObject(error.user_message or str(error), retryable=False, code=error.code)
    retryable = isinstance(error, stripe.APIConnectionError) or status >= 500 or status == 429
    return PaymentProviderError(
        error.user_message or str(error), retryable=retryable, code=error.code
    )


def purchase_id_of(stripe_object: dict) -> int | None:
    """Our purchase id as we sent it to Stripe: a session's `client_reference_id`, or the
    `purchase_id` in any object's metadata (sessions and PaymentIntents carry both).

    Anything but the text of a positive id that fits the purchases' id column names no
    purchase of ours.
    """
    metadata = stripe_object.get("metadata")
    candidates = [stripe_object.get("client_reference_id")]
    if isinstance(metadata, dict):
        candidates.append(metadata.get("purchase_id"))
    for candidate in candidates:
        purchase_id = parse_id(candidate) if isinstance(candidate, str) else None
        if purchase_id is not None:
            return purchase_id
    return None


def gateway() -> StripeGateway:
    """The app's gateway, built once at start-up."""
    return current_app.extensions["stripe_gateway"]


def register(app: Flask) -> None:
    config = app.config
    api_base = config["STRIPE_API_BASE"] or None
    http_client = None
    if config["PAYMENTS_MODE"] == "sandbox" and api_base is None:
        api_base, http_client = IN_PROCESS_BASE, InProcessHttpClient(app)
    app.extensions["stripe_gateway"] = StripeGateway(
        config["STRIPE_SECRET_KEY"],
        [config["STRIPE_WEBHOOK_SECRET"], config.get("STRIPE_WEBHOOK_SECRET_PREVIOUS", "")],
        api_base=api_base,
        http_client=http_client,
    )
