"""Buying credit packages, the return from Checkout, and the customer's purchases."""

from datetime import timedelta

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from portal import limits, policy
from portal.billing import auto_recharge, checkout, fulfilment, queries
from portal.billing.forms import AutoRechargeForm, BuyForm
from portal.billing.models import PurchaseStatus
from portal.errors import AccountTerminated, NotFound, PaymentProviderError, ValidationError
from portal.extensions import limiter
from portal.forms import EmptyForm
from portal.ledger.queries import recent_spending
from portal.pagination import page_request
from portal.security import external_url
from portal.timeutil import utcnow

bp = Blueprint("billing", __name__)

# The buy page says how many jobs each package pays for at the customer's average job
# over this many days.
RECENT_DAYS = 30


@bp.route("/credits/buy", methods=["GET", "POST"])
@login_required
@limiter.limit(limits.configured("RATELIMIT_CHECKOUT"), key_func=limits.customer, methods=["POST"])
def buy():
    form = BuyForm()
    if form.validate_on_submit():
        # {CHECKOUT_SESSION_ID} is filled in by Stripe, so it must stay unescaped.
        success_url = external_url("billing.checkout_success")
        success_url += "?session_id={CHECKOUT_SESSION_ID}"
        try:
            checkout_url = checkout.start_checkout(
                current_user,
                form.package.data,
                success_url=success_url,
                cancel_url=external_url("billing.checkout_cancel"),
                save_card=form.save_card.data,
            )
        except AccountTerminated:
            abort(403)
        except ValidationError as error:
            flash(str(error), "error")
        except PaymentProviderError:
            flash(
                "We could not reach our payment provider. Nothing was charged; "
                "please try again in a minute.",
                "error",
            )
        else:
            return redirect(checkout_url, 303)
    elif request.method == "POST":
        flash("That package does not exist, or the form expired. Please choose again.", "error")
    status = 400 if request.method == "POST" else 200
    recent = recent_spending(current_user.id, utcnow() - timedelta(days=RECENT_DAYS))
    return render_template(
        "billing/buy.html",
        packages=policy.PACKAGES,
        form=form,
        recent=recent,
        recent_days=RECENT_DAYS,
        saved_cards=checkout.saved_card_words(current_user),
    ), status


@bp.post("/account/billing")
@login_required
def manage_billing():
    """Open Stripe's customer portal (saved cards, invoices) for this account."""
    if not EmptyForm().validate_on_submit():
        abort(400)
    if not current_user.stripe_customer_id:
        flash("Your saved cards and invoices appear here after your first purchase.", "info")
        return redirect(url_for("accounts.settings"), 303)
    try:
        portal_url = checkout.billing_portal_url(
            current_user, return_url=external_url("accounts.settings")
        )
    except PaymentProviderError:
        flash("We could not reach our payment provider. Please try again in a minute.", "error")
        return redirect(url_for("accounts.settings"), 303)
    return redirect(portal_url, 303)


@bp.get("/credits/success")
@login_required
def checkout_success():
    session_id = request.args.get("session_id", "")
    try:
        purchase = checkout.purchase_by_session(current_user.id, session_id)
    except NotFound:
        abort(404)
    try:
        outcome = fulfilment.fulfil_checkout(session_id)
    except PaymentProviderError:
        outcome = None
    purchase, unused = queries.purchase_for_customer(current_user.id, purchase.id)
    return render_template(
        "billing/success.html",
        purchase=purchase,
        credited=purchase.credited_at is not None,
        refused=outcome == fulfilment.Fulfilment.REFUSED,
        balance=current_user.credits_balance,
    )


@bp.route("/credits/cancel", methods=["GET"])
@login_required
def checkout_cancel():
    return render_template("billing/cancel.html", form=EmptyForm())


@bp.post("/purchases/<id:purchase_id>/cancel")
@login_required
def cancel_purchase(purchase_id: int):
    if not EmptyForm().validate_on_submit():
        abort(400)
    try:
        purchase, _ = queries.purchase_for_customer(current_user.id, purchase_id)
    except NotFound:
        abort(404)
    try:
        outcome = checkout.cancel_checkout(purchase)
    except PaymentProviderError:
        flash(
            "We could not reach our payment provider; the checkout will expire by itself.", "info"
        )
    else:
        flash(*CANCEL_MESSAGES[outcome])
    return redirect(url_for("billing.purchases"), 303)


