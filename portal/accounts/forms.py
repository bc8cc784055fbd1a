"""Sign-up, log-in and password forms."""

from flask_wtf import FlaskForm
from wtforms import BooleanField, EmailField, PasswordField, StringField
from wtforms.validators import DataRequired, Email, EqualTo, InputRequired, Length, ValidationError

from portal.accounts.passwords import MAX_LENGTH, password_problems
from portal.forms import SelectField, strip_whitespace


def normalise_email(value: str | None) -> str:
    return (value or "").strip().lower()


class _NewPasswordMixin:
    def validate_password(self, field):
        problems = password_problems(
            field.data or "", getattr(self, "email", None) and self.email.data or ""
        )
        if problems:
            raise ValidationError(" ".join(problems))


class SignupForm(_NewPasswordMixin, FlaskForm):
    email = EmailField(
        "E-mail", validators=[InputRequired(), Email(), Length(max=254)], filters=[normalise_email]
    )
    password = PasswordField(
        "Password",
        validators=[InputRequired()],
        description="At least 15 characters. A few unrelated words make a good one.",
    )
    confirm = PasswordField(
        "Repeat password", validators=[InputRequired(), EqualTo("password", "Passwords differ.")]
    )


class LoginForm(FlaskForm):
    email = EmailField(
        "E-mail", validators=[InputRequired(), Length(max=254)], filters=[normalise_email]
    )
    password = PasswordField("Password", validators=[InputRequired(), Length(max=MAX_LENGTH)])
    remember = BooleanField("Keep me logged in on this device")


class SecondFactorForm(FlaskForm):
    code = StringField(
        "Code",
        filters=[strip_whitespace],
        validators=[
            DataRequired(message="Type the code your authenticator app shows."),
            Length(max=20, message="Type the 6-digit code or a recovery code."),
        ],
        render_kw={"autocapitalize": "off", "spellcheck": "false"},
    )


class ChangePasswordForm(_NewPasswordMixin, FlaskForm):
    current_password = PasswordField(
        "Current password", validators=[InputRequired(), Length(max=MAX_LENGTH)]
    )
    password = PasswordField("New password", validators=[InputRequired()])
    confirm = PasswordField(
        "Repeat new password",
        validators=[InputRequired(), EqualTo("password", "Passwords differ.")],
    )


class ResetRequestForm(FlaskForm):
    email = EmailField(
        "E-mail", validators=[InputRequired(), Email(), Length(max=254)], filters=[normalise_email]
    )


class ResetPasswordForm(_NewPasswordMixin, FlaskForm):
    password = PasswordField("New password", validators=[InputRequired()])
    confirm = PasswordField(
        "Repeat new password",
        validators=[InputRequired(), EqualTo("password", "Passwords differ.")],
    )


class BrowserTimezoneForm(FlaskForm):
    timezone = StringField("Timezone", validators=[InputRequired(), Length(max=64)])


class SettingsForm(FlaskForm):
    timezone = SelectField("Timezone", validate_choice=True)


class CloseAccountForm(FlaskForm):
    current_password = PasswordField(
        "Your password", validators=[InputRequired(), Length(max=MAX_LENGTH)]
    )
    confirm = BooleanField(
        "I understand that my unused credits are lost and this cannot be undone",
        validators=[InputRequired(message="Tick the box to confirm.")],
    )
