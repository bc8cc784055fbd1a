"""one open refund request per purchase

Revision ID: 506d776ff372
Revises: 3c1f0b7d2a41
Created: 2026-11-24 23:45:25.410200
"""

import sqlalchemy as sa
from alembic import op

revision = '506d776ff372'
down_revision = '3c1f0b7d2a41'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('refund_requests', schema=None) as batch_op:
        batch_op.create_index('uq_refund_requests_open_purchase', ['purchase_id'], unique=True, sqlite_where=sa.text("status IN ('open', 'in_review', 'waiting_on_customer')"), postgresql_where=sa.text("status IN ('open', 'in_review', 'waiting_on_customer')"))



def downgrade():
    with op.batch_alter_table('refund_requests', schema=None) as batch_op:
        batch_op.drop_index('uq_refund_requests_open_purchase', sqlite_where=sa.text("status IN ('open', 'in_review', 'waiting_on_customer')"), postgresql_where=sa.text("status IN ('open', 'in_review', 'waiting_on_customer')"))

