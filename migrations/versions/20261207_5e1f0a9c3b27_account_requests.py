"""account requests

Revision ID: 5e1f0a9c3b27
Revises: c9706572e607
Created: 2026-12-07 01:10:00

Sign-ups and password resets become rows that the worker answers by e-mail, so that the
web answer is the same work whether or not an account exists for the address.
"""

import sqlalchemy as sa
from alembic import op

revision = "5e1f0a9c3b27"
down_revision = "c9706572e607"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "account_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "sign_up",
                "password_reset",
                name="accountrequestkind",
                native_enum=False,
                create_constraint=True,
            ),
            nullable=False,
        ),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("token_hash", sa.String(length=64), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_account_requests")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_account_requests_token_hash")),
    )
    with op.batch_alter_table("account_requests") as batch_op:
        batch_op.create_index(
            batch_op.f("ix_account_requests_answered_at"), ["answered_at"], unique=False
        )


def downgrade():
    op.drop_table("account_requests")
