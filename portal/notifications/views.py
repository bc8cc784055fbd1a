"""The list of e-mails the portal sent to the logged-in customer (subjects only: bodies
can hold single-use links, which a borrowed session must not be able to read)."""

from flask import Blueprint, render_template
from flask_login import current_user, login_required
from sqlalchemy import select

from portal.db import db
from portal.notifications.models import OutboxEmail

bp = Blueprint("notifications", __name__)

MESSAGES_SHOWN = 50


@bp.get("/messages")
@login_required
def index():
    messages = db.session.scalars(
        select(OutboxEmail)
        .where(OutboxEmail.to_address == current_user.email)
        .order_by(OutboxEmail.id.desc())
        .limit(MESSAGES_SHOWN)
    ).all()
    return render_template("notifications/index.html", messages=messages)
