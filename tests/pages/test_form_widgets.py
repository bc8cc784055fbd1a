"""Form widgets render attributes with the portal's `html_attributes`, as WTForms would."""

import wtforms.widgets
from hypothesis import given
from hypothesis import strategies as st
from markupsafe import Markup
from wtforms import BooleanField, Form, SelectField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.widgets import core

from portal.forms import WTFORMS_HTML_PARAMS, html_attributes


def test_attributes_read_exactly_as_wtforms_writes_them():
    cases = [
        {"name": "email", "id": "email", "type": "email", "value": ""},
        {"required": True, "disabled": False, "checked": True},
        {"class_": "wide", "for_": "x", "data_row_id": 7, "aria_described_by": "x-hint"},
        {"value": 'say "hi" & <b>bye</b>'},
        {"value": Markup('already "safe" <i>markup</i>')},
        {"value": None, "maxlength": 500, "title": "café ✓"},
        {},
    ]
    for attributes in cases:
        assert html_attributes(**attributes) == WTFORMS_HTML_PARAMS(**attributes), attributes


values = st.one_of(
    st.booleans(),
    st.integers(),
    st.none(),
    st.text(max_size=20),
    st.text(max_size=20).map(Markup),
)
keys = st.from_regex(r"\A(data_|aria_)?[a-z][a-z_]{0,8}_?\Z")


@given(st.dictionaries(keys, values, max_size=6))
def test_any_attributes_read_as_wtforms_writes_them(attributes):
    assert html_attributes(**attributes) == WTFORMS_HTML_PARAMS(**attributes)


class Sample(Form):
    kind = SelectField(
        "Kind", choices=[SelectChoice("", "Any"), SelectChoice("a&b", 'A "and" B')], default="a&b"
    )
    memo = StringField("Memo", default='<quoted "memo">')
    note = TextAreaField("Note", default="line & line")
    keep = BooleanField("Keep", default=True)


def _rendered() -> str:
    form = Sample()
    return "".join(
        str(part)
        for field in form
        for part in (field.label, field(aria_invalid="true", class_="wide"))
    )


def test_every_widget_the_portal_uses_renders_as_with_wtforms_own(app, monkeypatch):
    assert core.html_params is html_attributes  # installed by create_app
    assert core.Input.html_params is html_attributes
    ours = _rendered()
    for owner in (core, wtforms.widgets):
        monkeypatch.setattr(owner, "html_params", WTFORMS_HTML_PARAMS)
    for widget in (core.Input, core.Button):
        monkeypatch.setattr(widget, "html_params", staticmethod(WTFORMS_HTML_PARAMS))
    assert ours == _rendered()
    assert 'value="&lt;quoted &#34;memo&#34;&gt;"' in ours
