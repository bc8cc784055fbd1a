"""The refund request form (filled in, reviewed, then submitted) and the reply form."""

from flask_wtf import FlaskForm
from flask_wtf.file import MultipleFileField
from wtforms import BooleanField, HiddenField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import AnyOf, DataRequired, InputRequired, Length, Optional, Regexp

from portal.forms import SelectField, strip_whitespace
from portal.refunds.eligibility import RequestReason

REASON_LABELS = {
    RequestReason.CREDITS_NOT_ADDED: "I paid but my credits were not added",
    RequestReason.CHARGED_TWICE: "I was charged twice",
    RequestReason.SERVICE_UNAVAILABLE: "The service was unavailable",
    RequestReason.JOB_FAILED: "A processing job failed",
    RequestReason.NOT_HAPPY: "I am not happy with the results",
    RequestReason.NO_LONGER_NEEDED: "I no longer need these credits",
    RequestReason.OTHER: "Something else",
}
ID_PATTERN = r"^[1-9][0-9]{0,9}$"


class RefundRequestForm(FlaskForm):
    purchase_id = HiddenField(validators=[InputRequired(), Regexp(ID_PATTERN)])
    job_id = HiddenField(validators=[Optional(), Regexp(ID_PATTERN)])
    reason = SelectField(
        "What happened?",
        choices=[SelectChoice("", "Choose a reason")]
        + [SelectChoice(reason.value, label) for reason, label in REASON_LABELS.items()],
        validators=[InputRequired(message="Choose the reason that fits best.")],
    )
    details = TextAreaField(
        "Tell us what happened",
        filters=[strip_whitespace],
        validators=[
            DataRequired(message="Tell us in a few words what happened."),
            Length(min=10, max=5000, message="Write between 10 and 5,000 characters."),
        ],
    )
    transaction_ids = StringField(
        "Transaction or receipt ids (optional)",
        filters=[strip_whitespace],
        validators=[Optional(), Length(max=500)],
        description="From your bank statement or Stripe receipt, if you have them.",
    )
    money_back = BooleanField(
        "If my credits never arrived, refund my money instead of adding the credits"
    )
    attachments = MultipleFileField(
        "Screenshots (optional)",
        description="Up to 3 PNG or JPEG images, 5 MB each.",
    )
    step = HiddenField(default="review", validators=[AnyOf(["review", "submit", "edit"])])


class ReplyForm(FlaskForm):
    body = TextAreaField(
        "Your answer",
        filters=[strip_whitespace],
        validators=[
            DataRequired(message="Write your answer."),
            Length(max=5000, message="Write at most 5,000 characters."),
        ],
    )
