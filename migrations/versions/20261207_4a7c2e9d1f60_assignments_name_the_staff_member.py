"""assignments name the staff member

Revision ID: 4a7c2e9d1f60
Revises: 53e16e92fea7
Created: 2026-12-07 04:10:00

The timeline wrote "Assigned to staff member 2." A person reads a name, so the portal now
writes the assignee's e-mail, and this rewrites the steps written before. Timeline steps
are otherwise append-only; this changes their wording, not what happened.
"""

from alembic import op

revision = "4a7c2e9d1f60"
down_revision = "53e16e92fea7"
branch_labels = None
depends_on = None

PREFIX = "Assigned to staff member "


def upgrade():
    # substr() and || read the same on PostgreSQL and SQLite. The id sits between the
    # prefix and the closing full stop.
    start = len(PREFIX) + 1
    op.execute(
        f"""
        UPDATE refund_request_events
        SET body = 'Assigned to ' || (
            SELECT users.email FROM users
            WHERE users.id = CAST(substr(refund_request_events.body, {start},
                                         length(refund_request_events.body) - {start})
                                  AS INTEGER)
        ) || '.'
        WHERE kind = 'assigned' AND body LIKE '{PREFIX}%'
          AND EXISTS (
            SELECT 1 FROM users
            WHERE users.id = CAST(substr(refund_request_events.body, {start},
                                         length(refund_request_events.body) - {start})
                                  AS INTEGER)
          )
        """  # noqa: S608  (constants only, no input)
    )


def downgrade():
    op.execute(
        """
        UPDATE refund_request_events
        SET body = 'Assigned to staff member ' || CAST((
            SELECT users.id FROM users
            WHERE 'Assigned to ' || users.email || '.' = refund_request_events.body
        ) AS TEXT) || '.'
        WHERE kind = 'assigned' AND EXISTS (
            SELECT 1 FROM users
            WHERE 'Assigned to ' || users.email || '.' = refund_request_events.body
        )
        """
    )
