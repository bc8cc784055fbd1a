"""Staff pages: the refund queue, request detail and decisions, incidents, audit log.

The whole blueprint is guarded at once; each decision view validates its form, makes one
service call, flashes what happened and redirects (303).
"""

import io
import json
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    redirect,
    render_template,
    request,
    send_file,
    stream_with_context,
    url_for,
)
from flask_login import current_user

from portal import csvfile, datarights
from portal.accounts import second_factor
from portal.accounts.models import User
from portal.billing.money_back.state import UNDO_WINDOW
from portal.db import db, parse_id
from portal.errors import Conflict, NotFound, ValidationError
from portal.forms import EmptyForm
from portal.incidents import services as incident_log
from portal.ledger.queries import KIND_LABELS
from portal.refunds.eligibility import RequestReason, Verdict
from portal.refunds.forms import REASON_LABELS
from portal.refunds.models import OPEN_STATUSES, RequestStatus
from portal.security import require_staff
from portal.staff import queries, services
from portal.staff.forms import (
    VERDICT_LABELS,
    ApproveForm,
    AssignForm,
    AuditFilterForm,
    DenyForm,
    EndIncidentForm,
    IncidentForm,
    QueueFilterForm,
    TerminateForm,
    TextForm,
)
from portal.timeutil import utcnow

bp = Blueprint("staff", __name__, url_prefix="/staff")
bp.before_request(require_staff)

SAVED_VIEWS = {
    "Mine": {"assignee": "me"},
    "Unassigned": {"assignee": "nobody"},
    "Overdue": {"overdue": "1"},
    "Likely eligible": {"verdict": Verdict.LIKELY_ELIGIBLE.value},
    "Waiting on customer": {"status": RequestStatus.WAITING_ON_CUSTOMER.value},
}


def _actor() -> services.Actor:
    return services.Actor(current_user._get_current_object(), request.remote_addr)


def _zone() -> ZoneInfo:
    return ZoneInfo(current_user.timezone or "UTC")


@bp.get("/")
def queue():
    form = QueueFilterForm(request.args)
    filters = queries.QueueFilter()
    if form.validate():
        filters = queries.QueueFilter(
            statuses=(RequestStatus(form.status.data),) if form.status.data else OPEN_STATUSES,
            verdict=Verdict(form.verdict.data) if form.verdict.data else None,
            reason=RequestReason(form.reason.data) if form.reason.data else None,
            assignee=form.assignee.data,
            overdue=form.overdue.data == "1",
            sort=form.sort.data,
        )
    now = utcnow()
    page = queries.queue_page(filters, current_user.id, now, request.args.get("cursor"))
    kept = {key: value for key, value in request.args.items() if key != "cursor"}
    return render_template(
        "staff/queue.html",
        form=form,
        page=page,
        kept_args=kept,
        counts=queries.status_counts(now),
        decided_days=queries.DECIDED_WINDOW.days,
        now=now,
        soon=now + timedelta(days=1),
        saved_views=SAVED_VIEWS,
        reason_labels=REASON_LABELS,
        verdict_labels=VERDICT_LABELS,
    ), (400 if form.errors else 200)


@bp.get("/requests/<id:request_id>")
def request_detail(request_id: int):
    now = utcnow()
    detail = queries.request_detail(request_id, now)
    if detail is None:
        abort(404)
    current = detail.current
    approve_form = ApproveForm(amount=f"{current.recommended_cents / 100:.2f}")
    assign_form = AssignForm()
    assign_form.assignee.choices = [(str(member_id), email) for member_id, email in detail.staff]
    return render_template(
        "staff/request.html",
        detail=detail,
        current=current,
        rules_then=queries.rules_then(detail.request.precheck, current),
        staff_names=dict(detail.staff),
        now=now,
        approve_form=approve_form,
        assign_form=assign_form,
        deny_form=DenyForm(),
        text_form=TextForm(),
        reason_labels=REASON_LABELS,
        kind_labels=KIND_LABELS,
    )


def _back(request_id: int):
    return redirect(url_for("staff.request_detail", request_id=request_id), 303)


def _run(request_id: int, action, success: str):
    """Call one service; flash its result or its refusal; go back to the request."""
    try:
        action()
    except NotFound:
        abort(404)
    except (Conflict, ValidationError) as refusal:
        flash(str(refusal), "error")
    else:
        flash(success, "success")
    return _back(request_id)


def _text_or_back(request_id: int):
    form = TextForm()
    if not form.validate_on_submit():
        flash("Write something first (at most 5,000 characters).", "error")
        return None
    return form.body.data


@bp.post("/requests/<id:request_id>/take")
def take(request_id: int):
    if not _confirmed():
        abort(400)
    return _run(request_id, lambda: services.take(request_id, _actor()), "It is yours.")


