"""The customer's refund requests."""

from flask import Blueprint, abort, render_template, request
from flask_login import current_user, login_required

from portal.billing.queries import purchase_for_customer
from portal.db import parse_id
from portal.errors import NotFound

bp = Blueprint("refunds", __name__, url_prefix="/refunds")


@bp.get("/")
@login_required
def index():
    return render_template("refunds/index.html")


@bp.get("/new")
@login_required
def new():
    purchase_id = parse_id(request.args.get("purchase_id"))
    if purchase_id is None:
        abort(404)
    try:
        purchase, unused = purchase_for_customer(current_user.id, purchase_id)
    except NotFound:
        abort(404)
    return render_template("refunds/new.html", purchase=purchase, unused=unused)
