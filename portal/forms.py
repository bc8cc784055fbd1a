"""Forms shared by every feature."""

from flask_wtf import FlaskForm


class EmptyForm(FlaskForm):
    """A one-button action (log out, buy, approve): only the CSRF token."""