def _confirmed() -> bool:
    """A one-button action carries only its CSRF token."""
    return EmptyForm().validate_on_submit()


@bp.post("/requests/<id:request_id>/assign")
def assign(request_id: int):
    if not _confirmed():
        abort(400)
    assignee = request.form.get("assignee", "")
    if assignee == "nobody":
        return _run(
            request_id,
            lambda: services.assign(request_id, _actor(), None),
            "Released to the queue.",
        )
    assignee_id = parse_id(assignee)
    if assignee_id is None:
        flash("Choose a staff member.", "error")
        return _back(request_id)
    return _run(
        request_id, lambda: services.assign(request_id, _actor(), assignee_id), "Handed over."
    )


@bp.post("/requests/<id:request_id>/note")
def note(request_id: int):
    body = _text_or_back(request_id)
    if body is None:
        return _back(request_id)
    return _run(request_id, lambda: services.add_note(request_id, _actor(), body), "Note added.")


@bp.post("/requests/<id:request_id>/message")
def message(request_id: int):
    body = _text_or_back(request_id)
    if body is None:
        return _back(request_id)
    return _run(
        request_id,
        lambda: services.message_customer(request_id, _actor(), body),
        "Message sent to the customer.",
    )


@bp.post("/requests/<id:request_id>/ask")
def ask(request_id: int):
    body = _text_or_back(request_id)
    if body is None:
        return _back(request_id)
    return _run(
        request_id,
        lambda: services.ask_for_information(request_id, _actor(), body, utcnow()),
        "Question sent; the response clock is paused until the customer answers.",
    )


@bp.post("/requests/<id:request_id>/deny")
def deny(request_id: int):
    form = DenyForm()
    if not form.validate_on_submit():
        flash("Choose a reason for the denial.", "error")
        return _back(request_id)
    return _run(
        request_id,
        lambda: services.deny(
            request_id, _actor(), form.reason.data, form.message.data or "", utcnow()
        ),
        "Denied; the customer has been told why.",
    )


@bp.post("/requests/<id:request_id>/approve")
def approve(request_id: int):
    form = ApproveForm()
    if not form.validate_on_submit():
        flash(" ".join(form.amount.errors) or "The form expired; try again.", "error")
        return _back(request_id)
    return _run(
        request_id,
        lambda: services.approve(
            request_id, _actor(), form.amount_cents, form.justification.data or "", utcnow()
        ),
        f"Approved. The refund is scheduled and can be undone for "
        f"{int(UNDO_WINDOW.total_seconds() // 60)} minutes.",
    )


@bp.post("/requests/<id:request_id>/credit")
def credit_instead(request_id: int):
    if not _confirmed():
        abort(400)
    return _run(
        request_id,
        lambda: services.credit_instead(request_id, _actor(), utcnow()),
        "The missing credits were added.",
    )


def _refund_action(refund_id: int, action, success: str):
    """A one-button action on a refund, shown back on its request's page."""
    if not _confirmed():
        abort(400)
    request_id = parse_id(request.form.get("request_id"))
    if request_id is None:
        abort(400)
    return _run(request_id, lambda: action(refund_id, _actor(), utcnow()), success)


@bp.post("/refunds/<id:refund_id>/undo")
def undo_refund(refund_id: int):
    return _refund_action(refund_id, services.undo_approval, "Approval undone; no money moved.")


@bp.post("/refunds/<id:refund_id>/retry")
def retry_refund(refund_id: int):
    return _refund_action(refund_id, services.retry_refund, "The refund will be sent again.")


# -- incidents ------------------------------------------------------------------------


def _as_utc(local: datetime | None) -> datetime | None:
    return local.replace(tzinfo=_zone()).astimezone(ZoneInfo("UTC")) if local else None


@bp.route("/incidents", methods=["GET", "POST"])
def incidents():
    form = IncidentForm()
    if form.validate_on_submit():
        try:
            incident_log.record_incident(
                _actor(),
                form.title.data.strip(),
                _as_utc(form.started_at.data),
                _as_utc(form.ended_at.data),
                form.note.data or "",
            )
        except ValidationError as error:
            form.ended_at.errors = [*form.ended_at.errors, str(error)]
        else:
            flash("Incident recorded.", "success")
            return redirect(url_for("staff.incidents"), 303)
    return render_template(
        "staff/incidents.html",
        form=form,
        end_form=EndIncidentForm(),
        incidents=incident_log.incidents_since(utcnow() - timedelta(days=365)),
    ), (400 if form.errors else 200)


