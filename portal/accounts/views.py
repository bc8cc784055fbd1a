"""Sign-up, log-in, log-out, password change and reset, account settings."""

from zoneinfo import available_timezones

from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    redirect,
    render_template,
    request,
    send_file,
    session,
    url_for,
)
from flask_login import current_user, login_required, login_user, logout_user

from portal import datarights, limits
from portal.accounts import second_factor as second_factor_service
from portal.accounts import services
from portal.accounts.forms import (
    BrowserTimezoneForm,
    ChangePasswordForm,
    CloseAccountForm,
    LoginForm,
    ResetPasswordForm,
    ResetRequestForm,
    SecondFactorForm,
    SettingsForm,
    SignupForm,
)
from portal.accounts.models import User
from portal.accounts.passwords import verify_password
from portal.errors import Conflict, ValidationError
from portal.extensions import limiter
from portal.forms import EmptyForm
from portal.ledger import alerts
from portal.ledger.forms import LowBalanceAlertForm
from portal.security import external_url, is_safe_next
from portal.timeutil import utcnow

bp = Blueprint("accounts", __name__)

INVALID_LOGIN = "The e-mail or password is not correct."


def _start_session(user, remember: bool = False) -> None:
    # A fresh session at log-in, so an identifier planted before it is worthless.
    user = getattr(user, "_get_current_object", lambda: user)()
    session.clear()
    services.log_in(user, request.remote_addr, request.headers.get("User-Agent"))
    login_user(user, remember=remember)


def _home_for(user) -> str:
    return url_for("staff.queue") if user.is_staff else url_for("ledger.dashboard")


@bp.route("/signup", methods=["GET", "POST"])
@limiter.limit(
    limits.configured("RATELIMIT_SIGNUP"), key_func=limits.client_address, methods=["POST"]
)
def signup():
    if current_user.is_authenticated:
        return redirect(_home_for(current_user))
    form = SignupForm()
    if form.validate_on_submit():
        try:
            services.ask_to_sign_up(form.email.data, form.password.data)
        except ValidationError as error:
            getattr(form, error.field or "email").errors.append(str(error))
        else:
            # The same answer whether or not the address has an account: the e-mail says.
            flash(
                "Check your inbox: we sent a link to finish creating your account. "
                "It works once, within a day.",
                "info",
            )
            return redirect(url_for("accounts.login"), 303)
    return render_template("accounts/signup.html", form=form), 400 if form.errors else 200


@bp.route("/signup/finish/<token>", methods=["GET", "POST"])
def finish_sign_up(token: str):
    if services.pending_sign_up(token, utcnow()) is None:
        flash("This link is invalid, used or expired. Sign up again for a new one.", "error")
        return redirect(url_for("accounts.signup"), 303)
    form = EmptyForm()
    if form.validate_on_submit():
        try:
            user = services.finish_sign_up(token, utcnow())
        except ValidationError:
            flash("This link is invalid, used or expired. Sign up again for a new one.", "error")
            return redirect(url_for("accounts.signup"), 303)
        except Conflict as refusal:
            flash(str(refusal), "info")
            return redirect(url_for("accounts.login"), 303)
        session.clear()
        _start_session(user)
        flash("Welcome! Your account is ready.", "success")
        return redirect(url_for("ledger.dashboard"), 303)
    return render_template("accounts/finish_sign_up.html", form=form)


def account_links() -> services.AccountLinks:
    """The links account e-mails carry, for the worker that writes them.

    Built only when an e-mail needs one: a worker that cannot know the portal's address
    (no PORTAL_BASE_URL) fails on account requests alone, not on its other work.
    """
    return services.AccountLinks(
        log_in=lambda: external_url("accounts.login"),
        finish_sign_up=lambda token: external_url("accounts.finish_sign_up", token=token),
        reset_password=lambda token: external_url("accounts.reset_password", token=token),
    )


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(
    limits.configured("RATELIMIT_LOGIN_IP"), key_func=limits.client_address, methods=["POST"]
)
@limiter.limit(
    limits.configured("RATELIMIT_LOGIN_FAILURES"),
    key_func=limits.login_pair,
    methods=["POST"],
    deduct_when=limits.failed,
)
def login():
    if current_user.is_authenticated:
        return redirect(_home_for(current_user))
    form = LoginForm()
    if form.validate_on_submit():
        user = services.authenticate(form.email.data, form.password.data)
        if user is None:
            form.form_errors.append(INVALID_LOGIN)
        else:
            target = request.args.get("next")
            target = target if is_safe_next(target) else _home_for(user)
            if user.is_staff:
                _await_second_factor(user, form.remember.data, target)
                return redirect(url_for("accounts.second_factor"), 303)
            _start_session(user, remember=form.remember.data)
            return redirect(target, 303)
    return render_template(
        "accounts/login.html", form=form
    ), 400 if form.errors or form.form_errors else 200


