"""refund commitments and attempts

Revision ID: 09f4a3d23315
Revises: 506d776ff372
Created: 2026-11-24 23:48:31.874447
"""

import sqlalchemy as sa
from alembic import op

revision = '09f4a3d23315'
down_revision = '506d776ff372'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('purchases', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('committed_refund_cents', sa.Integer(), nullable=False, server_default='0')
        )
        batch_op.create_check_constraint(
            'committed_refunds_within_amount',
            sa.text('committed_refund_cents >= 0 AND committed_refund_cents <= amount_cents'),
        )

    with op.batch_alter_table('refunds', schema=None) as batch_op:
        batch_op.add_column(sa.Column('attempt', sa.Integer(), nullable=False, server_default='1'))
        batch_op.add_column(sa.Column('created_by_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_refunds_status_scheduled', ['status', 'scheduled_for'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_refunds_created_by_id_users'), 'users', ['created_by_id'], ['id'])


def downgrade():
    with op.batch_alter_table('refunds', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_refunds_created_by_id_users'), type_='foreignkey')
        batch_op.drop_index('ix_refunds_status_scheduled')
        batch_op.drop_column('sent_at')
        batch_op.drop_column('created_by_id')
        batch_op.drop_column('attempt')

    with op.batch_alter_table('purchases', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_purchases_committed_refunds_within_amount'), type_='check')
        batch_op.drop_column('committed_refund_cents')

