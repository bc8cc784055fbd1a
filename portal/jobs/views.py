"""The customer's processing jobs."""

from flask import Blueprint, render_template
from flask_login import login_required

bp = Blueprint("jobs", __name__)


@bp.get("/jobs")
@login_required
def index():
    return render_template("jobs/index.html")
