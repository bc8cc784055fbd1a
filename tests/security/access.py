"""The access matrix: every route of the URL map, for every kind of caller.

MATRIX is the explicit, reviewed table of expected outcomes, keyed by endpoint and method.
A route added to the portal without a row here fails `test_matrix_covers_every_route`.
Requests use real objects: customer A's purchase, job, refund request and attachment;
customer B names A's ids (and must get 404, never A's data); the terminated account names
its own objects (it keeps read access to its history). POSTs carry a valid CSRF token of
the acting browser, so that the outcome reflects authorization, not CSRF.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from tests.security.helpers import (
    NEW_PASSWORD,
    ROLES,
    Actor,
    World,
    unique_email,
)

# -- outcomes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    name: str
    statuses: tuple[int, ...]
    # For redirects: "login", a path the Location must have, or None (anywhere but log-in).
    location: str | None = None

    def problem(self, response) -> str | None:
        if response.status_code not in self.statuses:
            return f"expected {self.name}, got {response.status_code}"
        if response.status_code not in (301, 302, 303, 307, 308):
            return None
        target = urlsplit(response.headers.get("Location", ""))
        if target.netloc not in ("", "portal.test"):
            return f"redirect leaves the site: {response.headers['Location']}"
        if self.location == "login":
            if target.path != "/login" or "next=" not in target.query:
                return f"expected a redirect to log-in, got {response.headers['Location']}"
        elif self.location is not None:
            if target.path != self.location:
                where = response.headers["Location"]
                return f"expected a redirect to {self.location}, got {where}"
        elif target.path == "/login":
            return f"expected {self.name}, got a redirect to log-in"
        return None


OK = Outcome("page", (200,))
CREATED = Outcome("created", (201,))
REDIRECT = Outcome("redirect", (302, 303))
LOGIN = Outcome("log-in redirect", (302,), "login")
BAD = Outcome("400", (400,))
UNAUTHORIZED = Outcome("401", (401,))
FORBIDDEN = Outcome("403", (403,))
MISSING = Outcome("404", (404,))


def to(path: str) -> Outcome:
    return Outcome(f"redirect to {path}", (302, 303), path)


# -- rows -----------------------------------------------------------------------------------


def everyone(outcome: Outcome) -> dict[str, Outcome]:
    """Public: the same answer whoever asks."""
    return dict.fromkeys(ROLES, outcome)


def members(outcome: Outcome = OK, **overrides: Outcome) -> dict[str, Outcome]:
    """Any logged-in user; guests (and the API token, which is no log-in) go to log-in."""
    row = {role: outcome for role in ROLES} | {"anonymous": LOGIN, "api_token": LOGIN}
    return row | overrides


def owner_only(outcome: Outcome = OK, **overrides: Outcome) -> dict[str, Outcome]:
    """A customer's own object: the owner gets it, anyone else logged in gets 404."""
    return members(outcome, customer_b=MISSING, staff=MISSING) | overrides


def guests_only(outcome: Outcome) -> dict[str, Outcome]:
    """Sign-up and log-in: a logged-in user is sent home instead."""
    return members(to("/dashboard"), anonymous=outcome, api_token=outcome, staff=to("/staff/"))


def staff_only(outcome: Outcome = OK) -> dict[str, Outcome]:
    """The staff blueprint: guests go to log-in, customers get 403."""
    return members(FORBIDDEN, staff=outcome)


def api_only(outcome: Outcome = OK) -> dict[str, Outcome]:
    """The jobs API: its bearer token and nothing else (no session cookie) opens it."""
    row = everyone(UNAUTHORIZED)
    row["api_token"] = outcome
    return row


