"""scheduled tasks

Revision ID: 6e58b109cfe5
Revises: a0afee40436f
Created: 2026-11-25 00:18:46.682485
"""

import sqlalchemy as sa
from alembic import op

revision = '6e58b109cfe5'
down_revision = 'a0afee40436f'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('scheduled_tasks',
    sa.Column('name', sa.String(length=50), nullable=False),
    sa.Column('last_run_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_outcome', sa.String(length=255), nullable=True),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_scheduled_tasks'))
    )


def downgrade():
    op.drop_table('scheduled_tasks')
