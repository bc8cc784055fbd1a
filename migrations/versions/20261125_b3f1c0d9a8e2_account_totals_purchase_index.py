"""account totals, day-end balances and purchases by customer

Revision ID: b3f1c0d9a8e2
Revises: 7d2e9c1a4b57
Created: 2026-11-25 02:40:00

The dashboard showed credits bought, used, refunded and granted by summing the whole
ledger of the customer on every view (200,000 rows for the heaviest). The ledger now
keeps these totals on the account row it already locks and updates for every entry;
this revision adds the columns and fills them from the entries written so far.

Likewise the balance chart looked through the last 90 days of entries; the ledger now
records each customer's closing balance of every UTC day on which it changed
(`day_end_balances`), filled here from the last entry of each day.

The purchases pages read a customer's purchases newest first by id, which the
(user_id, created_at) index could not serve without a sort; entries by date get `id` as
a tie-break in their index.

Deploy with the portal and its workers stopped: the backfill reads every entry, and an
old worker still posting entries after it would leave totals the new code never fixes
(`flask ledger-check` would report them; `flask ledger-rebuild-figures` recomputes them).
On PostgreSQL the revision locks users and ledger_entries while it runs.
"""

import sqlalchemy as sa
from alembic import op

revision = "b3f1c0d9a8e2"
down_revision = "7d2e9c1a4b57"
branch_labels = None
depends_on = None

TOTALS = ("credits_bought", "credits_used", "credits_refunded", "credits_granted")

# Each total is the sum of some entry kinds, with the sign that makes it positive.
BACKFILL = """
UPDATE users SET
    credits_bought = COALESCE((SELECT SUM(credits) FROM ledger_entries e
        WHERE e.user_id = users.id AND e.kind = 'purchase_credit'), 0),
    credits_used = -COALESCE((SELECT SUM(credits) FROM ledger_entries e
        WHERE e.user_id = users.id AND e.kind IN ('job_charge', 'job_refund')), 0),
    credits_refunded = -COALESCE((SELECT SUM(credits) FROM ledger_entries e
        WHERE e.user_id = users.id
          AND e.kind IN ('refund_claw_back', 'claw_back_reversal')), 0),
    credits_granted = COALESCE((SELECT SUM(credits) FROM ledger_entries e
        WHERE e.user_id = users.id AND e.kind = 'grant'), 0)
WHERE id IN (SELECT DISTINCT user_id FROM ledger_entries)
"""

# The UTC calendar day of an entry, in each database's words (SQLite keeps UTC text).
ENTRY_DAY = {
    "postgresql": "(created_at AT TIME ZONE 'UTC')::date",
    "sqlite": "substr(created_at, 1, 10)",
}

DAY_END_BACKFILL = """
INSERT INTO day_end_balances (user_id, day, balance)
SELECT user_id, {day}, balance_after FROM ledger_entries
WHERE id IN (SELECT MAX(id) FROM ledger_entries GROUP BY user_id, {day})
"""


def upgrade():
    with op.batch_alter_table("users", schema=None) as batch_op:
        for name in TOTALS:
            batch_op.add_column(sa.Column(name, sa.Integer(), nullable=False, server_default="0"))
    op.execute(BACKFILL)
    op.create_table(
        "day_end_balances",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("balance", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_day_end_balances_user_id_users")
        ),
        sa.PrimaryKeyConstraint("user_id", "day", name=op.f("pk_day_end_balances")),
    )
    op.execute(DAY_END_BACKFILL.format(day=ENTRY_DAY[op.get_bind().dialect.name]))
    with op.batch_alter_table("purchases", schema=None) as batch_op:
        batch_op.create_index("ix_purchases_user_id_desc", ["user_id", "id"], unique=False)
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_ledger_entries_user_created")
        batch_op.create_index(
            "ix_ledger_entries_user_created", ["user_id", "created_at", "id"], unique=False
        )


def downgrade():
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_ledger_entries_user_created")
        batch_op.create_index("ix_ledger_entries_user_created", ["user_id", "created_at"])
    with op.batch_alter_table("purchases", schema=None) as batch_op:
        batch_op.drop_index("ix_purchases_user_id_desc")
    op.drop_table("day_end_balances")
    with op.batch_alter_table("users", schema=None) as batch_op:
        for name in reversed(TOTALS):
            batch_op.drop_column(name)