MATRIX: dict[str, dict[str, dict[str, Outcome]]] = {
    # public pages
    "pages.landing": {"GET": everyone(OK)},
    "pages.refund_policy": {"GET": everyone(OK)},
    "pages.contact": {"GET": everyone(OK)},
    "pages.status": {"GET": everyone(OK)},
    # operations: health checks are public; metrics only for configured networks or a token
    # (every matrix caller comes from an outside address)
    "ops.healthz": {"GET": everyone(OK)},
    "ops.readyz": {"GET": everyone(OK)},
    "metrics.metrics": {"GET": everyone(MISSING)},
    # accounts
    "accounts.signup": {"GET": guests_only(OK), "POST": guests_only(to("/login"))},
    "accounts.finish_sign_up": {"GET": everyone(OK), "POST": everyone(to("/dashboard"))},
    "accounts.login": {"GET": guests_only(OK), "POST": guests_only(to("/dashboard"))},
    "accounts.logout": {"POST": everyone(to("/"))},
    "accounts.settings": {"GET": members(OK), "POST": members(to("/account"))},
    "accounts.browser_timezone": {"POST": members(OK)},
    "accounts.export_data": {"GET": members(OK)},
    "accounts.turn_off_low_balance_alert": {"POST": members(to("/account"))},
    # (sent with a wrong password: the matrix must not erase its own users)
    "accounts.close_account": {"POST": members(to("/account"))},
    "accounts.reset_request": {"GET": everyone(OK), "POST": everyone(to("/login"))},
    "accounts.reset_password": {"GET": everyone(OK), "POST": everyone(to("/login"))},
    # (no one in the matrix has just given a password: the code page sends them back)
    "accounts.second_factor": {"GET": everyone(to("/login")), "POST": everyone(to("/login"))},
    "accounts.second_factor_qr_code": {"GET": everyone(MISSING)},
    # buying
    "billing.buy": {"GET": members(OK), "POST": members(REDIRECT, terminated=FORBIDDEN)},
    "billing.checkout_success": {"GET": owner_only(OK)},
    "billing.checkout_cancel": {"GET": members(OK)},
    "billing.cancel_purchase": {"POST": owner_only(to("/purchases"))},
    "billing.purchases": {"GET": members(OK)},
    "billing.purchase": {"GET": owner_only(OK)},
    "billing.manage_billing": {"POST": members(REDIRECT)},
    # auto-recharge: customers only; a terminated account may look and switch off, not pay
    "billing.auto_recharge_settings": {
        "GET": members(OK, staff=MISSING),
        "POST": members(REDIRECT, staff=MISSING, terminated=FORBIDDEN),
    },
    "billing.auto_recharge_card": {"POST": members(REDIRECT, staff=MISSING, terminated=FORBIDDEN)},
    "billing.auto_recharge_card_saved": {
        "GET": members(to("/account/auto-recharge"), staff=MISSING, terminated=FORBIDDEN)
    },
    "billing.auto_recharge_off": {"POST": members(to("/account/auto-recharge"), staff=MISSING)},
    "billing.confirm_recharge": {"GET": owner_only(REDIRECT)},
    "billing.confirm_recharge_now": {"POST": owner_only(REDIRECT, terminated=FORBIDDEN)},
    "billing.recharge_confirmed": {"GET": owner_only(REDIRECT)},
    "billing.cancel_recharge": {"POST": owner_only(REDIRECT)},
    # the customer's pages
    "ledger.dashboard": {"GET": members(OK)},
    "ledger.history": {"GET": members(OK)},
    "ledger.history_csv": {"GET": members(OK)},
    "jobs.index": {"GET": members(OK)},
    "jobs.show": {"GET": owner_only(OK)},
    "notifications.index": {"GET": members(OK)},
    "notifications.show": {"GET": owner_only(OK)},
    "refunds.index": {"GET": members(OK)},
    "refunds.new": {"GET": owner_only(OK), "POST": owner_only(OK)},
    "refunds.show": {"GET": owner_only(OK), "POST": owner_only(REDIRECT)},
    # staff may open a customer's screenshot from the request page; other customers may not
    "refunds.attachment": {"GET": owner_only(OK, staff=OK)},
    # the jobs API (bearer token); its description is public
    "jobs_api.create_job": {"POST": api_only(CREATED)},
    "jobs_api.create_jobs": {"POST": api_only(OK)},
    "jobs_api.show_job": {"GET": api_only(OK)},
    "jobs_api.complete_job": {"POST": api_only(OK)},
    "jobs_api.fail_job": {"POST": api_only(OK)},
    "jobs_api.customer_balance": {"GET": api_only(OK)},
    "jobs_api.openapi": {"GET": everyone(OK)},
    # Stripe's webhook: only a valid signature opens it, whoever is logged in
    "webhooks.stripe_webhook": {"POST": everyone(BAD)},
    # the sandbox's hosted pages stand in for Stripe's: public by design (sandbox mode only)
    "sandbox.checkout": {"GET": everyone(OK)},
    "sandbox.pay": {"POST": everyone(REDIRECT)},
    "sandbox.cancel": {"POST": everyone(to("/credits/cancel"))},
    "sandbox.dashboard": {"GET": everyone(OK)},
    "sandbox.settle_delayed": {"POST": everyone(to("/sandbox/"))},
    "sandbox.settle_refund": {"POST": everyone(to("/sandbox/"))},
    "sandbox.open_dispute": {"POST": everyone(to("/sandbox/"))},
    "sandbox.close_dispute": {"POST": everyone(to("/sandbox/"))},
    # Stripe's hosted invoice and portal pages: their links are the key to them.
    "sandbox.hosted_invoice": {"GET": everyone(OK)},
    "sandbox.invoice_pdf": {"GET": everyone(OK)},
    "sandbox.billing_portal": {"GET": everyone(OK), "POST": everyone(MISSING)},
    # the bank's 3-D Secure page: its link is the key to it (aimed at no payment here)
    "sandbox.authenticate": {"GET": everyone(MISSING), "POST": everyone(MISSING)},
    # the sandbox's Stripe API wants a secret key, which no browser or service token is
    "sandbox_api.create_session": {"POST": everyone(UNAUTHORIZED)},
    "sandbox_api.list_sessions": {"GET": everyone(UNAUTHORIZED)},
    "sandbox_api.retrieve_session": {"GET": everyone(UNAUTHORIZED)},
    "sandbox_api.session_line_items": {"GET": everyone(UNAUTHORIZED)},
    "sandbox_api.expire_session": {"POST": everyone(UNAUTHORIZED)},
    "sandbox_api.retrieve_payment_intent": {"GET": everyone(UNAUTHORIZED)},
    "sandbox_api.create_refund": {"POST": everyone(UNAUTHORIZED)},
    "sandbox_api.retrieve_refund": {"GET": everyone(UNAUTHORIZED)},
    "sandbox_api.list_events": {"GET": everyone(UNAUTHORIZED)},
    "sandbox_api.retrieve_dispute": {"GET": everyone(UNAUTHORIZED)},
    "sandbox_api.list_disputes": {"GET": everyone(UNAUTHORIZED)},
    "sandbox_api.create_customer": {"POST": everyone(UNAUTHORIZED)},
    "sandbox_api.list_payment_methods": {"GET": everyone(UNAUTHORIZED)},
    "sandbox_api.create_portal_session": {"POST": everyone(UNAUTHORIZED)},
    "sandbox_api.create_payment_intent": {"POST": everyone(UNAUTHORIZED)},
    "sandbox_api.confirm_payment_intent": {"POST": everyone(UNAUTHORIZED)},
    "sandbox_api.cancel_payment_intent": {"POST": everyone(UNAUTHORIZED)},
    "sandbox_api.create_invoice": {"POST": everyone(UNAUTHORIZED)},
    "sandbox_api.create_invoice_item": {"POST": everyone(UNAUTHORIZED)},
    "sandbox_api.finalize_invoice": {"POST": everyone(UNAUTHORIZED)},
    "sandbox_api.attach_payment": {"POST": everyone(UNAUTHORIZED)},
    # staff: the blueprint is guarded as a whole
    "staff.queue": {"GET": staff_only(OK)},
    "staff.request_detail": {"GET": staff_only(OK)},
    "staff.take": {"POST": staff_only(REDIRECT)},
    "staff.assign": {"POST": staff_only(REDIRECT)},
    "staff.note": {"POST": staff_only(REDIRECT)},
    "staff.message": {"POST": staff_only(REDIRECT)},
    "staff.ask": {"POST": staff_only(REDIRECT)},
    "staff.deny": {"POST": staff_only(REDIRECT)},
    "staff.approve": {"POST": staff_only(REDIRECT)},
    "staff.credit_instead": {"POST": staff_only(REDIRECT)},
    "staff.undo_refund": {"POST": staff_only(REDIRECT)},
    "staff.retry_refund": {"POST": staff_only(REDIRECT)},
    "staff.incidents": {"GET": staff_only(OK), "POST": staff_only(to("/staff/incidents"))},
    "staff.end_incident": {"POST": staff_only(to("/staff/incidents"))},
    "staff.audit_log": {"GET": staff_only(OK)},
    "staff.audit_csv": {"GET": staff_only(OK)},
    "staff.export_customer": {"GET": staff_only(OK)},
    "staff.close_customer": {"POST": staff_only(to("/staff/"))},
    # (aimed at the already terminated account: refused with a flash, nothing changes)
    "staff.terminate_customer": {"POST": staff_only(to("/staff/"))},
    "staff.team": {"GET": staff_only(OK)},
    "staff.reset_second_factor": {"POST": staff_only(to("/staff/team"))},
}

