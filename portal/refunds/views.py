"""The customer's refund requests."""

from flask import Blueprint, render_template
from flask_login import login_required

bp = Blueprint("refunds", __name__, url_prefix="/refunds")


@bp.get("/")
@login_required
def index():
    return render_template("refunds/index.html")
