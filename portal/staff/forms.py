"""Forms of the staff pages: queue filters, decisions, notes, incidents, audit filters,
terminating an account."""

from flask_wtf import FlaskForm
from wtforms import BooleanField, DateField, DateTimeLocalField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, InputRequired, Length, Optional, ValidationError

from portal.forms import SelectField, reasonable_date, strip_whitespace
from portal.money import parse_dollars
from portal.refunds.eligibility import Verdict
from portal.refunds.forms import REASON_LABELS
from portal.refunds.models import RequestStatus
from portal.staff.services import DENIAL_REASONS, TERMINATION_REASON_MAX_LENGTH

VERDICT_LABELS = {
    Verdict.LIKELY_ELIGIBLE: "Likely eligible",
    Verdict.LIKELY_INELIGIBLE: "Likely not eligible",
    Verdict.NEEDS_REVIEW: "Needs review",
    Verdict.RESOLVED_AUTOMATICALLY: "Settled automatically",
}


def _choices(pairs, blank="Any"):
    return [SelectChoice("", blank)] + [SelectChoice(value, label) for value, label in pairs]


class QueueFilterForm(FlaskForm):
    class Meta:
        csrf = False

    status = SelectField(
        "Status",
        choices=_choices(
            [
                (status.value, status.value.replace("_", " ").capitalize())
                for status in RequestStatus
            ],
            blank="Any open",
        ),
        default="",
    )
    verdict = SelectField(
        "Pre-check",
        choices=_choices([(v.value, label) for v, label in VERDICT_LABELS.items()]),
        default="",
    )
    reason = SelectField(
        "Reason",
        choices=_choices([(r.value, label) for r, label in REASON_LABELS.items()]),
        default="",
    )
    assignee = SelectField(
        "Assignee",
        choices=[
            SelectChoice("anyone", "Anyone"),
            SelectChoice("me", "Me"),
            SelectChoice("nobody", "Nobody"),
        ],
        default="anyone",
    )
    overdue = SelectField(
        "Due",
        choices=[SelectChoice("", "Any time"), SelectChoice("1", "Overdue only")],
        default="",
    )
    sort = SelectField(
        "Sort",
        choices=[SelectChoice("due", "Due date"), SelectChoice("age", "Oldest first")],
        default="due",
    )


class TextForm(FlaskForm):
    body = TextAreaField(
        "Text",
        filters=[strip_whitespace],
        validators=[DataRequired(message="Write something first."), Length(max=5000)],
    )


class AssignForm(FlaskForm):
    assignee = SelectField("Hand to", coerce=str, validators=[InputRequired()])


class DenyForm(FlaskForm):
    reason = SelectField(
        "Reason",
        choices=[
            SelectChoice(code, text or "Other (write it below)")
            for code, text in DENIAL_REASONS.items()
        ],
        validators=[InputRequired()],
    )
    message = TextAreaField(
        "Message to the customer", filters=[strip_whitespace], validators=[Length(max=5000)]
    )


class ApproveForm(FlaskForm):
    amount = StringField(
        "Amount to refund (USD)",
        validators=[InputRequired()],
        description="Defaults to today's recommendation.",
    )
    justification = TextAreaField(
        "Justification (needed above the unused credits' value)",
        filters=[strip_whitespace],
        validators=[Length(max=2000)],
    )

    def validate_amount(self, field):
        if parse_dollars(field.data) is None:
            raise ValidationError("Write an amount like 5.86.")

    @property
    def amount_cents(self) -> int:
        return parse_dollars(self.amount.data) or 0


class TerminateForm(FlaskForm):
    reason = TextAreaField(
        "Reason (the customer reads it)",
        filters=[strip_whitespace],
        validators=[
            DataRequired(message="Write the reason the customer will read."),
            Length(max=TERMINATION_REASON_MAX_LENGTH),
        ],
    )
    # Termination cannot be undone from the portal, so one stray click must not do it.
    confirm = BooleanField(
        "I confirm this account broke our Terms of Use",
        validators=[DataRequired(message="Tick the box to confirm.")],
    )


class IncidentForm(FlaskForm):
    title = StringField(
        "What happened",
        filters=[strip_whitespace],
        validators=[DataRequired(message="Say what happened."), Length(max=200)],
    )
    started_at = DateTimeLocalField(
        "Started (your time)",
        validators=[InputRequired(), reasonable_date],
        format="%Y-%m-%dT%H:%M",
    )
    ended_at = DateTimeLocalField(
        "Ended (empty while ongoing)",
        validators=[Optional(), reasonable_date],
        format="%Y-%m-%dT%H:%M",
    )
    note = TextAreaField("Note", filters=[strip_whitespace], validators=[Length(max=5000)])


class EndIncidentForm(FlaskForm):
    ended_at = DateTimeLocalField(
        "Ended (your time)", validators=[InputRequired(), reasonable_date], format="%Y-%m-%dT%H:%M"
    )


class AuditFilterForm(FlaskForm):
    class Meta:
        csrf = False

    action = SelectField("Action", default="")
    target_type = SelectField(
        "Object",
        choices=_choices(
            [
                (kind, kind.replace("_", " "))
                for kind in ("refund_request", "refund", "purchase", "incident")
            ]
        ),
        default="",
    )
    start = DateField("From", validators=[Optional(), reasonable_date])
    end = DateField("To (inclusive)", validators=[Optional(), reasonable_date])
