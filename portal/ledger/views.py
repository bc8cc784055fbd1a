"""The customer's dashboard and balance history."""

from flask import Blueprint, render_template
from flask_login import current_user, login_required

bp = Blueprint("ledger", __name__)


@bp.get("/dashboard")
@login_required
def dashboard():
    return render_template("ledger/dashboard.html", balance=current_user.credits_balance)
