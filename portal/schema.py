"""The database schema's migrations: Alembic through Flask-Migrate, brought in only where
they run (the `flask db` commands, `upgrade` for tests and the benchmark).

A serving worker never migrates, and importing Flask-Migrate imports Alembic, Mako and
Pygments: about 11 MB in every worker, a tenth of its memory. So `create_app` registers
`flask db` as a group that loads them when it is used, and the readiness check compares
revisions without them (`heads`, held to Alembic's own answer by tests/test_migrations.py).
"""

import ast
from functools import cache
from pathlib import Path

import click
from flask import Flask, current_app

from portal.db import db

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def wire(app: Flask) -> None:
    """Give `app` Flask-Migrate's settings (what `flask db` and migrations/env.py read),
    once."""
    if "migrate" not in app.extensions:
        # Late, as every Flask-Migrate import here: see the module's docstring.
        from flask_migrate import Migrate

        Migrate(app, db, directory=str(MIGRATIONS), render_as_batch=True)


def upgrade(revision: str = "head") -> None:
    """Migrate the current app's database up to `revision`."""
    wire(current_app._get_current_object())
    # Late: see the module's docstring.
    from flask_migrate import upgrade as migrate_up

    migrate_up(directory=str(MIGRATIONS), revision=revision)


def downgrade(revision: str) -> None:
    """Migrate the current app's database down to `revision`."""
    wire(current_app._get_current_object())
    # Late: see the module's docstring.
    from flask_migrate import downgrade as migrate_down

    migrate_down(directory=str(MIGRATIONS), revision=revision)


class _LoadedWhenUsed(click.Group):
    """`flask db …`: a stand-in listed under its name and help, which hands over to
    Flask-Migrate's own group when it is run (the app's context is active by then)."""

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        wire(current_app._get_current_object())
        # Late: see the module's docstring.
        from flask_migrate.cli import db as commands

        return commands.make_context(info_name, args, parent=parent, **extra)


def register_commands(app: Flask) -> None:
    app.cli.add_command(_LoadedWhenUsed("db", help="Database migrations (Flask-Migrate)."))


@cache
def heads() -> frozenset[str]:
    """The revisions no other migration follows: what a migrated database is at.

    Read from each migration's `revision` and `down_revision` assignments, as Alembic
    reads them, without importing Alembic into the process (see the module's docstring).
    """
    revisions, followed = set(), set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        values = {}
        for node in ast.parse(path.read_text()).body:
            # `revision = "…"`, or annotated as Alembic's own template writes it.
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target = node.target
            else:
                continue
            if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
                values[target.id] = ast.literal_eval(node.value)
        if "revision" not in values:
            continue  # not a migration (an __init__.py, say)
        revisions.add(values["revision"])
        down = values.get("down_revision")
        # A merge follows several revisions at once.
        followed.update(down if isinstance(down, tuple | list) else [down] if down else [])
    return frozenset(revisions - followed)
