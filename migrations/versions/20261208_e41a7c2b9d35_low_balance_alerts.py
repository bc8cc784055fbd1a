"""low-balance alerts

Revision ID: e41a7c2b9d35
Revises: 7e4c1a9b2d35
Created: 2026-12-08 09:00:00

A customer may ask to be e-mailed when their balance falls below a number of credits
(`low_balance_threshold`, off when empty). `low_balance_alert_armed` says whether the
next fall below it is news: it is set while the balance is at or above the threshold
and cleared when the alert is sent. Every account starts with the alert off.
"""

import sqlalchemy as sa
from alembic import op

revision = "e41a7c2b9d35"
down_revision = "7e4c1a9b2d35"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(sa.Column("low_balance_threshold", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column(
                "low_balance_alert_armed", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )
        batch_op.create_check_constraint(
            "low_balance_threshold_positive",
            sa.text("low_balance_threshold IS NULL OR low_balance_threshold > 0"),
        )


def downgrade():
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_constraint(
            op.f("ck_users_low_balance_threshold_positive"), type_="check"
        )
        batch_op.drop_column("low_balance_alert_armed")
        batch_op.drop_column("low_balance_threshold")
