"""The Buy form: one button per package, the package travelling as a form value."""

from flask_wtf import FlaskForm
from wtforms import HiddenField
from wtforms.validators import AnyOf, InputRequired

from portal import policy


class BuyForm(FlaskForm):
    package = HiddenField(
        validators=[
            InputRequired(),
            AnyOf(list(policy.PACKAGES_BY_CODE), message="Choose one of the packages."),
        ]
    )
