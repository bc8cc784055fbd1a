"""disputes

Revision ID: 0cc72248f2b1
Revises: c4d2e8f1a7b3
Created: 2026-12-06 21:56:12

A purchase's disputes get rows of their own, so that the portal knows which are open,
won or lost whatever order Stripe's events arrive in. Disputes opened before this
release are known only by the credits they put on hold (ledger keys
`dispute:<id>:hold`, and `…:release` once won): each becomes a dispute row here, open
unless released, and the next reconciliation reads its real status from Stripe.
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0cc72248f2b1"
down_revision = "c4d2e8f1a7b3"
branch_labels = None
depends_on = None

STATUSES = (
    "warning_needs_response",
    "warning_under_review",
    "warning_closed",
    "needs_response",
    "under_review",
    "won",
    "lost",
)


def upgrade():
    disputes = op.create_table(
        "disputes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("purchase_id", sa.Integer(), nullable=False),
        sa.Column("stripe_dispute_id", sa.String(length=255), nullable=False),
        sa.Column("amount_cents", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column(
            "status",
            sa.Enum(*STATUSES, name="disputestatus", native_enum=False, create_constraint=True),
            nullable=False,
        ),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount_cents >= 0", name=op.f("ck_disputes_amount_not_negative")),
        sa.ForeignKeyConstraint(
            ["purchase_id"], ["purchases.id"], name=op.f("fk_disputes_purchase_id_purchases")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_disputes")),
        sa.UniqueConstraint("stripe_dispute_id", name=op.f("uq_disputes_stripe_dispute_id")),
    )
    with op.batch_alter_table("disputes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_disputes_purchase_id"), ["purchase_id"], unique=False)

    entries = sa.table(
        "ledger_entries",
        sa.column("id", sa.Integer),
        sa.column("kind", sa.String),
        sa.column("idempotency_key", sa.String),
        sa.column("purchase_id", sa.Integer),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    purchases = sa.table(
        "purchases",
        sa.column("id", sa.Integer),
        sa.column("amount_cents", sa.Integer),
        sa.column("refunded_cents", sa.Integer),
        sa.column("currency", sa.String),
    )
    bind = op.get_bind()
    held = bind.execute(
        sa.select(
            entries.c.idempotency_key,
            entries.c.purchase_id,
            entries.c.created_at,
            purchases.c.amount_cents,
            purchases.c.refunded_cents,
            purchases.c.currency,
        )
        .join(purchases, purchases.c.id == entries.c.purchase_id)
        .where(entries.c.kind == "dispute_hold")
        .order_by(entries.c.id)
    ).all()
    released = {
        key.split(":")[1]
        for (key,) in bind.execute(
            sa.select(entries.c.idempotency_key).where(entries.c.kind == "dispute_release")
        )
    }
    now = datetime.now(UTC)
    rows, seen = [], set()
    for key, purchase_id, created_at, amount, refunded, currency in held:
        stripe_id = key.split(":")[1]
        if stripe_id in seen:
            continue
        seen.add(stripe_id)
        rows.append(
            {
                "purchase_id": purchase_id,
                "stripe_dispute_id": stripe_id,
                "amount_cents": max(amount - refunded, 0),
                "currency": currency,
                "reason": "",
                # A released hold was a dispute won.
                "status": "won" if stripe_id in released else "needs_response",
                "opened_at": created_at,
                "closed_at": now if stripe_id in released else None,
                "updated_at": now,
            }
        )
    if rows:
        op.bulk_insert(disputes, rows)


def downgrade():
    with op.batch_alter_table("disputes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_disputes_purchase_id"))
    op.drop_table("disputes")
