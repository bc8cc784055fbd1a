"""The portal's select renders its options with `html_attributes`, exactly as WTForms would."""

from hypothesis import given
from hypothesis import strategies as st
from markupsafe import Markup
from wtforms import Form
from wtforms.fields.choices import SelectChoice
from wtforms.widgets import core

from portal.forms import Select, SelectField, html_attributes

WTFORMS_HTML_PARAMS = core.html_params


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
        "Kind",
        choices=[
            SelectChoice("", "Any"),
            SelectChoice("a&b", 'A "and" B'),
            SelectChoice(True, "Yes", render_kw={"data_hint": "<on>"}),
            SelectChoice("off", "", render_kw={"disabled": True}),
        ],
        default="a&b",
    )
    grouped = SelectField(
        "Grouped",
        choices=[
            SelectChoice("1", "One", optgroup="First"),
            SelectChoice("2", "<Two>", optgroup="Second & last"),
        ],
        default="2",
    )


def test_the_portal_select_renders_as_wtforms_own():
    form = Sample()
    for field in form:
        assert isinstance(field.widget, Select)
        ours = str(field(aria_invalid="true", class_="wide"))
        theirs = str(core.Select()(field, aria_invalid="true", class_="wide"))
        assert ours == theirs
    assert '<option selected value="a&amp;b">A &#34;and&#34; B</option>' in str(form.kind())
    assert '<optgroup label="Second &amp; last">' in str(form.grouped())


def test_wtforms_itself_is_left_as_it_is(app):
    assert core.html_params is WTFORMS_HTML_PARAMS
    assert core.Input.html_params is not html_attributes
