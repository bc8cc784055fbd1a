"""purchases keep their invoice and whether the card is saved

Revision ID: 7e4c1a9b2d35
Revises: 6d0e3b8f5a12
Created: 2026-12-07 04:45:00

Checkout makes a numbered invoice for every purchase (`invoice_creation`); the receipt
links to Stripe's hosted page and PDF. Purchases made before have none, and their
receipts leave the lines out. `saves_card` records the customer's choice to save the
card, which is part of the Checkout Session's parameters. (`users.stripe_customer_id`
already exists; it is now written at the first checkout.)
"""

import sqlalchemy as sa
from alembic import op

revision = "7e4c1a9b2d35"
down_revision = "6d0e3b8f5a12"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("purchases") as batch_op:
        batch_op.add_column(sa.Column("stripe_invoice_id", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("invoice_number", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("invoice_url", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("invoice_pdf_url", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column("saves_card", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.create_unique_constraint(
            "uq_purchases_stripe_invoice_id", ["stripe_invoice_id"]
        )


def downgrade():
    with op.batch_alter_table("purchases") as batch_op:
        batch_op.drop_constraint("uq_purchases_stripe_invoice_id", type_="unique")
        batch_op.drop_column("saves_card")
        batch_op.drop_column("invoice_pdf_url")
        batch_op.drop_column("invoice_url")
        batch_op.drop_column("invoice_number")
        batch_op.drop_column("stripe_invoice_id")