@bp.post("/incidents/<id:incident_id>/end")
def end_incident(incident_id: int):
    form = EndIncidentForm()
    if not form.validate_on_submit():
        flash("Give the end time.", "error")
    else:
        try:
            incident_log.end_incident(incident_id, _actor(), _as_utc(form.ended_at.data))
        except NotFound:
            abort(404)
        except ValidationError as error:
            flash(str(error), "error")
        else:
            flash("Incident closed.", "success")
    return redirect(url_for("staff.incidents"), 303)


# -- audit log ------------------------------------------------------------------------


def _audit_filters(form: AuditFilterForm) -> queries.AuditFilter:
    form.action.choices = [("", "Any")] + [(action, action) for action in queries.audit_actions()]
    if not form.validate():
        return queries.AuditFilter()
    zone = _zone()

    def midnight(day):
        return datetime.combine(day, time(0), tzinfo=zone)

    return queries.AuditFilter(
        action=form.action.data or None,
        target_type=form.target_type.data or None,
        start=midnight(form.start.data) if form.start.data else None,
        end=midnight(form.end.data + timedelta(days=1)) if form.end.data else None,
    )


@bp.get("/audit")
def audit_log():
    form = AuditFilterForm(request.args)
    rows = queries.audit_page(_audit_filters(form), parse_id(request.args.get("before")))
    kept = {key: value for key, value in request.args.items() if key != "before"}
    return render_template("staff/audit.html", form=form, rows=rows, kept_args=kept)


def _json_cell(value) -> str:
    return json.dumps(value, sort_keys=True) if value is not None else ""


@bp.get("/audit.csv")
def audit_csv():
    filters = _audit_filters(AuditFilterForm(request.args))

    def lines():
        buffer = io.StringIO()
        writer = csvfile.writer(buffer)
        writer.writerow(
            ["time (UTC)", "actor", "action", "object", "object id", "ip", "before", "after"]
        )
        for entry, email in queries.audit_for_export(filters):
            writer.writerow(
                [
                    entry.created_at.isoformat(timespec="seconds"),
                    email or "portal",
                    entry.action,
                    entry.target_type,
                    entry.target_id or "",
                    entry.ip_address or "",
                    entry.before or "",
                    entry.after or "",
                ]
            )
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()

    return Response(
        stream_with_context(lines()),
        mimetype="text/csv",
        headers={"Content-Disposition": 'attachment; filename="audit-log.csv"'},
    )


# -- customer data on request ----------------------------------------------------------


def _customer_or_404(user_id: int):
    customer = db.session.get(User, user_id)
    if customer is None or customer.is_staff:
        abort(404)
    return customer


@bp.get("/customers/<id:user_id>/export")
def export_customer(user_id: int):
    customer = _customer_or_404(user_id)
    archive = datarights.export_for(customer, current_user.id, request.remote_addr)
    return send_file(
        archive,
        mimetype="application/zip",
        as_attachment=True,
        download_name=f"customer-{customer.id}-data.zip",
    )


@bp.post("/customers/<id:user_id>/close")
def close_customer(user_id: int):
    if not _confirmed():
        abort(400)
    customer = _customer_or_404(user_id)
    datarights.close_account(customer, utcnow(), current_user.id, request.remote_addr)
    flash(f"Customer {customer.id}'s account is closed and personal data erased.", "success")
    back = parse_id(request.form.get("request_id"))
    if back:
        return _back(back)
    return redirect(url_for("staff.queue"), 303)


@bp.post("/customers/<id:user_id>/terminate")
def terminate_customer(user_id: int):
    form = TerminateForm()
    back = parse_id(request.form.get("request_id"))
    if not form.validate_on_submit():
        for errors in form.errors.values():
            flash(errors[0], "error")
    else:
        try:
            services.terminate_for_terms_breach(
                user_id, form.reason.data, current_user.id, request.remote_addr, utcnow()
            )
        except NotFound:
            abort(404)
        except (Conflict, ValidationError) as refusal:
            flash(str(refusal), "error")
        else:
            flash(
                f"Customer {user_id}'s account is terminated for a Terms of Use breach; "
                "they were told why by e-mail.",
                "success",
            )
    if back:
        return _back(back)
    return redirect(url_for("staff.queue"), 303)


# -- the staff team and their authenticators ---------------------------------------------


@bp.get("/team")
def team():
    return render_template("staff/team.html", members=queries.team())


@bp.post("/team/<id:member_id>/reset-second-factor")
def reset_second_factor(member_id: int):
    if not _confirmed():
        abort(400)
    try:
        member = second_factor.reset(member_id, current_user.id, utcnow(), request.remote_addr)
    except NotFound:
        abort(404)
    except Conflict as refusal:
        flash(str(refusal), "error")
    else:
        flash(
            f"{member.email}'s authenticator is reset and their sessions ended. "
            "They set up a new one at their next log-in.",
            "success",
        )
    return redirect(url_for("staff.team"), 303)
