"""staff queue and request page indexes

Revision ID: c4d2e8f1a7b3
Revises: b3f1c0d9a8e2
Created: 2026-11-25 03:00:00

The staff queue shows open requests, about one in seven of all; its views read them
through partial indexes on the open statuses (by due date, oldest first, by assignee, by
verdict) instead of walking every request ever filed. Its counts of decisions cover the
last days, found by decision time. The request page lists the customer's jobs from a day
before the purchase on, in creation order.
"""

import sqlalchemy as sa
from alembic import op

revision = "c4d2e8f1a7b3"
down_revision = "b3f1c0d9a8e2"
branch_labels = None
depends_on = None

OPEN_CONDITION = "status IN ('open', 'in_review', 'waiting_on_customer')"

OPEN_INDEXES = {
    "ix_refund_requests_open_due": ["due_at", "id"],
    "ix_refund_requests_open_age": ["id"],
    "ix_refund_requests_open_assignee": ["assignee_id", "due_at", "id"],
    "ix_refund_requests_open_verdict": ["verdict", "due_at", "id"],
}


def upgrade():
    with op.batch_alter_table("refund_requests", schema=None) as batch_op:
        for name, columns in OPEN_INDEXES.items():
            batch_op.create_index(
                name,
                columns,
                unique=False,
                sqlite_where=sa.text(OPEN_CONDITION),
                postgresql_where=sa.text(OPEN_CONDITION),
            )
        batch_op.create_index("ix_refund_requests_decided", ["decided_at"], unique=False)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_user_created", ["user_id", "created_at", "id"], unique=False)


def downgrade():
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_user_created")
    with op.batch_alter_table("refund_requests", schema=None) as batch_op:
        batch_op.drop_index("ix_refund_requests_decided")
        for name in reversed(OPEN_INDEXES):
            batch_op.drop_index(name)
