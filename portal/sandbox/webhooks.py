"""Sending the sandbox's events to the portal's webhook endpoint, signed as Stripe signs."""

import hashlib
import hmac
import json
import logging
import threading
import time

from flask import Flask

from portal.sandbox.wsgi import call_app

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/stripe"
RETRY_DELAYS_SECONDS = (0.2, 1, 5)


def signature_header(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """Return a Stripe-Signature header value: HMAC-SHA256 of "{t}.{payload}"."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


class WebhookSender:
    """Deliver each event: in a background thread (as Stripe does), inline, or not at all.

    SANDBOX_WEBHOOKS picks the mode: "thread" (default), "inline" (tests that want the
    event handled before the call returns) or "off" (tests that deliver by hand).
    """

    def __init__(self, app: Flask):
        self.app = app

    def __call__(self, event: dict) -> None:
        mode = self.app.config.get("SANDBOX_WEBHOOKS", "thread")
        if mode == "off":
            return
        payload = json.dumps(event).encode()
        if mode == "inline":
            self.deliver(payload)
        else:
            threading.Thread(
                target=self._deliver_with_retries, args=(payload,), daemon=True
            ).start()

    def deliver(self, payload: bytes) -> int:
        secret = self.app.config["STRIPE_WEBHOOK_SECRET"]
        headers = {
            "Content-Type": "application/json",
            "Stripe-Signature": signature_header(payload, secret),
        }
        status, _, _ = call_app(self.app, "POST", WEBHOOK_PATH, headers, payload)
        return status

    def _deliver_with_retries(self, payload: bytes) -> None:
        # Stripe retries failed deliveries for days; the sandbox tries a few times.
        for delay in RETRY_DELAYS_SECONDS:
            time.sleep(delay)
            try:
                if 200 <= self.deliver(payload) < 300:
                    return
            except Exception:  # a background thread must never die silently
                log.exception("sandbox webhook delivery failed")
        log.warning("sandbox gave up delivering an event after %d tries", len(RETRY_DELAYS_SECONDS))