# How long the password stays good for while a staff member finds their phone.
SECOND_FACTOR_WAIT = 600


def _await_second_factor(user, remember: bool, target: str) -> None:
    """Remember, in a fresh session, who gave the right password; no one is logged in yet."""
    session.clear()
    session["second_factor"] = {
        "user_id": user.id,
        "generation": user.session_generation,
        "since": utcnow().timestamp(),
        "remember": bool(remember),
        "next": target,
    }


def _awaiting_second_factor():
    """The staff member who gave the right password in this browser, if still in time."""
    pending = session.get("second_factor")
    if not isinstance(pending, dict):
        return None, None
    user = services.user_by_id(pending.get("user_id"))
    if (
        user is None
        or not user.is_staff
        or user.session_generation != pending.get("generation")
        or utcnow().timestamp() - pending.get("since", 0) > SECOND_FACTOR_WAIT
    ):
        return None, None
    return user, pending


@bp.route("/login/second-factor", methods=["GET", "POST"])
@limiter.limit(
    limits.configured("RATELIMIT_SECOND_FACTOR"),
    key_func=limits.second_factor_attempt,
    methods=["POST"],
    deduct_when=limits.failed,
)
def second_factor():
    user, pending = _awaiting_second_factor()
    if user is None:
        flash("Log in again: the page waited too long.", "info")
        return redirect(url_for("accounts.login"), 303)
    enrolled = user.totp_enrolled_at is not None
    secret = None if enrolled else second_factor_service.offer_secret(user.id)
    form = SecondFactorForm()
    if form.validate_on_submit():
        try:
            if enrolled:
                second_factor_service.verify(user.id, form.code.data, utcnow())
            else:
                codes = second_factor_service.enrol(user.id, form.code.data, utcnow())
        except ValidationError as error:
            form.code.errors.append(str(error))
        else:
            _start_session(user, remember=pending["remember"])
            if enrolled:
                return redirect(pending["next"], 303)
            return render_template("accounts/recovery_codes.html", codes=codes)
    return render_template(
        "accounts/second_factor.html", form=form, enrolled=enrolled, secret=secret
    ), 400 if form.errors else 200


@bp.get("/login/second-factor/qr.svg")
def second_factor_qr_code():
    user, _ = _awaiting_second_factor()
    if user is None or user.totp_enrolled_at is not None:
        abort(404)
    svg = second_factor_service.qr_code_svg(second_factor_service.offer_secret(user.id), user.email)
    return Response(svg, mimetype="image/svg+xml", headers={"Cache-Control": "no-store"})


@bp.post("/logout")
def logout():
    form = EmptyForm()
    if form.validate_on_submit():
        if current_user.is_authenticated:
            services.log_out(current_user)
        # Clear first: logout_user() then marks the remember-me cookie for deletion.
        session.clear()
        logout_user()
        flash("You are logged out.", "info")
    return redirect(url_for("pages.landing"), 303)


@bp.route("/account", methods=["GET", "POST"])
@login_required
def settings():
    password_form = ChangePasswordForm(prefix="pw")
    settings_form = SettingsForm(prefix="tz", timezone=current_user.timezone or "UTC")
    settings_form.timezone.choices = sorted(available_timezones())
    # Staff hold no credits: the alert is the customers' alone.
    suggestion = (
        None if current_user.is_staff else alerts.suggest_threshold(current_user.id, utcnow())
    )
    alert_form = LowBalanceAlertForm(prefix="alert", threshold=_alert_field_default(suggestion))
    if "tz-timezone" in request.form and settings_form.validate_on_submit():
        services.update_timezone(current_user, settings_form.timezone.data)
        flash("Your timezone is saved.", "success")
        return redirect(url_for("accounts.settings"), 303)
    if "pw-password" in request.form and password_form.validate_on_submit():
        try:
            services.change_password(
                current_user, password_form.current_password.data, password_form.password.data
            )
        except ValidationError as error:
            getattr(password_form, error.field or "password").errors.append(str(error))
        else:
            # The generation changed, so the old session is void: start a fresh one.
            _start_session(current_user)
            flash("Your password is changed. Other devices have been logged out.", "success")
            return redirect(url_for("accounts.settings"), 303)
    if (
        "alert-threshold" in request.form
        and not current_user.is_staff
        and alert_form.validate_on_submit()
    ):
        try:
            account = alerts.set_alert(current_user.id, alert_form.credits)
        except ValidationError as error:
            alert_form.threshold.errors.append(str(error))
        else:
            flash(_alert_set_message(account), "success")
            return redirect(url_for("accounts.settings", _anchor="low-balance-alert"), 303)
    forms = (password_form, settings_form, alert_form)
    status = 400 if any(form.errors for form in forms) else 200
    return (
        render_template(
            "accounts/settings.html",
            password_form=password_form,
            settings_form=settings_form,
            alert_form=alert_form,
            suggestion=suggestion,
            alert_window_days=alerts.USE_WINDOW_DAYS,
            close_form=CloseAccountForm(prefix="close"),
        ),
        status,
    )


