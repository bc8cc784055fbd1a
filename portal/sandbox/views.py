"""The sandbox's Stripe API (/sandbox/v1/...), its hosted Checkout page and its dashboard."""

import hmac
import json
import re
import threading

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user

from portal.extensions import csrf
from portal.forms import EmptyForm
from portal.sandbox.pdf import one_page_pdf
from portal.sandbox.store import (
    DECLINES,
    DELAYED_METHOD,
    DISPUTE_OPEN,
    TEST_CARDS,
    SandboxStore,
    StripeError,
)
from portal.sandbox.webhooks import WebhookSender
from portal.sandbox.wsgi import IN_PROCESS

api = Blueprint("sandbox_api", __name__, url_prefix="/sandbox/v1")
csrf.exempt(api)
pages = Blueprint("sandbox", __name__, url_prefix="/sandbox")

_KEY_PART = re.compile(r"\[([^\]]*)\]")


def store() -> SandboxStore:
    return current_app.extensions["stripe_sandbox"]


def decode_params(pairs) -> dict:
    """Turn Stripe's form encoding (`metadata[a]=1`, `line_items[0][quantity]=1`) into dicts."""
    root: dict = {}
    for flat_key, value in pairs:
        head = flat_key.split("[", 1)[0]
        parts = [head] + _KEY_PART.findall(flat_key[len(head) :])
        node = root
        for part, following in zip(parts, parts[1:] + [None], strict=True):
            if following is None:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    return _lists_from_indexes(root)


def _lists_from_indexes(node):
    if not isinstance(node, dict):
        return node
    converted = {key: _lists_from_indexes(value) for key, value in node.items()}
    if converted and all(key.isdigit() for key in converted):
        return [converted[key] for key in sorted(converted, key=int)]
    return converted


def _stripe_error(error: StripeError):
    response = jsonify(error.body)
    response.status_code = error.status
    return response


@api.errorhandler(StripeError)
def _handle_stripe_error(error: StripeError):
    return _stripe_error(error)


def _has_the_secret_key() -> bool:
    """Whether the request carries the one secret key the portal is configured with, as
    Stripe accepts only an account's own keys."""
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    expected = current_app.config["STRIPE_SECRET_KEY"]
    return (
        scheme == "Bearer"
        and bool(expected)
        and hmac.compare_digest(key.encode(), expected.encode())
    )


@api.before_request
def _authenticate_and_inject_faults():
    if not _has_the_secret_key():
        return _stripe_error(
            StripeError(401, "invalid_request_error", "You did not provide a valid API key.")
        )
    sandbox = store()
    with sandbox.lock:
        if sandbox.failures_to_inject > 0:
            sandbox.failures_to_inject -= 1
            return _stripe_error(StripeError(500, "api_error", "Sandbox: injected failure."))
    return None


def _idempotent(handler):
    """Run a POST handler once per Idempotency-Key, replaying its answer afterwards."""
    sandbox = store()
    params = decode_params(request.form.items(multi=True))
    key = request.headers.get("Idempotency-Key")
    with sandbox.lock:
        stored = sandbox.replay(key, request.method, request.path, params)
        if stored is not None:
            status, body = stored
        else:
            try:
                status, body = 200, handler(params)
            except StripeError as error:
                status, body = error.status, error.body
            # Stripe saves the result of a request that reached it, errors included, and
            # replays it as it was then, whatever happened to the object since.
            body = json.loads(json.dumps(body))
            sandbox.remember(key, (status, body))
    response = jsonify(body)
    response.status_code = status
    if stored is not None:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def _hosted_url(session_id: str) -> str:
    # Reached in-process (no real host), the page is on this same site: a path will do.
    external = not request.environ.get(IN_PROCESS)
    return url_for("sandbox.checkout", session_id=session_id, _external=external)


@api.post("/checkout/sessions")
def create_session():
    return _idempotent(lambda params: store().create_session(params, _hosted_url))


@api.get("/checkout/sessions")
def list_sessions():
    with store().lock:
        return jsonify(store().list_sessions(decode_params(request.args.items(multi=True))))


@api.get("/checkout/sessions/<session_id>")
def retrieve_session(session_id: str):
    expand = _expand(decode_params(request.args.items(multi=True)))
    with store().lock:
        return jsonify(store().public_session(session_id, expand))


@api.get("/checkout/sessions/<session_id>/line_items")
def session_line_items(session_id: str):
    with store().lock:
        store().session(session_id)
        return jsonify(
            store().list_of(store().line_items[session_id], request.path.replace("/sandbox", ""))
        )