# Calls that change the browser's own session (log in, log out, reset) get a new browser.
FRESH_BROWSER = {
    ("accounts.signup", "POST"),
    ("accounts.login", "POST"),
    ("accounts.logout", "POST"),
    ("accounts.reset_password", "POST"),
    ("accounts.finish_sign_up", "POST"),
}

# The sandbox's hosted Checkout page shows its customer's e-mail to whoever has the
# session's link, as Stripe's does. Its dashboard lists sessions to staff only.
MAY_SHOW_A_TO_ANYONE = {"sandbox.checkout"}


# -- the requests ---------------------------------------------------------------------------


@dataclass
class Call:
    path: str
    data: dict | None = None
    json: dict | None = None
    headers: dict | None = None


def fake_event() -> dict:
    return {
        "id": "evt_unsigned",
        "object": "event",
        "type": "checkout.session.completed",
        "data": {"object": {"id": "cs_unsigned", "object": "checkout.session"}},
    }


def call_for(endpoint: str, method: str, world: World, actor: Actor) -> Call:  # noqa: C901
    """The request `actor` makes for one cell: real ids, a valid body."""
    mine = world.objects_for(actor.role)
    a_email = world.customer_a.email
    running = world.running_job_ids
    request_id = mine.request_id
    match endpoint, method:
        case ("pages.landing", _):
            return Call("/")
        case ("pages.refund_policy", _):
            return Call("/refund-policy")
        case ("pages.contact", _):
            return Call("/contact")
        case ("pages.status", _):
            return Call("/status")
        case ("ops.healthz", _):
            return Call("/healthz")
        case ("ops.readyz", _):
            return Call("/readyz")
        case ("metrics.metrics", _):
            return Call("/metrics")
        case ("accounts.signup", "GET"):
            return Call("/signup")
        case ("accounts.signup", "POST"):
            email = unique_email("newcomer")
            return Call(
                "/signup", {"email": email, "password": NEW_PASSWORD, "confirm": NEW_PASSWORD}
            )
        case ("accounts.finish_sign_up", "GET"):
            return Call(f"/signup/finish/{world.fresh_sign_up_token()}")
        case ("accounts.finish_sign_up", "POST"):
            return Call(f"/signup/finish/{world.fresh_sign_up_token()}", {})
        case ("accounts.login", "GET"):
            return Call("/login")
        case ("accounts.login", "POST"):
            from tests.factories import DEFAULT_PASSWORD

            return Call("/login", {"email": world.spare.email, "password": DEFAULT_PASSWORD})
        case ("accounts.logout", _):
            return Call("/logout", {})
        case ("accounts.settings", "GET"):
            return Call("/account")
        case ("accounts.settings", "POST"):
            return Call("/account", {"tz-timezone": "Europe/Paris", "tz-csrf_token": actor.csrf})
        case ("accounts.export_data", _):
            return Call("/account/export")
        case ("accounts.turn_off_low_balance_alert", _):
            return Call("/account/low-balance-alert/off", {})
        case ("accounts.close_account", _):
            form = {
                "close-current_password": "not the password at all",
                "close-confirm": "y",
                "close-csrf_token": actor.csrf,
            }
            return Call("/account/close", form)
        case ("accounts.browser_timezone", _):
            return Call("/account/browser-timezone", {"timezone": "Europe/Paris"})
        case ("accounts.reset_request", "GET"):
            return Call("/reset")
        case ("accounts.reset_request", "POST"):
            return Call("/reset", {"email": world.reset_user.email})
        case ("accounts.reset_password", "GET"):
            return Call(f"/reset/{world.reset_token}")
        case ("accounts.reset_password", "POST"):
            new = {"password": NEW_PASSWORD, "confirm": NEW_PASSWORD}
            return Call(f"/reset/{world.fresh_reset_token()}", new)
        case ("billing.buy", "GET"):
            return Call("/credits/buy")
        case ("billing.buy", "POST"):
            return Call("/credits/buy", {"package": "pro"})
        case ("billing.checkout_success", _):
            return Call(f"/credits/success?session_id={mine.pending_session_id}")
        case ("billing.checkout_cancel", _):
            return Call("/credits/cancel")
        case ("billing.cancel_purchase", _):
            return Call(f"/purchases/{mine.pending_purchase_id}/cancel", {})
        case ("billing.purchases", _):
            return Call("/purchases")
        case ("billing.purchase", _):
            return Call(f"/purchases/{mine.purchase_id}")
        case ("billing.manage_billing", _):
            return Call("/account/billing", {})
        case ("billing.auto_recharge_settings", "GET"):
            return Call("/account/auto-recharge")
        case ("billing.auto_recharge_settings", "POST"):
            form = {"threshold": "100", "package": "pro", "monthly_cap": "100"}
            return Call("/account/auto-recharge", form | {"csrf_token": actor.csrf})
        case ("billing.auto_recharge_card", _):
            return Call("/account/auto-recharge/card", {})
        case ("billing.auto_recharge_card_saved", _):
            return Call("/account/auto-recharge/card?session_id=cs_not_theirs")
        case ("billing.auto_recharge_off", _):
            return Call("/account/auto-recharge/off", {})
        case ("billing.confirm_recharge", _):
            return Call(f"/purchases/{mine.purchase_id}/confirm")
        case ("billing.confirm_recharge_now", _):
            return Call(f"/purchases/{mine.purchase_id}/confirm", {})
        case ("billing.recharge_confirmed", _):
            return Call(f"/purchases/{mine.purchase_id}/confirmed")
        case ("billing.cancel_recharge", _):
            return Call(f"/purchases/{mine.purchase_id}/confirm/cancel", {})
        case ("ledger.dashboard", _):
            return Call("/dashboard")
        case ("ledger.history", _):
            return Call("/history?kind=purchase_credit&start=2020-01-01&end=2100-01-01")
        case ("ledger.history_csv", _):
            return Call("/history.csv")
        case ("jobs.index", _):
            return Call("/jobs")
        case ("jobs.show", _):
            return Call(f"/jobs/{mine.job_id}")
        case ("notifications.index", _):
            return Call("/messages")
        case ("notifications.show", _):
            return Call(f"/messages/{mine.email_id}")
        case ("refunds.index", _):
            return Call("/refunds/")
        case ("refunds.new", "GET"):
            return Call(f"/refunds/new?purchase_id={mine.purchase_id}")
        case ("refunds.new", "POST"):
            form = {
                "purchase_id": str(mine.purchase_id),
                "job_id": "",
                "reason": "other",
                "details": "I no longer need these credits.",
                "transaction_ids": "",
                "step": "review",
            }
            return Call("/refunds/new", form)
        case ("refunds.show", "GET"):
            return Call(f"/refunds/{request_id}")
        case ("refunds.show", "POST"):
            return Call(f"/refunds/{request_id}", {"body": "Here is the receipt number."})
        case ("refunds.attachment", _):
            return Call(f"/refunds/attachments/{mine.attachment_id}")
        case ("jobs_api.create_job", _):
            body = {
                "external_id": unique_email("ext"),
                "customer_email": a_email,
                "operation": "upscale",
                "credits": 1,
            }
            return Call("/api/v1/jobs", json=body)
        case ("jobs_api.create_jobs", _):
            body = {
                "external_id": unique_email("ext"),
                "customer_email": a_email,
                "operation": "upscale",
                "credits": 1,
            }
            return Call("/api/v1/jobs:batch", json={"jobs": [body]})
        case ("jobs_api.show_job", _):
            return Call(f"/api/v1/jobs/{mine.job_id}")
        case ("jobs_api.complete_job", _):
            return Call(f"/api/v1/jobs/{running[0]}/complete", json={})
        case ("jobs_api.fail_job", _):
            body = {"reason": "platform_error", "detail": "worker lost"}
            return Call(f"/api/v1/jobs/{running[1]}/fail", json=body)
        case ("jobs_api.customer_balance", _):
            return Call(f"/api/v1/customers/{a_email}/balance")
        case ("jobs_api.openapi", _):
            return Call("/api/v1/openapi.json")
        case ("webhooks.stripe_webhook", _):
            signature = {"Stripe-Signature": "t=1700000000,v1=" + "0" * 64}
            return Call("/webhooks/stripe", json=fake_event(), headers=signature)
        case ("sandbox.checkout", _):
            return Call(f"/sandbox/checkout/{world.open_session_id}")
        case ("sandbox.pay", _):
            return Call(
                f"/sandbox/checkout/{world.open_session_id}/pay", {"card": "4242424242424242"}
            )
        case ("sandbox.cancel", _):
            return Call(f"/sandbox/checkout/{world.open_session_id}/cancel", {})
        case ("sandbox.dashboard", _):
            return Call("/sandbox/")
        case ("sandbox.settle_delayed", _):
            form = {"outcome": "succeeded"}
            return Call(f"/sandbox/sessions/{world.delayed_session_id}/settle", form)
        case ("sandbox.settle_refund", _):
            return Call(f"/sandbox/refunds/{world.sandbox_refund_id}/settle", {})
        case ("sandbox.open_dispute", _):
            return Call(f"/sandbox/charges/{world.sandbox_charge_id}/dispute", {"kind": "inquiry"})
        case ("sandbox.close_dispute", _):
            form = {"outcome": "won"}
            return Call(f"/sandbox/disputes/{world.sandbox_dispute_id}/close", form)
        case ("sandbox.hosted_invoice", _):
            return Call(f"/sandbox/invoices/{world.sandbox_invoice_id}")
        case ("sandbox.invoice_pdf", _):
            return Call(f"/sandbox/invoices/{world.sandbox_invoice_id}.pdf")
        case ("sandbox.billing_portal", "GET"):
            return Call(f"/sandbox/billing/{world.sandbox_portal_session_id}")
        case ("sandbox.billing_portal", "POST"):
            # Removing a card that is not this customer's: no such card here.
            return Call(f"/sandbox/billing/{world.sandbox_portal_session_id}", {"remove": "pm_x"})
        case ("sandbox.authenticate", "GET"):
            return Call("/sandbox/authenticate/pi_unknown")
        case ("sandbox.authenticate", "POST"):
            return Call("/sandbox/authenticate/pi_unknown", {"outcome": "complete"})
        case ("sandbox_api.create_payment_intent", _):
            return Call("/sandbox/v1/payment_intents", {"amount": "2000", "currency": "usd"})
        case ("sandbox_api.confirm_payment_intent", _):
            return Call("/sandbox/v1/payment_intents/pi_unknown/confirm", {})
        case ("sandbox_api.cancel_payment_intent", _):
            return Call("/sandbox/v1/payment_intents/pi_unknown/cancel", {})
        case ("sandbox_api.create_invoice", _):
            return Call("/sandbox/v1/invoices", {"customer": "cus_unknown"})
        case ("sandbox_api.create_invoice_item", _):
            return Call("/sandbox/v1/invoiceitems", {"customer": "cus_unknown", "amount": "1"})
        case ("sandbox_api.finalize_invoice", _):
            return Call("/sandbox/v1/invoices/in_unknown/finalize", {})
        case ("sandbox_api.attach_payment", _):
            return Call(
                "/sandbox/v1/invoices/in_unknown/attach_payment", {"payment_intent": "pi_x"}
            )
        case ("sandbox_api.create_customer", _):
            return Call("/sandbox/v1/customers", {"email": "x@example.com"})
        case ("sandbox_api.list_payment_methods", _):
            return Call("/sandbox/v1/payment_methods?customer=cus_unknown")
        case ("sandbox_api.create_portal_session", _):
            return Call("/sandbox/v1/billing_portal/sessions", {"customer": "cus_unknown"})
        case ("sandbox_api.retrieve_dispute", _):
            return Call(f"/sandbox/v1/disputes/{world.sandbox_dispute_id}")
        case ("sandbox_api.list_disputes", _):
            return Call("/sandbox/v1/disputes")
        case ("sandbox_api.create_session", _):
            return Call("/sandbox/v1/checkout/sessions", {"mode": "payment"})
        case ("sandbox_api.list_sessions", _):
            return Call("/sandbox/v1/checkout/sessions")
        case ("sandbox_api.retrieve_session", _):
            return Call(f"/sandbox/v1/checkout/sessions/{world.open_session_id}")
        case ("sandbox_api.session_line_items", _):
            return Call(f"/sandbox/v1/checkout/sessions/{world.open_session_id}/line_items")
        case ("sandbox_api.expire_session", _):
            return Call(f"/sandbox/v1/checkout/sessions/{world.open_session_id}/expire", {})
        case ("sandbox_api.retrieve_payment_intent", _):
            return Call("/sandbox/v1/payment_intents/pi_unknown")
        case ("sandbox_api.create_refund", _):
            return Call("/sandbox/v1/refunds", {"payment_intent": "pi_unknown", "amount": "100"})
        case ("sandbox_api.retrieve_refund", _):
            return Call(f"/sandbox/v1/refunds/{world.sandbox_refund_id}")
        case ("sandbox_api.list_events", _):
            return Call("/sandbox/v1/events")
        case ("staff.queue", _):
            return Call("/staff/?status=open&sort=age")
        case ("staff.request_detail", _):
            return Call(f"/staff/requests/{request_id}")
        case ("staff.take", _):
            return Call(f"/staff/requests/{request_id}/take", {})
        case ("staff.assign", _):
            return Call(f"/staff/requests/{request_id}/assign", {"assignee": str(world.staff.id)})
        case ("staff.note", _):
            return Call(f"/staff/requests/{request_id}/note", {"body": "An internal note."})
        case ("staff.message", _):
            return Call(f"/staff/requests/{request_id}/message", {"body": "A message."})
        case ("staff.ask", _):
            return Call(f"/staff/requests/{request_id}/ask", {"body": "Which card?"})
        case ("staff.deny", _):
            form = {"reason": "other", "message": "Because."}
            return Call(f"/staff/requests/{request_id}/deny", form)
        case ("staff.approve", _):
            form = {"amount": "5.00", "justification": "Goodwill."}
            return Call(f"/staff/requests/{request_id}/approve", form)
        case ("staff.credit_instead", _):
            return Call(f"/staff/requests/{request_id}/credit", {})
        case ("staff.undo_refund", _):
            form = {"request_id": str(world.scheduled_request_id)}
            return Call(f"/staff/refunds/{world.scheduled_refund_id}/undo", form)
        case ("staff.retry_refund", _):
            form = {"request_id": str(world.failed_request_id)}
            return Call(f"/staff/refunds/{world.failed_refund_id}/retry", form)
        case ("staff.incidents", "GET"):
            return Call("/staff/incidents")
        case ("staff.incidents", "POST"):
            form = {
                "title": "Queue stalled",
                "started_at": "2026-11-01T10:00",
                "ended_at": "2026-11-01T12:00",
                "note": "",
            }
            return Call("/staff/incidents", form)
        case ("staff.end_incident", _):
            form = {"ended_at": "2026-11-02T10:00"}
            return Call(f"/staff/incidents/{world.incident_id}/end", form)
        case ("staff.audit_log", _):
            return Call("/staff/audit?target_type=refund_request")
        case ("staff.audit_csv", _):
            return Call("/staff/audit.csv")
        case ("staff.export_customer", _):
            return Call(f"/staff/customers/{world.customer_a.id}/export")
        case ("staff.team", _):
            return Call("/staff/team")
        case ("staff.reset_second_factor", _):
            return Call(f"/staff/team/{world.lost_phone.id}/reset-second-factor", {})
        case ("accounts.second_factor", "GET"):
            return Call("/login/second-factor")
        case ("accounts.second_factor", "POST"):
            return Call("/login/second-factor", {"code": "123456"})
        case ("accounts.second_factor_qr_code", _):
            return Call("/login/second-factor/qr.svg")
        case ("staff.close_customer", _):
            return Call(f"/staff/customers/{world.closable.id}/close", {})
        case ("staff.terminate_customer", _):
            form = {"reason": "Abuse of the service.", "confirm": "y"}
            return Call(f"/staff/customers/{world.terminated.id}/terminate", form)
    raise AssertionError(f"no request written for {endpoint} {method}")


def send(actor: Actor, method: str, call: Call):
    if method == "GET":
        return actor.get(call.path, headers=call.headers)
    if call.json is not None:
        return actor.open("POST", call.path, json=call.json, headers=call.headers)
    return actor.post(call.path, data=call.data or {}, headers=call.headers)


def routes(app) -> list[tuple[str, str]]:
    """(endpoint, method) of every route but the static files, HEAD and OPTIONS left out."""
    return sorted(
        (rule.endpoint, method)
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    )
