"""staff second factor

Revision ID: 8b3d6f2a4c91
Revises: 5e1f0a9c3b27
Created: 2026-12-07 01:15:00

Staff sign in with an authenticator app (TOTP) as well as a password, with one-time
recovery codes. Staff sessions opened with a password alone end here: every staff member
enrols at their next log-in.
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "8b3d6f2a4c91"
down_revision = "5e1f0a9c3b27"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(sa.Column("totp_secret", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("totp_enrolled_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("totp_last_step", sa.BigInteger(), nullable=True))
    op.create_table(
        "recovery_codes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_recovery_codes_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recovery_codes")),
        sa.UniqueConstraint("code_hash", name=op.f("uq_recovery_codes_code_hash")),
    )
    with op.batch_alter_table("recovery_codes") as batch_op:
        batch_op.create_index(batch_op.f("ix_recovery_codes_user_id"), ["user_id"], unique=False)
    staff = sa.table("users", sa.column("id", sa.Integer), sa.column("role", sa.String))
    sessions = sa.table(
        "user_sessions",
        sa.column("user_id", sa.Integer),
        sa.column("ended_at", sa.DateTime(timezone=True)),
    )
    op.execute(
        sessions.update()
        .where(
            sessions.c.ended_at.is_(None),
            sessions.c.user_id.in_(sa.select(staff.c.id).where(staff.c.role == "staff")),
        )
        .values(ended_at=datetime.now(UTC))
    )


def downgrade():
    op.drop_table("recovery_codes")
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_column("totp_last_step")
        batch_op.drop_column("totp_enrolled_at")
        batch_op.drop_column("totp_secret")
