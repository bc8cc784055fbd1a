"""Counters and histograms, updated where things happen (a request answered, a webhook
handled, a purchase fulfilled, a refund settled) and served by `ops.metrics`.

They import nothing of the portal, so any module may count without pulling in the
metrics endpoint and what it reads.
"""

from prometheus_client import Counter, Histogram

REQUEST_SECONDS = Histogram(
    "portal_request_seconds",
    "Time to answer a request",
    ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
WEBHOOK_EVENTS = Counter(
    "portal_webhook_events_total", "Stripe webhook events received", ["type", "outcome"]
)
FULFILMENTS = Counter("portal_fulfilments_total", "Checkout fulfilment outcomes", ["outcome"])
REFUNDS = Counter("portal_refunds_total", "Refunds reaching a status", ["status"])
