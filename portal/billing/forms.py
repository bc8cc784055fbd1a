"""The Buy form: one button per package, the package travelling as a form value."""

from flask_wtf import FlaskForm
from wtforms import BooleanField, HiddenField
from wtforms.validators import AnyOf, InputRequired

from portal import policy


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
