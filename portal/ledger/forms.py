"""The history page's filter form (a GET form: it changes nothing, so no CSRF token)."""

from flask_wtf import FlaskForm
from wtforms import DateField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import Optional, ValidationError

from portal.forms import SelectField, reasonable_date
from portal.ledger.queries import KIND_LABELS


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
