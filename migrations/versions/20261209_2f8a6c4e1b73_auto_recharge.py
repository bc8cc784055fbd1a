"""auto-recharge

Revision ID: 2f8a6c4e1b73
Revises: e41a7c2b9d35
Created: 2026-12-09 09:00:00

A customer may have their saved card charged for a package whenever a job leaves their
balance below a number of credits, up to a monthly cap.

- `users.auto_recharge_below` is that number while auto-recharge is on (None is off),
  and `users.auto_recharge_wanted` says a job charge asked for a recharge that the
  worker has not yet taken up: both beside the balance, under its row lock.
- `auto_recharges` keeps the package, the cap, the card set up for it and how many
  recharges in a row were declined.
- `purchases.origin` tells a recharge from a Checkout purchase (every existing row was a
  Checkout purchase), and a partial unique index allows one recharge in flight per
  customer. `needs_customer_since` marks a recharge waiting for the cardholder.
"""

import sqlalchemy as sa
from alembic import op

revision = "2f8a6c4e1b73"
down_revision = "e41a7c2b9d35"
branch_labels = None
depends_on = None

IN_FLIGHT = sa.text("origin = 'auto_recharge' AND status = 'pending'")


def upgrade():
    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(sa.Column("auto_recharge_below", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column(
                "auto_recharge_wanted", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )
        batch_op.create_check_constraint(
            "auto_recharge_below_positive",
            sa.text("auto_recharge_below IS NULL OR auto_recharge_below > 0"),
        )
    with op.batch_alter_table("purchases") as batch_op:
        batch_op.add_column(
            sa.Column(
                "origin",
                sa.Enum(
                    "checkout",
                    "auto_recharge",
                    name="purchaseorigin",
                    native_enum=False,
                    create_constraint=True,
                    length=13,
                ),
                nullable=False,
                server_default="checkout",
            )
        )
        batch_op.add_column(sa.Column("needs_customer_since", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "uq_purchases_one_recharge_in_flight",
        "purchases",
        ["user_id"],
        unique=True,
        postgresql_where=IN_FLIGHT,
        sqlite_where=IN_FLIGHT,
    )
    op.create_table(
        "auto_recharges",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("threshold", sa.Integer(), nullable=False),
        sa.Column("package_code", sa.String(length=32), nullable=False),
        sa.Column("monthly_cap_cents", sa.Integer(), nullable=False),
        sa.Column("payment_method_id", sa.String(length=255), nullable=True),
        sa.Column("card_brand", sa.String(length=32), nullable=True),
        sa.Column("card_last4", sa.String(length=4), nullable=True),
        sa.Column("setup_session_id", sa.String(length=255), nullable=True),
        sa.Column("failures_in_a_row", sa.Integer(), nullable=False),
        sa.Column("switched_off_because", sa.Text(), nullable=True),
        sa.Column("cap_told_for", sa.String(length=7), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("threshold > 0", name=op.f("ck_auto_recharges_threshold_positive")),
        sa.CheckConstraint(
            "monthly_cap_cents > 0", name=op.f("ck_auto_recharges_monthly_cap_positive")
        ),
        sa.CheckConstraint(
            "failures_in_a_row >= 0", name=op.f("ck_auto_recharges_failures_not_negative")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_auto_recharges_user_id_users")
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_auto_recharges")),
    )


def downgrade():
    op.drop_table("auto_recharges")
    op.drop_index("uq_purchases_one_recharge_in_flight", table_name="purchases")
    with op.batch_alter_table("purchases") as batch_op:
        batch_op.drop_column("needs_customer_since")
        batch_op.drop_constraint(op.f("ck_purchases_purchaseorigin"), type_="check")
        batch_op.drop_column("origin")
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_constraint(op.f("ck_users_auto_recharge_below_positive"), type_="check")
        batch_op.drop_column("auto_recharge_wanted")
        batch_op.drop_column("auto_recharge_below")
