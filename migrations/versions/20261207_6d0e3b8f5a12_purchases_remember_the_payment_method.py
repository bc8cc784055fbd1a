"""purchases remember the payment method

Revision ID: 6d0e3b8f5a12
Revises: 4a7c2e9d1f60
Created: 2026-12-07 04:00:00

The receipt names the card ("Visa ending in 4242"), and the duplicate rule compares
cards by Stripe's fingerprint. Purchases paid before this have none: the receipt leaves
the line out and the rule does not compare.
"""

import sqlalchemy as sa
from alembic import op

revision = "6d0e3b8f5a12"
down_revision = "4a7c2e9d1f60"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("purchases") as batch_op:
        batch_op.add_column(sa.Column("payment_method_brand", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("payment_method_last4", sa.String(length=4), nullable=True))
        batch_op.add_column(
            sa.Column("payment_method_fingerprint", sa.String(length=64), nullable=True)
        )


def downgrade():
    with op.batch_alter_table("purchases") as batch_op:
        batch_op.drop_column("payment_method_fingerprint")
        batch_op.drop_column("payment_method_last4")
        batch_op.drop_column("payment_method_brand")
