"""The customer's processing jobs."""

from flask import Blueprint, abort, render_template, request
from flask_login import current_user, login_required

from portal.errors import NotFound
from portal.jobs import services
from portal.pagination import page_request

bp = Blueprint("jobs", __name__)


@bp.get("/jobs")
@login_required
def index():
    wanted = page_request(request.args)
    page = services.jobs_page(current_user.id, wanted.size, wanted.before, wanted.after)
    return render_template("jobs/index.html", page=page)


@bp.get("/jobs/<id:job_id>")
@login_required
def show(job_id: int):
    try:
        job = services.job_for_customer(current_user.id, job_id)
    except NotFound:
        abort(404)
    return render_template("jobs/show.html", job=job)
