"""dispute hold and release ledger entry kinds

Revision ID: 3c1f0b7d2a41
Revises: 9285446f7f89
Created: 2026-11-24 23:40:00

Autogenerate does not compare CHECK constraints, so the list of allowed entry kinds is
rewritten here by hand.
"""

import sqlalchemy as sa
from alembic import op

revision = "3c1f0b7d2a41"
down_revision = "9285446f7f89"
branch_labels = None
depends_on = None

OLD_KINDS = (
    "purchase_credit",
    "job_charge",
    "job_refund",
    "refund_claw_back",
    "claw_back_reversal",
    "grant",
    "adjustment",
)
NEW_KINDS = (*OLD_KINDS, "dispute_hold", "dispute_release")


def _allow(kinds: tuple[str, ...]) -> None:
    allowed = ", ".join(f"'{kind}'" for kind in kinds)
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_ledger_entries_entrykind"), type_="check")
        batch_op.create_check_constraint("entrykind", sa.text(f"kind IN ({allowed})"))


def upgrade():
    _allow(NEW_KINDS)


def downgrade():
    _allow(OLD_KINDS)
