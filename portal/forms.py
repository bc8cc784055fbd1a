"""Forms shared by every feature."""

from datetime import date, datetime

from flask_wtf import FlaskForm
from wtforms.validators import ValidationError


class EmptyForm(FlaskForm):
    """A one-button action (log out, buy, approve): only the CSRF token."""


EARLIEST = date(2000, 1, 1)
LATEST = date(2100, 12, 31)


def reasonable_date(form, field) -> None:
    """Refuse dates no business record can have (they overflow timezone arithmetic)."""
    value = field.data
    if value is None:
        return
    day = value.date() if isinstance(value, datetime) else value
    if not EARLIEST <= day <= LATEST:
        raise ValidationError(f"Choose a date between {EARLIEST:%Y} and {LATEST:%Y}.")
