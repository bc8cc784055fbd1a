"""refund reason: credits no longer needed

Revision ID: 53e16e92fea7
Revises: 8b3d6f2a4c91
Created: 2026-12-07 03:30:00

Customers can say they no longer need the credits. Autogenerate does not compare CHECK
constraints, so the list of allowed reasons is rewritten here by hand (batch mode, so that
SQLite rebuilds the table with its partial indexes).
"""

import sqlalchemy as sa
from alembic import op

revision = "53e16e92fea7"
down_revision = "8b3d6f2a4c91"
branch_labels = None
depends_on = None

OLD_REASONS = (
    "credits_not_added",
    "charged_twice",
    "service_unavailable",
    "job_failed",
    "not_happy",
    "other",
)
NEW_REASONS = (*OLD_REASONS, "no_longer_needed")


def _allow(reasons: tuple[str, ...]) -> None:
    allowed = ", ".join(f"'{reason}'" for reason in reasons)
    with op.batch_alter_table("refund_requests", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_refund_requests_requestreason"), type_="check")
        batch_op.create_check_constraint("requestreason", sa.text(f"reason IN ({allowed})"))


def upgrade():
    _allow(NEW_REASONS)


def downgrade():
    # The older schema has no word for it: such requests become "something else".
    op.execute(
        sa.text("UPDATE refund_requests SET reason = 'other' WHERE reason = 'no_longer_needed'")
    )
    _allow(OLD_REASONS)
