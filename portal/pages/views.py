"""Public pages: the packages, the refund policy in plain words, contact details."""

from flask import Blueprint, render_template

from portal import policy

bp = Blueprint("pages", __name__)


@bp.get("/")
def landing():
    return render_template("pages/landing.html", packages=policy.PACKAGES)


@bp.get("/refund-policy")
def refund_policy():
    return render_template("pages/refund_policy.html", packages=policy.PACKAGES)


@bp.get("/contact")
def contact():
    return render_template("pages/contact.html")
