"""Buying credit packages and the customer's purchases."""

from flask import Blueprint, abort, render_template, request
from flask_login import current_user, login_required

from portal import policy
from portal.billing import queries
from portal.errors import NotFound
from portal.pagination import page_size

bp = Blueprint("billing", __name__)


@bp.get("/credits/buy")
@login_required
def buy():
    return render_template("billing/buy.html", packages=policy.PACKAGES)


@bp.get("/purchases")
@login_required
def purchases():
    page = queries.purchases_page(
        current_user.id,
        page_size(request.args.get("per_page", type=int)),
        before=request.args.get("before", type=int),
        after=request.args.get("after", type=int),
    )
    return render_template("billing/purchases.html", page=page, packages=policy.PACKAGES_BY_CODE)


@bp.get("/purchases/<int:purchase_id>")
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
    )