@api.post("/checkout/sessions/<session_id>/expire")
def expire_session(session_id: str):
    return _idempotent(lambda params: store().expire_session(session_id))


def _expand(params: dict) -> list:
    return params.get("expand") or []


@api.get("/payment_intents/<intent_id>")
def retrieve_payment_intent(intent_id: str):
    expand = _expand(decode_params(request.args.items(multi=True)))
    with store().lock:
        return jsonify(store().public_payment_intent(intent_id, expand))


@api.post("/payment_intents")
def create_payment_intent():
    return _idempotent(lambda params: store().create_payment_intent(params, _expand(params)))


@api.post("/payment_intents/<intent_id>/confirm")
def confirm_payment_intent(intent_id: str):
    return _idempotent(
        lambda params: store().confirm_payment_intent(intent_id, params, _expand(params))
    )


@api.post("/payment_intents/<intent_id>/cancel")
def cancel_payment_intent(intent_id: str):
    return _idempotent(lambda params: store().cancel_payment_intent(intent_id, params))


@api.post("/invoices")
def create_invoice():
    return _idempotent(lambda params: store().create_invoice(params, _expand(params)))


@api.post("/invoiceitems")
def create_invoice_item():
    return _idempotent(lambda params: store().create_invoice_item(params))


@api.post("/invoices/<invoice_id>/finalize")
def finalize_invoice(invoice_id: str):
    return _idempotent(lambda params: store().finalize_invoice(invoice_id, params, _expand(params)))


@api.post("/invoices/<invoice_id>/attach_payment")
def attach_payment(invoice_id: str):
    return _idempotent(lambda params: store().attach_payment(invoice_id, params, _expand(params)))


@api.post("/customers")
def create_customer():
    return _idempotent(lambda params: store().create_customer(params))


@api.get("/payment_methods")
def list_payment_methods():
    with store().lock:
        return jsonify(store().list_payment_methods(decode_params(request.args.items(multi=True))))


def _portal_page_url(session_id: str) -> str:
    external = not request.environ.get(IN_PROCESS)
    return url_for("sandbox.billing_portal", session_id=session_id, _external=external)


@api.post("/billing_portal/sessions")
def create_portal_session():
    return _idempotent(lambda params: store().create_portal_session(params, _portal_page_url))


@api.post("/refunds")
def create_refund():
    response = _idempotent(lambda params: store().create_refund(params))
    if response.status_code == 200:
        _later(
            current_app._get_current_object(),
            "SANDBOX_REFUND_SECONDS",
            lambda sandbox: sandbox.settle_refund(response.get_json()["id"]),
        )
    return response


@api.get("/refunds/<refund_id>")
def retrieve_refund(refund_id: str):
    with store().lock:
        refund = store().refunds.get(refund_id)
        if refund is None:
            raise StripeError(
                404,
                "invalid_request_error",
                f"No such refund: '{refund_id}'",
                "resource_missing",
                "id",
            )
        return jsonify(refund)


@api.get("/disputes/<dispute_id>")
def retrieve_dispute(dispute_id: str):
    with store().lock:
        return jsonify(store().dispute(dispute_id))


@api.get("/disputes")
def list_disputes():
    with store().lock:
        return jsonify(store().list_disputes(decode_params(request.args.items(multi=True))))


@api.get("/events")
def list_events():
    with store().lock:
        events = list(reversed(store().events))
    kind = request.args.get("type")
    if kind:
        events = [event for event in events if event["type"] == kind]
    return jsonify(store().list_of(events[:100], "/v1/events", has_more=len(events) > 100))


def _later(app: Flask, delay_setting: str, action) -> None:
    """Run `action(store)` after a delay in thread mode, as the card network would."""
    if app.config.get("SANDBOX_WEBHOOKS", "thread") != "thread":
        return
    sandbox = app.extensions["stripe_sandbox"]

    def run():
        with sandbox.lock:
            action(sandbox)

    timer = threading.Timer(app.config.get(delay_setting, 5), run)
    timer.daemon = True
    timer.start()


# -- the hosted Checkout page ----------------------------------------------------------


@pages.get("/checkout/<session_id>")
def checkout(session_id: str):
    with store().lock:
        session = store().sessions.get(session_id)
        if session is None:
            abort(404)
        items = list(store().line_items[session_id])
        options = session.get("saved_payment_method_options") or {}
        # Checkout offers the saved cards its filters allow (by default, "always").
        redisplay = options.get("allow_redisplay_filters") or ["always"]
        saved = store().saved_cards(session["customer"], redisplay) if session["customer"] else []
    setting_up = session["mode"] == "setup"
    return render_template(
        "sandbox/checkout.html",
        session=session,
        items=items,
        # Setting a card up for later offers new cards only (no bank debit).
        saved=[] if setting_up else saved,
        offer_to_save=bool(session["customer"])
        and not setting_up
        and options.get("payment_method_save") == "enabled"
        and not session["payment_intent_data"].get("setup_future_usage"),
        cards=_cards_to_set_up() if setting_up else TEST_CARDS,
        form=EmptyForm(),
        declined=request.args.get("declined") == "1",
    )


