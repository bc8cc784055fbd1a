"""Buying credit packages."""

from flask import Blueprint, render_template
from flask_login import login_required

from portal import policy

bp = Blueprint("billing", __name__, url_prefix="/credits")


@bp.get("/buy")
@login_required
def buy():
    return render_template("billing/buy.html", packages=policy.PACKAGES)