CANCEL_MESSAGES = {
    checkout.Cancellation.CANCELED: ("The checkout is cancelled. Nothing was charged.", "info"),
    checkout.Cancellation.PROCESSING: (
        "This payment was already made and your bank is still processing it, so it can no "
        "longer be cancelled. The credits are added as soon as the bank confirms it.",
        "warning",
    ),
    checkout.Cancellation.PAID: (
        "This checkout was already paid, so it was not cancelled: the credits are in your balance.",
        "info",
    ),
    checkout.Cancellation.NOTHING_TO_CANCEL: ("There is nothing left to cancel here.", "info"),
}


@bp.get("/purchases")
@login_required
def purchases():
    wanted = page_request(request.args)
    page = queries.purchases_page(current_user.id, wanted.size, wanted.before, wanted.after)
    return render_template(
        "billing/purchases.html",
        page=page,
        packages=policy.PACKAGES_BY_CODE,
        pending=PurchaseStatus.PENDING,
    )


@bp.get("/purchases/<id:purchase_id>")
@login_required
def purchase(purchase_id: int):
    try:
        purchase, unused = queries.purchase_for_customer(current_user.id, purchase_id)
    except NotFound:
        abort(404)
    return render_template(
        "billing/purchase.html",
        purchase=purchase,
        unused=unused,
        package=policy.PACKAGES_BY_CODE.get(purchase.package_code),
        pending=PurchaseStatus.PENDING,
    )


# -- auto-recharge --------------------------------------------------------------------


# Auto-recharge's pages, and those of them that start or make a payment.
AUTO_RECHARGE_ENDPOINTS = (
    "billing.auto_recharge",
    "billing.confirm_recharge",
    "billing.cancel_recharge",
    "billing.recharge_confirmed",
)
AUTO_RECHARGE_PAYING = frozenset(
    {
        "billing.auto_recharge_card",
        "billing.auto_recharge_card_saved",
        "billing.confirm_recharge_now",
    }
)


@bp.before_request
def _auto_recharge_is_for_customers():
    """Staff hold no credits: auto-recharge's pages do not exist for them. An account
    terminated for a breach of the terms may read them, switch off and cancel, not pay."""
    if not (request.endpoint or "").startswith(AUTO_RECHARGE_ENDPOINTS):
        return None
    if not current_user.is_authenticated:
        return None
    if current_user.is_staff:
        abort(404)
    if current_user.is_terminated and request.endpoint in AUTO_RECHARGE_PAYING:
        abort(403)
    return None


