"""The e-mails the portal sent to the logged-in customer: the list, and each one to read
(its links left out: they can be single-use, and a borrowed session must not read them)."""

from flask import Blueprint, abort, render_template
from flask_login import current_user, login_required
from sqlalchemy import select

from portal.db import db
from portal.errors import NotFound
from portal.notifications import services
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


@bp.get("/messages/<id:message_id>")
@login_required
def show(message_id: int):
    try:
        message = services.email_to(current_user.email, message_id)
    except NotFound:
        abort(404)
    return render_template(
        "notifications/show.html",
        message=message,
        paragraphs=services.readable_paragraphs(message.body_text),
    )
