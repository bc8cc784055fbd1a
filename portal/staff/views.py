"""Staff pages; the whole blueprint is guarded at once."""

from flask import Blueprint, render_template

from portal.security import require_staff

bp = Blueprint("staff", __name__, url_prefix="/staff")
bp.before_request(require_staff)


@bp.get("/")
def queue():
    return render_template("staff/queue.html")