def _auto_recharge_form(settings) -> AutoRechargeForm:
    """The settings form, filled with the customer's choices when they have made some."""
    if settings is None:
        return AutoRechargeForm()
    return AutoRechargeForm(
        threshold=str(settings.threshold),
        package=settings.package_code,
        monthly_cap=str(settings.monthly_cap_cents // 100),
    )


@bp.route("/account/auto-recharge", methods=["GET", "POST"])
@login_required
def auto_recharge_settings():
    if request.method == "POST" and current_user.is_terminated:
        abort(403)
    settings = auto_recharge.settings_of(current_user.id)
    form = _auto_recharge_form(settings) if request.method == "GET" else AutoRechargeForm()
    if form.validate_on_submit():
        try:
            on = auto_recharge.choose(
                current_user.id, form.credits, form.package.data, form.cap_cents
            )
        except ValidationError as error:
            getattr(form, error.field or "threshold", form.threshold).errors.append(str(error))
        else:
            if on:
                flash("Auto-recharge is on with these settings.", "success")
                return redirect(url_for("billing.auto_recharge_settings"), 303)
            return _to_card_setup()
    status = 400 if request.method == "POST" else 200
    return render_template(
        "billing/auto_recharge.html",
        form=form,
        settings=settings,
        on=auto_recharge.is_on(current_user),
        recharges=queries.recent_recharges(current_user.id),
        spent=auto_recharge.spent_this_month(current_user.id, utcnow()),
        failures_before_off=auto_recharge.FAILURES_BEFORE_OFF,
    ), status


def _to_card_setup():
    """Send the customer to Stripe to save a card for auto-recharge."""
    # {CHECKOUT_SESSION_ID} is filled in by Stripe, so it must stay unescaped.
    success_url = external_url("billing.auto_recharge_card_saved")
    success_url += "?session_id={CHECKOUT_SESSION_ID}"
    try:
        setup_url = auto_recharge.start_card_setup(
            current_user, success_url, external_url("billing.auto_recharge_settings")
        )
    except PaymentProviderError:
        flash(
            "Your settings are saved, but we could not reach our payment provider to set up "
            "your card. Please try again in a minute.",
            "error",
        )
        return redirect(url_for("billing.auto_recharge_settings"), 303)
    return redirect(setup_url, 303)


@bp.post("/account/auto-recharge/card")
@login_required
def auto_recharge_card():
    """Set up (another) card for auto-recharge."""
    if not EmptyForm().validate_on_submit():
        abort(400)
    if auto_recharge.settings_of(current_user.id) is None:
        flash("Choose your settings first; then you save the card.", "info")
        return redirect(url_for("billing.auto_recharge_settings"), 303)
    return _to_card_setup()


@bp.get("/account/auto-recharge/card")
@login_required
def auto_recharge_card_saved():
    """Where Stripe sends the customer back after saving the card."""
    try:
        taken = auto_recharge.card_set_up(
            request.args.get("session_id", ""), user_id=current_user.id
        )
    except PaymentProviderError:
        flash(
            "We could not confirm your card with our payment provider yet. If you finished "
            "saving it, auto-recharge switches on within a few minutes.",
            "info",
        )
    else:
        if taken:
            flash("Card saved: auto-recharge is on.", "success")
    return redirect(url_for("billing.auto_recharge_settings"), 303)


@bp.post("/account/auto-recharge/off")
@login_required
def auto_recharge_off():
    if not EmptyForm().validate_on_submit():
        abort(400)
    auto_recharge.switch_off(current_user.id)
    flash("Auto-recharge is off: nothing will be charged without you.", "success")
    return redirect(url_for("billing.auto_recharge_settings"), 303)


def _own_purchase(purchase_id: int):
    try:
        purchase, _ = queries.purchase_for_customer(current_user.id, purchase_id)
    except NotFound:
        abort(404)
    return purchase


def _back_to(purchase_id: int):
    return redirect(url_for("billing.purchase", purchase_id=purchase_id), 303)


@bp.get("/purchases/<id:purchase_id>/confirm")
@login_required
def confirm_recharge(purchase_id: int):
    """The page an e-mail links to when the bank wants the cardholder to confirm a
    recharge; once it no longer waits, the purchase's own page."""
    purchase = _own_purchase(purchase_id)
    if not auto_recharge.waits_for_customer(purchase):
        return _back_to(purchase_id)
    return render_template(
        "billing/confirm_recharge.html",
        purchase=purchase,
        settings=auto_recharge.settings_of(current_user.id),
        wait=auto_recharge.WAIT_FOR_CUSTOMER,
    )


@bp.post("/purchases/<id:purchase_id>/confirm")
@login_required
def confirm_recharge_now(purchase_id: int):
    if not EmptyForm().validate_on_submit():
        abort(400)
    purchase = _own_purchase(purchase_id)
    return_url = external_url("billing.recharge_confirmed", purchase_id=purchase_id)
    try:
        bank_url = auto_recharge.confirm_on_session(purchase, return_url)
    except PaymentProviderError as error:
        flash(
            "We could not reach our payment provider. Please try again in a minute."
            if error.retryable
            else "Your card or your bank refused the payment; nothing was charged.",
            "error",
        )
        return _back_to(purchase_id)
    return redirect(bank_url, 303) if bank_url else _back_to(purchase_id)


@bp.get("/purchases/<id:purchase_id>/confirmed")
@login_required
def recharge_confirmed(purchase_id: int):
    """Where the bank's page sends the customer back: ask Stripe how it went."""
    purchase = _own_purchase(purchase_id)
    try:
        auto_recharge.refresh(purchase.id)
    except PaymentProviderError:
        flash("We could not reach our payment provider yet; this page updates shortly.", "info")
    return _back_to(purchase_id)


# What "Don't pay" did, by the PaymentIntent's status afterwards.
CANCEL_RECHARGE_MESSAGES = {
    "canceled": ("The payment is cancelled. Nothing was charged.", "info"),
    "succeeded": (
        "This payment was already confirmed, so it was not cancelled: the credits are in "
        "your balance.",
        "info",
    ),
    "processing": (
        "This payment was already confirmed and is being processed, so it can no longer be "
        "cancelled.",
        "warning",
    ),
}


@bp.post("/purchases/<id:purchase_id>/confirm/cancel")
@login_required
def cancel_recharge(purchase_id: int):
    if not EmptyForm().validate_on_submit():
        abort(400)
    purchase = _own_purchase(purchase_id)
    try:
        outcome = auto_recharge.cancel_waiting(purchase)
    except PaymentProviderError:
        flash("We could not reach our payment provider. Please try again in a minute.", "error")
    else:
        if outcome in CANCEL_RECHARGE_MESSAGES:
            flash(*CANCEL_RECHARGE_MESSAGES[outcome])
    return _back_to(purchase_id)
