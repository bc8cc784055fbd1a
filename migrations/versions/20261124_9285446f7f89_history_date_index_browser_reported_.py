"""history date index, browser-reported timezone

Revision ID: 9285446f7f89
Revises: aeaced05ff6b
Created: 2026-11-24 23:30:20.173739
"""

import sqlalchemy as sa
from alembic import op

revision = '9285446f7f89'
down_revision = 'aeaced05ff6b'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('ledger_entries', schema=None) as batch_op:
        batch_op.create_index('ix_ledger_entries_user_created', ['user_id', 'created_at'], unique=False)

    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.alter_column('timezone',
               existing_type=sa.VARCHAR(length=64),
               nullable=True)



def downgrade():
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.alter_column('timezone',
               existing_type=sa.VARCHAR(length=64),
               nullable=False)

    with op.batch_alter_table('ledger_entries', schema=None) as batch_op:
        batch_op.drop_index('ix_ledger_entries_user_created')

