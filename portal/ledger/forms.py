"""The history page's filter form (a GET form: it changes nothing, so no CSRF token) and
the low-balance alert's form on the Account page."""

from flask_wtf import FlaskForm
from wtforms import DateField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Optional, ValidationError

from portal.forms import SelectField, reasonable_date, strip_whitespace
from portal.ledger.alerts import THRESHOLD_MAX, THRESHOLD_MIN
from portal.ledger.queries import KIND_LABELS
from portal.money import parse_credits


class HistoryFilterForm(FlaskForm):
    class Meta:
        csrf = False

    kind = SelectField(
        "What happened",
        choices=[SelectChoice("", "Everything")]
        + [SelectChoice(kind.value, label) for kind, label in KIND_LABELS.items()],
        default="",
    )
    start = DateField("From", validators=[Optional(), reasonable_date])
    end = DateField("To (inclusive)", validators=[Optional(), reasonable_date])

    def validate_end(self, field):
        if field.data and self.start.data and field.data < self.start.data:
            raise ValidationError("The end date is before the start date.")


class LowBalanceAlertForm(FlaskForm):
    # Text, not a number input: browsers' number fields take "1e3" and drop what they
    # cannot read, and the customer should see the exact words we refused.
    threshold = StringField(
        "E-mail me when my balance falls below",
        filters=[strip_whitespace],
        validators=[DataRequired(message="Write a number of credits, like 500.")],
        description=f"Credits: a whole number from {THRESHOLD_MIN:,} to {THRESHOLD_MAX:,}.",
        render_kw={
            "class": "input-credits",
            "inputmode": "numeric",
            "autocomplete": "off",
            "spellcheck": "false",
        },
    )

    def validate_threshold(self, field):
        credits = parse_credits(field.data)
        if credits is None:
            raise ValidationError("Write a whole number of credits, like 500.")
        if not THRESHOLD_MIN <= credits <= THRESHOLD_MAX:
            raise ValidationError(
                f"Choose between {THRESHOLD_MIN:,} and {THRESHOLD_MAX:,} credits."
            )

    @property
    def credits(self) -> int:
        return parse_credits(self.threshold.data) or 0