def _cards_to_set_up() -> dict:
    return {number: label for number, label in TEST_CARDS.items() if number != DELAYED_METHOD}


@pages.post("/checkout/<session_id>/pay")
def pay(session_id: str):
    """Pay (payment mode) or save the card (setup mode) as the customer chose on the page."""
    if not EmptyForm().validate_on_submit():
        abort(400)
    method = request.form.get("card", "")
    sandbox = store()
    with sandbox.lock:
        if session_id not in sandbox.sessions:
            abort(404)
        if sandbox.sessions[session_id]["mode"] == "setup":
            if method not in _cards_to_set_up():
                abort(400)
            outcome = sandbox.save_card_on_page(session_id, method)
        elif method not in TEST_CARDS and method not in sandbox.payment_methods:
            abort(400)
        else:
            outcome = sandbox.pay(session_id, method, save=request.form.get("save") == "y")
        session = dict(sandbox.sessions[session_id])
    if outcome == "declined" and method not in TEST_CARDS:
        abort(400)  # a saved card of someone else
    if outcome == "declined" and method in DECLINES:
        return redirect(url_for("sandbox.checkout", session_id=session_id, declined=1), 303)
    if outcome == "saved":
        return redirect(session["success_url"].replace("{CHECKOUT_SESSION_ID}", session_id), 303)
    if outcome not in ("paid", "processing"):
        return redirect(url_for("sandbox.checkout", session_id=session_id), 303)
    if method == DELAYED_METHOD:
        _later(
            current_app._get_current_object(),
            "SANDBOX_DELAYED_SECONDS",
            lambda s: s.settle_delayed(session_id, succeeded=True),
        )
    return redirect(session["success_url"].replace("{CHECKOUT_SESSION_ID}", session_id), 303)


def _finalised_invoice(invoice_id: str) -> dict:
    """The invoice, if Stripe would show it: a draft has no pages yet."""
    invoice = store().invoices.get(invoice_id)
    if invoice is None or invoice["status"] == "draft":
        abort(404)
    return invoice


@pages.get("/invoices/<invoice_id>")
def hosted_invoice(invoice_id: str):
    """Stands in for Stripe's hosted invoice page (anyone with the link may read it)."""
    with store().lock:
        invoice = _finalised_invoice(invoice_id)
        invoice = dict(invoice)
        customer = store().customers.get(invoice["customer"] or "", {})
    return render_template("sandbox/invoice.html", invoice=invoice, customer=customer)


@pages.get("/invoices/<invoice_id>.pdf")
def invoice_pdf(invoice_id: str):
    """Stands in for Stripe's invoice PDF: a one-page PDF naming the invoice."""
    with store().lock:
        invoice = dict(_finalised_invoice(invoice_id))
    paid = invoice["status"] == "paid"
    amount = invoice["amount_paid"] if paid else invoice["amount_remaining"]
    return Response(
        one_page_pdf(
            f"Invoice {invoice['number']}: {amount / 100:.2f} "
            f"{invoice['currency'].upper()} {'paid' if paid else 'due'} (sandbox)"
        ),
        mimetype="application/pdf",
        headers={"Content-Disposition": f'inline; filename="{invoice["number"]}.pdf"'},
    )


@pages.route("/billing/<session_id>", methods=["GET", "POST"])
def billing_portal(session_id: str):
    """Stands in for Stripe's hosted billing portal: the customer's saved cards (remove
    one) and invoices. Like Stripe's, the page's link is the customer's key to it."""
    sandbox = store()
    form = EmptyForm()
    with sandbox.lock:
        portal_session = sandbox.portal_sessions.get(session_id)
        if portal_session is None:
            abort(404)
        customer_id = portal_session["customer"]
        if request.method == "POST":
            if not form.validate_on_submit():
                abort(400)
            method_id = request.form.get("remove", "")
            saved = sandbox.payment_methods.get(method_id)
            if saved is None or saved["customer"] != customer_id:
                abort(404)
            sandbox.detach_payment_method(method_id)
            return redirect(url_for("sandbox.billing_portal", session_id=session_id), 303)
        cards = [dict(card) for card in sandbox.saved_cards(customer_id)]
        invoices = sorted(
            (
                dict(i)
                for i in sandbox.invoices.values()
                if i["customer"] == customer_id and i["status"] != "draft"
            ),
            key=lambda invoice: invoice["created"],
            reverse=True,
        )
    return render_template(
        "sandbox/billing_portal.html",
        portal_session=portal_session,
        cards=cards,
        invoices=invoices,
        form=form,
    )


