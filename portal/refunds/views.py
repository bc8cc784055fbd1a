"""The customer's refund requests: ask (fill in, review the pre-check, submit) and follow."""

import io

from flask import Blueprint, abort, flash, redirect, render_template, request, send_file, url_for
from flask_login import current_user, login_required

from portal import limits, policy
from portal.db import parse_id
from portal.errors import Conflict, NotFound, ValidationError
from portal.extensions import limiter
from portal.jobs.services import job_for_customer
from portal.ledger.services import unused_credits
from portal.refunds import services
from portal.refunds.eligibility import RequestReason, refund_deadline
from portal.refunds.forms import REASON_LABELS, RefundRequestForm, ReplyForm
from portal.timeutil import utcnow

bp = Blueprint("refunds", __name__, url_prefix="/refunds")


@bp.get("/")
@login_required
def index():
    return render_template(
        "refunds/index.html",
        requests=services.requests_for_customer(current_user.id),
        labels=REASON_LABELS,
    )


def _purchase_or_explain(purchase_id: int | None, job_id: int | None):
    """Return the purchase, or a response explaining why no request can be filed.

    Asked about a job, the answer is about that job: an open request for the purchase its
    credits came from is named and linked, not opened in its place.
    """
    job = None
    try:
        if job_id is not None:
            job = job_for_customer(current_user.id, job_id)
            purchase_id = purchase_id or services.purchase_id_for_job(current_user, job)
        return services.requestable_purchase(current_user, purchase_id, job), None
    except NotFound:
        abort(404)
    except Conflict as why:
        if why.existing_id and job is None:
            flash(str(why), "info")
            return None, redirect(url_for("refunds.show", request_id=why.existing_id), 303)
        page = render_template(
            "refunds/unavailable.html",
            why=str(why),
            job=job,
            job_note=services.job_note(job) if job is not None else None,
            existing_id=why.existing_id,
        )
        return None, (page, 409)


@bp.route("/new", methods=["GET", "POST"])
@login_required
@limiter.limit(
    limits.configured("RATELIMIT_REFUND_REQUESTS"),
    key_func=limits.customer,
    methods=["POST"],
    exempt_when=limits.not_a_submission,
)
def new():
    source = request.form if request.method == "POST" else request.args
    purchase, explanation = _purchase_or_explain(
        parse_id(source.get("purchase_id")), parse_id(source.get("job_id"))
    )
    if explanation is not None:
        return explanation
    form = RefundRequestForm()
    job = None
    if request.method == "GET":
        form.purchase_id.data = str(purchase.id)
        job_id = parse_id(request.args.get("job_id"))
        form.job_id.data = str(job_id) if job_id else ""
        if job_id:
            form.reason.data = RequestReason.JOB_FAILED.value
            try:
                job = services.job_for_request(current_user, purchase, job_id)
            except ValidationError as error:
                flash(str(error), "error")
                form.job_id.data = ""
    if form.is_submitted():
        try:
            job = services.job_for_request(current_user, purchase, parse_id(form.job_id.data))
        except ValidationError as error:
            form.validate()
            form.details.errors = [*form.details.errors, str(error)]
        else:
            if form.validate():
                if form.step.data == "submit":
                    return _submit(form, purchase, job)
                if form.step.data == "review":
                    return _review(form, purchase, job)
    status = 400 if form.errors else 200
    return _render_form(form, purchase, job), status


def _render_form(form, purchase, job):
    return render_template(
        "refunds/new.html",
        form=form,
        purchase=purchase,
        job=job,
        job_note=services.job_note(job) if job is not None else None,
        unused=unused_credits(purchase),
        deadline=refund_deadline(purchase.paid_at),
    )


def _review(form, purchase, job):
    check = services.preview(
        current_user,
        purchase,
        RequestReason(form.reason.data),
        job,
        form.money_back.data,
        utcnow(),
    )
    return render_template(
        "refunds/review.html",
        form=form,
        purchase=purchase,
        job=job,
        check=check,
        reason_label=REASON_LABELS[RequestReason(form.reason.data)],
    )


def _submit(form, purchase, job):
    uploads = [
        services.Upload(file.filename or "screenshot", file.read())
        for file in form.attachments.data or []
        if file and file.filename
    ]
    try:
        filed = services.file_request(
            current_user,
            purchase,
            RequestReason(form.reason.data),
            form.details.data.strip(),
            (form.transaction_ids.data or "").strip(),
            job,
            form.money_back.data,
            uploads,
            utcnow(),
        )
    except ValidationError as error:
        form.attachments.errors = [str(error)]
        return _review(form, purchase, job), 400
    except Conflict as why:
        flash(str(why), "info")
        if why.existing_id:
            return redirect(url_for("refunds.show", request_id=why.existing_id), 303)
        return redirect(url_for("refunds.index"), 303)
    flash(f"Your request {filed.reference} is filed.", "success")
    return redirect(url_for("refunds.show", request_id=filed.id), 303)


@bp.route("/<id:request_id>", methods=["GET", "POST"])
@login_required
def show(request_id: int):
    try:
        refund_request = services.request_for_customer(current_user.id, request_id)
    except NotFound:
        abort(404)
    form = ReplyForm()
    if form.validate_on_submit():
        try:
            services.customer_reply(current_user, refund_request, form.body.data.strip(), utcnow())
        except Conflict as why:
            flash(str(why), "info")
        else:
            flash("Thank you, your answer was sent to our team.", "success")
        return redirect(url_for("refunds.show", request_id=request_id), 303)
    return render_template(
        "refunds/show.html",
        refund_request=refund_request,
        timeline=services.customer_timeline(refund_request),
        form=form,
        labels=REASON_LABELS,
        policy=policy,
    ), (400 if form.errors else 200)


@bp.get("/attachments/<id:attachment_id>")
@login_required
def attachment(attachment_id: int):
    try:
        found, content = services.attachment_for(current_user, attachment_id)
    except NotFound:
        abort(404)
    # Werkzeug writes the name into Content-Disposition quoted, with an RFC 6266
    # `filename*` for names that are not ASCII; the name was cleaned when it was accepted.
    response = send_file(
        io.BytesIO(content), mimetype=found.content_type, download_name=found.filename
    )
    # A customer's screenshot: no shared cache may keep it.
    response.headers["Cache-Control"] = "private, no-store"
    return response
