"""Alembic environment for the portal, run through Flask-Migrate (`flask --app portal db ...`).

The engine and the metadata come from the running app, so the same migrations build the
schema on SQLite and PostgreSQL. Logging is left to the app: reconfiguring it here would
silence the test suite's loggers.
"""

from alembic import context
from flask import current_app

from portal.db import UTCDateTime

db = current_app.extensions["migrate"].db


def _render_item(type_, obj, autogen_context):
    # Migrations must not import app code that may change later: write the plain type.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _skip_empty_autogenerate(migration_context, revision, directives):
    # `flask db migrate` with no model change should write no empty revision file.
    if (
        getattr(context.config.cmd_opts, "autogenerate", False)
        and directives[0].upgrade_ops.is_empty()
    ):
        directives[:] = []


def run_migrations() -> None:
    options = dict(current_app.extensions["migrate"].configure_args)
    options.setdefault("process_revision_directives", _skip_empty_autogenerate)
    options.setdefault("render_item", _render_item)
    with db.engine.connect() as connection:
        context.configure(connection=connection, target_metadata=db.metadata, **options)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("Offline (SQL script) migrations are not supported; run `flask db upgrade`.")
run_migrations()
