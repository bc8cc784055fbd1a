"""The Buy form (one button per package, the package travelling as a form value) and
the auto-recharge settings."""

from flask_wtf import FlaskForm
from wtforms import BooleanField, HiddenField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import AnyOf, DataRequired, InputRequired, ValidationError

from portal import policy
from portal.billing import auto_recharge
from portal.forms import SelectField, strip_whitespace
from portal.money import format_cents, parse_credits


class BuyForm(FlaskForm):
    package = HiddenField(
        validators=[
            InputRequired(),
            AnyOf(list(policy.PACKAGES_BY_CODE), message="Choose one of the packages."),
        ]
    )
    # The page is one form: each package's button sends `package`, and this one box goes
    # with whichever is pressed.
    save_card = BooleanField("Save my card for next time")


def _package_choice(package: policy.Package) -> SelectChoice:
    return SelectChoice(
        package.code,
        f"{package.name}: {package.credits:,} credits for {format_cents(package.price_cents)}",
    )


class AutoRechargeForm(FlaskForm):
    # Text, not number inputs: browsers' number fields take "1e3" and drop what they
    # cannot read, and the customer should see the exact words we refused.
    threshold = StringField(
        "When a job leaves my balance below",
        filters=[strip_whitespace],
        validators=[DataRequired(message="Write a number of credits, like 100.")],
        description=(
            f"Credits: a whole number from {auto_recharge.THRESHOLD_MIN:,} to "
            f"{auto_recharge.THRESHOLD_MAX:,}."
        ),
        render_kw={"class": "input-credits", "inputmode": "numeric", "autocomplete": "off"},
    )
    package = SelectField(
        "Buy",
        choices=[_package_choice(package) for package in policy.PACKAGES],
        default=policy.BEST_VALUE.code,
    )
    monthly_cap = StringField(
        "Spending no more than this each month",
        filters=[strip_whitespace],
        validators=[DataRequired(message="Write a number of dollars, like 100.")],
        description=(
            "Dollars, a whole number: at least one package's price, at most "
            f"{format_cents(auto_recharge.CAP_MAX_CENTS)}. Each recharge counts in the "
            f"calendar month it starts in, {policy.COMPANY_TIMEZONE_NAME} time."
        ),
        render_kw={"class": "input-credits", "inputmode": "numeric", "autocomplete": "off"},
    )

    def validate_threshold(self, field):
        credits = parse_credits(field.data)
        if credits is None:
            raise ValidationError("Write a whole number of credits, like 100.")
        if not auto_recharge.THRESHOLD_MIN <= credits <= auto_recharge.THRESHOLD_MAX:
            raise ValidationError(
                f"Choose between {auto_recharge.THRESHOLD_MIN:,} and "
                f"{auto_recharge.THRESHOLD_MAX:,} credits."
            )

    def validate_monthly_cap(self, field):
        dollars = parse_credits((field.data or "").removeprefix("$"))
        if dollars is None:
            raise ValidationError("Write a whole number of dollars, like 100.")
        package = policy.PACKAGES_BY_CODE.get(self.package.data)
        if package and dollars * 100 < package.price_cents:
            raise ValidationError(
                f"At least {format_cents(package.price_cents)}, the price of one "
                f"{package.name} package."
            )
        if dollars * 100 > auto_recharge.CAP_MAX_CENTS:
            raise ValidationError(f"At most {format_cents(auto_recharge.CAP_MAX_CENTS)} a month.")

    @property
    def credits(self) -> int:
        return parse_credits(self.threshold.data) or 0

    @property
    def cap_cents(self) -> int:
        return (parse_credits((self.monthly_cap.data or "").removeprefix("$")) or 0) * 100