@pages.route("/authenticate/<intent_id>", methods=["GET", "POST"])
def authenticate(intent_id: str):
    """Stands in for the bank's 3-D Secure page that a PaymentIntent's `next_action`
    sends the customer to: they complete or fail the check, then go back to the
    confirmation's return_url."""
    sandbox = store()
    form = EmptyForm()
    with sandbox.lock:
        intent = sandbox.payment_intents.get(intent_id)
        if intent is None:
            abort(404)
        if request.method == "POST":
            if not form.validate_on_submit():
                abort(400)
            target = sandbox.authenticate(intent_id, request.form.get("outcome") == "complete")
            return redirect(target or url_for("sandbox.authenticate", intent_id=intent_id), 303)
        intent = dict(intent)
        method = sandbox.payment_methods.get(intent["payment_method"] or "")
    return render_template(
        "sandbox/authenticate.html", intent=intent, card=method and method["card"], form=form
    )


@pages.post("/checkout/<session_id>/cancel")
def cancel(session_id: str):
    if not EmptyForm().validate_on_submit():
        abort(400)
    with store().lock:
        session = store().sessions.get(session_id)
        if session is None:
            abort(404)
        target = session["cancel_url"]
    return redirect(target, 303)


def _may_see_sessions() -> bool:
    """Checkout Sessions name customers and open their hosted pages: only a logged-in
    staff member sees them listed. Refunds, disputes and events show ids and amounts
    alone, so anyone acting as the bank can still settle them."""
    return current_user.is_authenticated and getattr(current_user, "is_staff", False)


@pages.get("/")
def dashboard():
    show_sessions = _may_see_sessions()
    with store().lock:
        sessions = sorted(store().sessions.values(), key=lambda s: s["created"], reverse=True)
        if not show_sessions:
            sessions = []
        refunds = sorted(store().refunds.values(), key=lambda r: r["created"], reverse=True)
        disputes = sorted(store().disputes.values(), key=lambda d: d["created"], reverse=True)
        charges = {
            session["id"]: store().payment_intents[session["payment_intent"]]["latest_charge"]
            for session in sessions
            if session["payment_intent"] in store().payment_intents
        }
        events = list(reversed(store().events))[:50]
    return render_template(
        "sandbox/dashboard.html",
        sessions=sessions[:50],
        show_sessions=show_sessions,
        charges=charges,
        refunds=refunds[:50],
        disputes=disputes[:50],
        dispute_open=DISPUTE_OPEN,
        events=events,
        form=EmptyForm(),
    )


@pages.post("/sessions/<session_id>/settle")
def settle_delayed(session_id: str):
    if not EmptyForm().validate_on_submit():
        abort(400)
    with store().lock:
        try:
            store().settle_delayed(session_id, succeeded=request.form.get("outcome") == "succeeded")
        except StripeError:
            abort(404)
    return redirect(url_for("sandbox.dashboard"), 303)


@pages.post("/refunds/<refund_id>/settle")
def settle_refund(refund_id: str):
    if not EmptyForm().validate_on_submit():
        abort(400)
    with store().lock:
        try:
            store().settle_refund(refund_id)
        except StripeError:
            abort(404)
    return redirect(url_for("sandbox.dashboard"), 303)


@pages.post("/charges/<charge_id>/dispute")
def open_dispute(charge_id: str):
    if not EmptyForm().validate_on_submit():
        abort(400)
    with store().lock:
        try:
            store().open_dispute(charge_id, inquiry=request.form.get("kind") == "inquiry")
        except StripeError as error:
            if error.status == 404:
                abort(404)
    return redirect(url_for("sandbox.dashboard"), 303)


@pages.post("/disputes/<dispute_id>/close")
def close_dispute(dispute_id: str):
    if not EmptyForm().validate_on_submit():
        abort(400)
    with store().lock:
        try:
            store().close_dispute(dispute_id, won=request.form.get("outcome") == "won")
        except StripeError:
            abort(404)
    return redirect(url_for("sandbox.dashboard"), 303)


def register(app: Flask) -> None:
    """Switch the sandbox on for this app."""
    app.extensions["stripe_sandbox"] = SandboxStore(on_event=WebhookSender(app))
    app.register_blueprint(api)
    app.register_blueprint(pages)
