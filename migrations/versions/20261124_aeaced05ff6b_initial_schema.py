"""initial schema

Revision ID: aeaced05ff6b
Revises: 
Created: 2026-11-24 23:21:11.132227
"""

import sqlalchemy as sa
from alembic import op

revision = 'aeaced05ff6b'
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('outbox_emails',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('to_address', sa.String(length=254), nullable=False),
    sa.Column('subject', sa.String(length=255), nullable=False),
    sa.Column('body_text', sa.Text(), nullable=False),
    sa.Column('status', sa.Enum('pending', 'sent', 'failed', name='outboxstatus', native_enum=False, create_constraint=True), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint('attempts >= 0', name=op.f('ck_outbox_emails_attempts_not_negative')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox_emails'))
    )
    with op.batch_alter_table('outbox_emails', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_emails_due', ['status', 'next_attempt_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_outbox_emails_to_address'), ['to_address'], unique=False)

    op.create_table('stripe_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('stripe_event_id', sa.String(length=255), nullable=False),
    sa.Column('type', sa.String(length=100), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('processed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('outcome', sa.String(length=255), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_stripe_events')),
    sa.UniqueConstraint('stripe_event_id', name=op.f('uq_stripe_events_stripe_event_id'))
    )
    with op.batch_alter_table('stripe_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_stripe_events_type'), ['type'], unique=False)

    op.create_table('users',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('email', sa.String(length=254), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('role', sa.Enum('customer', 'staff', name='role', native_enum=False, create_constraint=True), nullable=False),
    sa.Column('status', sa.Enum('active', 'terminated', name='accountstatus', native_enum=False, create_constraint=True), nullable=False),
    sa.Column('terminated_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('termination_reason', sa.Text(), nullable=True),
    sa.Column('credits_balance', sa.Integer(), nullable=False),
    sa.Column('timezone', sa.String(length=64), nullable=False),
    sa.Column('stripe_customer_id', sa.String(length=255), nullable=True),
    sa.Column('session_generation', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_login_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint('credits_balance >= 0', name=op.f('ck_users_balance_not_negative')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('email', name=op.f('uq_users_email')),
    sa.UniqueConstraint('stripe_customer_id', name=op.f('uq_users_stripe_customer_id'))
    )
    op.create_table('audit_log',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('actor_id', sa.Integer(), nullable=True),
    sa.Column('action', sa.String(length=100), nullable=False),
    sa.Column('target_type', sa.String(length=50), nullable=False),
    sa.Column('target_id', sa.Integer(), nullable=True),
    sa.Column('ip_address', sa.String(length=45), nullable=True),
    sa.Column('before', sa.JSON(), nullable=True),
    sa.Column('after', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['actor_id'], ['users.id'], name=op.f('fk_audit_log_actor_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_log'))
    )
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_log_action'), ['action'], unique=False)
        batch_op.create_index('ix_audit_log_actor_created', ['actor_id', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_log_created_at'), ['created_at'], unique=False)
        batch_op.create_index('ix_audit_log_target', ['target_type', 'target_id'], unique=False)

    op.create_table('incidents',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('title', sa.String(length=200), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('created_by_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('ended_at IS NULL OR ended_at >= started_at', name=op.f('ck_incidents_ends_after_start')),
    sa.ForeignKeyConstraint(['created_by_id'], ['users.id'], name=op.f('fk_incidents_created_by_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_incidents'))
    )
    with op.batch_alter_table('incidents', schema=None) as batch_op:
        batch_op.create_index('ix_incidents_started', ['started_at'], unique=False)

    op.create_table('jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('external_id', sa.String(length=255), nullable=False),
    sa.Column('operation', sa.String(length=100), nullable=False),
    sa.Column('credits', sa.Integer(), nullable=False),
    sa.Column('status', sa.Enum('running', 'succeeded', 'failed', name='jobstatus', native_enum=False, create_constraint=True), nullable=False),
    sa.Column('failure_reason', sa.Enum('platform_error', 'invalid_input', name='failurereason', native_enum=False, create_constraint=True), nullable=True),
    sa.Column('failure_detail', sa.Text(), nullable=True),
    sa.Column('credits_restored', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint('credits > 0', name=op.f('ck_jobs_credits_positive')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_jobs_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs')),
    sa.UniqueConstraint('external_id', name=op.f('uq_jobs_external_id'))
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_user_id_desc', ['user_id', 'id'], unique=False)

    op.create_table('password_reset_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_password_reset_tokens_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_password_reset_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_password_reset_tokens_token_hash'))
    )
    with op.batch_alter_table('password_reset_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_password_reset_tokens_user_id'), ['user_id'], unique=False)

    op.create_table('purchases',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('package_code', sa.String(length=32), nullable=False),
    sa.Column('credits', sa.Integer(), nullable=False),
    sa.Column('amount_cents', sa.Integer(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('status', sa.Enum('pending', 'paid', 'credited', 'failed', 'expired', 'refunded', 'partially_refunded', 'disputed', name='purchasestatus', native_enum=False, create_constraint=True), nullable=False),
    sa.Column('stripe_checkout_session_id', sa.String(length=255), nullable=True),
    sa.Column('stripe_payment_intent_id', sa.String(length=255), nullable=True),
    sa.Column('stripe_charge_id', sa.String(length=255), nullable=True),
    sa.Column('receipt_url', sa.Text(), nullable=True),
    sa.Column('refunded_cents', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('paid_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('credited_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint('amount_cents >= 0', name=op.f('ck_purchases_amount_not_negative')),
    sa.CheckConstraint('credits > 0', name=op.f('ck_purchases_credits_positive')),
    sa.CheckConstraint('refunded_cents >= 0 AND refunded_cents <= amount_cents', name=op.f('ck_purchases_refunded_within_amount')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_purchases_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_purchases')),
    sa.UniqueConstraint('stripe_charge_id', name=op.f('uq_purchases_stripe_charge_id')),
    sa.UniqueConstraint('stripe_checkout_session_id', name=op.f('uq_purchases_stripe_checkout_session_id')),
    sa.UniqueConstraint('stripe_payment_intent_id', name=op.f('uq_purchases_stripe_payment_intent_id'))
    )
    with op.batch_alter_table('purchases', schema=None) as batch_op:
        batch_op.create_index('ix_purchases_user_created', ['user_id', 'created_at'], unique=False)

    op.create_table('credit_lots',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('origin', sa.Enum('purchase', 'grant', name='lotorigin', native_enum=False, create_constraint=True), nullable=False),
    sa.Column('purchase_id', sa.Integer(), nullable=True),
    sa.Column('credits_granted', sa.Integer(), nullable=False),
    sa.Column('credits_remaining', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('credits_granted > 0', name=op.f('ck_credit_lots_granted_positive')),
    sa.CheckConstraint('credits_remaining >= 0 AND credits_remaining <= credits_granted', name=op.f('ck_credit_lots_remaining_within_granted')),
    sa.ForeignKeyConstraint(['purchase_id'], ['purchases.id'], name=op.f('fk_credit_lots_purchase_id_purchases')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_credit_lots_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_credit_lots')),
    sa.UniqueConstraint('purchase_id', name=op.f('uq_credit_lots_purchase_id'))
    )
    with op.batch_alter_table('credit_lots', schema=None) as batch_op:
        batch_op.create_index('ix_credit_lots_user_fifo', ['user_id', 'created_at', 'id'], unique=False)

    op.create_table('refund_requests',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('purchase_id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('reason', sa.Enum('credits_not_added', 'charged_twice', 'service_unavailable', 'job_failed', 'not_happy', 'other', name='requestreason', native_enum=False, create_constraint=True), nullable=False),
    sa.Column('details', sa.Text(), nullable=False),
    sa.Column('transaction_ids', sa.String(length=500), nullable=False),
    sa.Column('status', sa.Enum('open', 'in_review', 'waiting_on_customer', 'approved', 'denied', 'resolved_automatically', 'closed', name='requeststatus', native_enum=False, create_constraint=True), nullable=False),
    sa.Column('verdict', sa.Enum('likely_eligible', 'likely_ineligible', 'needs_review', 'resolved_automatically', name='verdict', native_enum=False, create_constraint=True), nullable=False),
    sa.Column('precheck', sa.JSON(), nullable=False),
    sa.Column('recommended_cents', sa.Integer(), nullable=False),
    sa.Column('recommended_credits', sa.Integer(), nullable=False),
    sa.Column('assignee_id', sa.Integer(), nullable=True),
    sa.Column('due_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('clock_paused_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('decision_reason', sa.Text(), nullable=True),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('decided_by_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('recommended_cents >= 0', name=op.f('ck_refund_requests_recommended_cents_not_negative')),
    sa.CheckConstraint('recommended_credits >= 0', name=op.f('ck_refund_requests_recommended_credits_not_negative')),
    sa.ForeignKeyConstraint(['assignee_id'], ['users.id'], name=op.f('fk_refund_requests_assignee_id_users')),
    sa.ForeignKeyConstraint(['decided_by_id'], ['users.id'], name=op.f('fk_refund_requests_decided_by_id_users')),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_refund_requests_job_id_jobs')),
    sa.ForeignKeyConstraint(['purchase_id'], ['purchases.id'], name=op.f('fk_refund_requests_purchase_id_purchases')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_refund_requests_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_refund_requests'))
    )
    with op.batch_alter_table('refund_requests', schema=None) as batch_op:
        batch_op.create_index('ix_refund_requests_assignee_status', ['assignee_id', 'status', 'due_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_refund_requests_purchase_id'), ['purchase_id'], unique=False)
        batch_op.create_index('ix_refund_requests_status_due', ['status', 'due_at', 'id'], unique=False)
        batch_op.create_index('ix_refund_requests_user_created', ['user_id', 'created_at'], unique=False)

    op.create_table('attachments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('request_id', sa.Integer(), nullable=False),
    sa.Column('filename', sa.String(length=255), nullable=False),
    sa.Column('content_type', sa.String(length=50), nullable=False),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('storage_key', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('size_bytes > 0', name=op.f('ck_attachments_size_positive')),
    sa.ForeignKeyConstraint(['request_id'], ['refund_requests.id'], name=op.f('fk_attachments_request_id_refund_requests')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_attachments')),
    sa.UniqueConstraint('storage_key', name=op.f('uq_attachments_storage_key'))
    )
    with op.batch_alter_table('attachments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_attachments_request_id'), ['request_id'], unique=False)

    op.create_table('refund_request_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('request_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=50), nullable=False),
    sa.Column('actor_id', sa.Integer(), nullable=True),
    sa.Column('visible_to_customer', sa.Boolean(), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['actor_id'], ['users.id'], name=op.f('fk_refund_request_events_actor_id_users')),
    sa.ForeignKeyConstraint(['request_id'], ['refund_requests.id'], name=op.f('fk_refund_request_events_request_id_refund_requests')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_refund_request_events'))
    )
    with op.batch_alter_table('refund_request_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_refund_request_events_request_id'), ['request_id'], unique=False)

    op.create_table('refunds',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('purchase_id', sa.Integer(), nullable=False),
    sa.Column('refund_request_id', sa.Integer(), nullable=True),
    sa.Column('amount_cents', sa.Integer(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('status', sa.Enum('scheduled', 'pending', 'requires_action', 'succeeded', 'failed', 'canceled', name='refundstatus', native_enum=False, create_constraint=True), nullable=False),
    sa.Column('reason', sa.String(length=32), nullable=False),
    sa.Column('stripe_refund_id', sa.String(length=255), nullable=True),
    sa.Column('idempotency_key', sa.String(length=255), nullable=False),
    sa.Column('failure_reason', sa.Text(), nullable=True),
    sa.Column('scheduled_for', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('amount_cents > 0', name=op.f('ck_refunds_amount_positive')),
    sa.ForeignKeyConstraint(['purchase_id'], ['purchases.id'], name=op.f('fk_refunds_purchase_id_purchases')),
    sa.ForeignKeyConstraint(['refund_request_id'], ['refund_requests.id'], name=op.f('fk_refunds_refund_request_id_refund_requests')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_refunds')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_refunds_idempotency_key')),
    sa.UniqueConstraint('stripe_refund_id', name=op.f('uq_refunds_stripe_refund_id'))
    )
    with op.batch_alter_table('refunds', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_refunds_purchase_id'), ['purchase_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_refunds_refund_request_id'), ['refund_request_id'], unique=False)

    op.create_table('ledger_entries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.Enum('purchase_credit', 'job_charge', 'job_refund', 'refund_claw_back', 'claw_back_reversal', 'grant', 'adjustment', name='entrykind', native_enum=False, create_constraint=True), nullable=False),
    sa.Column('credits', sa.Integer(), nullable=False),
    sa.Column('balance_after', sa.Integer(), nullable=False),
    sa.Column('purchase_id', sa.Integer(), nullable=True),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('refund_id', sa.Integer(), nullable=True),
    sa.Column('idempotency_key', sa.String(length=255), nullable=False),
    sa.Column('memo', sa.String(length=500), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('balance_after >= 0', name=op.f('ck_ledger_entries_balance_after_not_negative')),
    sa.CheckConstraint('credits <> 0', name=op.f('ck_ledger_entries_credits_not_zero')),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_ledger_entries_job_id_jobs')),
    sa.ForeignKeyConstraint(['purchase_id'], ['purchases.id'], name=op.f('fk_ledger_entries_purchase_id_purchases')),
    sa.ForeignKeyConstraint(['refund_id'], ['refunds.id'], name=op.f('fk_ledger_entries_refund_id_refunds')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_ledger_entries_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ledger_entries')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_ledger_entries_idempotency_key'))
    )
    with op.batch_alter_table('ledger_entries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ledger_entries_job_id'), ['job_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_ledger_entries_purchase_id'), ['purchase_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_ledger_entries_refund_id'), ['refund_id'], unique=False)
        batch_op.create_index('ix_ledger_entries_user_id_desc', ['user_id', 'id'], unique=False)
        batch_op.create_index('ix_ledger_entries_user_kind', ['user_id', 'kind', 'id'], unique=False)

    op.create_table('lot_allocations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('ledger_entry_id', sa.Integer(), nullable=False),
    sa.Column('lot_id', sa.Integer(), nullable=False),
    sa.Column('credits', sa.Integer(), nullable=False),
    sa.CheckConstraint('credits <> 0', name=op.f('ck_lot_allocations_credits_not_zero')),
    sa.ForeignKeyConstraint(['ledger_entry_id'], ['ledger_entries.id'], name=op.f('fk_lot_allocations_ledger_entry_id_ledger_entries')),
    sa.ForeignKeyConstraint(['lot_id'], ['credit_lots.id'], name=op.f('fk_lot_allocations_lot_id_credit_lots')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_lot_allocations'))
    )
    with op.batch_alter_table('lot_allocations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_lot_allocations_ledger_entry_id'), ['ledger_entry_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_lot_allocations_lot_id'), ['lot_id'], unique=False)



def downgrade():
    with op.batch_alter_table('lot_allocations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_lot_allocations_lot_id'))
        batch_op.drop_index(batch_op.f('ix_lot_allocations_ledger_entry_id'))

    op.drop_table('lot_allocations')
    with op.batch_alter_table('ledger_entries', schema=None) as batch_op:
        batch_op.drop_index('ix_ledger_entries_user_kind')
        batch_op.drop_index('ix_ledger_entries_user_id_desc')
        batch_op.drop_index(batch_op.f('ix_ledger_entries_refund_id'))
        batch_op.drop_index(batch_op.f('ix_ledger_entries_purchase_id'))
        batch_op.drop_index(batch_op.f('ix_ledger_entries_job_id'))

    op.drop_table('ledger_entries')
    with op.batch_alter_table('refunds', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_refunds_refund_request_id'))
        batch_op.drop_index(batch_op.f('ix_refunds_purchase_id'))

    op.drop_table('refunds')
    with op.batch_alter_table('refund_request_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_refund_request_events_request_id'))

    op.drop_table('refund_request_events')
    with op.batch_alter_table('attachments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_attachments_request_id'))

    op.drop_table('attachments')
    with op.batch_alter_table('refund_requests', schema=None) as batch_op:
        batch_op.drop_index('ix_refund_requests_user_created')
        batch_op.drop_index('ix_refund_requests_status_due')
        batch_op.drop_index(batch_op.f('ix_refund_requests_purchase_id'))
        batch_op.drop_index('ix_refund_requests_assignee_status')

    op.drop_table('refund_requests')
    with op.batch_alter_table('credit_lots', schema=None) as batch_op:
        batch_op.drop_index('ix_credit_lots_user_fifo')

    op.drop_table('credit_lots')
    with op.batch_alter_table('purchases', schema=None) as batch_op:
        batch_op.drop_index('ix_purchases_user_created')

    op.drop_table('purchases')
    with op.batch_alter_table('password_reset_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_password_reset_tokens_user_id'))

    op.drop_table('password_reset_tokens')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_user_id_desc')

    op.drop_table('jobs')
    with op.batch_alter_table('incidents', schema=None) as batch_op:
        batch_op.drop_index('ix_incidents_started')

    op.drop_table('incidents')
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_log_target')
        batch_op.drop_index(batch_op.f('ix_audit_log_created_at'))
        batch_op.drop_index('ix_audit_log_actor_created')
        batch_op.drop_index(batch_op.f('ix_audit_log_action'))

    op.drop_table('audit_log')
    op.drop_table('users')
    with op.batch_alter_table('stripe_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_stripe_events_type'))

    op.drop_table('stripe_events')
    with op.batch_alter_table('outbox_emails', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbox_emails_to_address'))
        batch_op.drop_index('ix_outbox_emails_due')

    op.drop_table('outbox_emails')
