"""closed accounts

Revision ID: 7d2e9c1a4b57
Revises: 6e58b109cfe5
Created: 2026-11-25 00:20:00

A new account status; autogenerate does not compare CHECK constraints, so the list of
allowed statuses is rewritten by hand.
"""

import sqlalchemy as sa
from alembic import op

revision = "7d2e9c1a4b57"
down_revision = "6e58b109cfe5"
branch_labels = None
depends_on = None


def _allow(statuses: tuple[str, ...]) -> None:
    allowed = ", ".join(f"'{status}'" for status in statuses)
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_users_accountstatus"), type_="check")
        batch_op.create_check_constraint("accountstatus", sa.text(f"status IN ({allowed})"))


def upgrade():
    _allow(("active", "terminated", "closed"))


def downgrade():
    _allow(("active", "terminated"))
