"""Forms shared by every feature."""

from datetime import date, datetime

import wtforms
from flask_wtf import FlaskForm
from markupsafe import Markup, escape
from wtforms.validators import ValidationError
from wtforms.widgets import core as widgets


class EmptyForm(FlaskForm):
    """A one-button action (log out, buy, approve): only the CSRF token."""


def strip_whitespace(value):
    """A filter for free text: what is only spaces is empty, so `DataRequired` refuses it."""
    return value.strip() if isinstance(value, str) else value


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


def html_attributes(**attributes) -> Markup:
    """WTForms' `html_params`, to the byte, without its cost.

    WTForms builds every attribute through `Markup.format`, which parses a format string
    and escapes both halves each time: about 33 µs for a typical input against 4 µs here.
    A filter form with its select options calls it 30-40 times, which made it 10-15 % of
    rendering a page (profiled). Keys are cleaned by WTForms' own `clean_key`, True
    prints the bare attribute and False leaves it out, as WTForms does.
    """
    parts = []
    for key, value in sorted(attributes.items()):
        if value is False:
            continue
        key = widgets.clean_key(key)
        if value is True:
            parts.append(key)
        else:
            # escape() turns a plain " into &#34;; a Markup value keeps its own, so it
            # gets WTForms' &quot; too.
            parts.append(f'{key}="{str(escape(value)).replace(chr(34), "&quot;")}"')
    return Markup(" ".join(parts))  # noqa: S704  # nosec B704  (every value escaped above)


class Select(widgets.Select):
    """WTForms' select, its options written by `html_attributes`.

    Options are where the cost was: a filter form renders 30-40 of them. The select tag
    itself, labels and inputs are one call each per field and stay WTForms' own.
    """

    @classmethod
    def render_option(cls, choice, **kwargs) -> Markup:
        value = str(choice.value) if isinstance(choice.value, bool) else choice.value
        attributes = {"value": value, **(choice.render_kw or {}), **kwargs}
        if choice.selected:
            attributes["selected"] = True
        label = escape(choice.label or choice.value)
        return Markup(f"<option {html_attributes(**attributes)}>{label}</option>")  # noqa: S704  # nosec B704


class SelectField(wtforms.SelectField):
    """The portal's select field: WTForms' own with the `Select` above."""

    widget = Select()