def _alert_field_default(suggestion: alerts.Suggestion | None) -> str:
    """What the threshold field offers: the alert in force, else the suggestion."""
    if current_user.low_balance_threshold is not None:
        return str(current_user.low_balance_threshold)
    return str(suggestion.threshold) if suggestion else ""


def _alert_set_message(account: User) -> str:
    threshold = f"{account.low_balance_threshold:,} credits"
    if account.low_balance_alert_armed:
        return f"Alert on: we will e-mail you when your balance falls below {threshold}."
    return (
        f"Alert on at {threshold}. Your balance is below that already, so the first e-mail "
        f"comes once it is back at {threshold} or more and falls below again."
    )


@bp.post("/account/low-balance-alert/off")
@login_required
def turn_off_low_balance_alert():
    if EmptyForm().validate_on_submit():
        alerts.turn_off_alert(current_user.id)
        flash("Low-balance alert off: we will not e-mail you about your balance.", "success")
    return redirect(url_for("accounts.settings", _anchor="low-balance-alert"), 303)


@bp.get("/account/export")
@login_required
def export_data():
    archive = datarights.export_for(current_user, current_user.id, request.remote_addr)
    return send_file(
        archive,
        mimetype="application/zip",
        as_attachment=True,
        download_name=f"my-data-{utcnow():%Y-%m-%d}.zip",
    )


@bp.post("/account/close")
@login_required
def close_account():
    form = CloseAccountForm(prefix="close")
    if not form.validate_on_submit() or current_user.is_staff:
        flash("Tick the box and give your password to close the account.", "error")
        return redirect(url_for("accounts.settings"), 303)
    if not verify_password(current_user.password_hash, form.current_password.data):
        flash("Your password is not correct; nothing was closed.", "error")
        return redirect(url_for("accounts.settings"), 303)
    user = current_user._get_current_object()
    datarights.close_account(user, utcnow(), user.id, request.remote_addr)
    session.clear()
    logout_user()
    flash("Your account is closed and your personal data erased. Thank you for using us.", "info")
    return redirect(url_for("pages.landing"), 303)


@bp.post("/account/browser-timezone")
@login_required
def browser_timezone():
    """Take the timezone the browser reports, unless the customer already has one."""
    form = BrowserTimezoneForm()
    if not form.validate_on_submit():
        return {"error": "invalid_request", "field": "timezone"}, 400
    if current_user.timezone is None:
        try:
            services.update_timezone(current_user, form.timezone.data)
        except ValidationError:
            return {"error": "invalid_request", "field": "timezone"}, 400
    return {"timezone": current_user.timezone}


@bp.route("/reset", methods=["GET", "POST"])
@limiter.limit(
    limits.configured("RATELIMIT_PASSWORD_RESET"), key_func=limits.client_address, methods=["POST"]
)
def reset_request():
    form = ResetRequestForm()
    if form.validate_on_submit():
        services.ask_for_password_reset(form.email.data)
        # The same answer whether or not the account exists.
        flash(
            "If an account exists for that e-mail, a reset link is on its way. "
            "It works once, within an hour.",
            "info",
        )
        return redirect(url_for("accounts.login"), 303)
    return render_template("accounts/reset_request.html", form=form), 400 if form.errors else 200


@bp.route("/reset/<token>", methods=["GET", "POST"])
def reset_password(token: str):
    user = services.reset_token_user(token)
    if user is None:
        flash("This reset link is invalid or has expired. Ask for a new one.", "error")
        return redirect(url_for("accounts.reset_request"), 303)
    form = ResetPasswordForm()
    if form.validate_on_submit():
        try:
            services.reset_password(token, form.password.data)
        except ValidationError as error:
            if error.field == "token":
                flash(str(error), "error")
                return redirect(url_for("accounts.reset_request"), 303)
            form.password.errors.append(str(error))
        else:
            session.clear()
            logout_user()
            flash("Your password is changed. Log in with the new one.", "success")
            return redirect(url_for("accounts.login"), 303)
    return render_template("accounts/reset_password.html", form=form), 400 if form.errors else 200
