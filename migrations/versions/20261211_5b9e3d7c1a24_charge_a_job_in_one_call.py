"""charge a job in one call (PostgreSQL)

Revision ID: 5b9e3d7c1a24
Revises: 8d2f4b6a1c39
Created: 2026-12-11 09:00:00

The processing platform charges a job before every image job, and through the ORM-free
spend path that still took eight statements, each a round trip and a third of a
millisecond of the portal's CPU: the request cost several times what PostgreSQL needs for
the whole charge. On PostgreSQL the charge of one job is now one call of `charge_job`,
which decides and writes exactly as `portal.jobs.services._plan` and
`portal.ledger.services.spend_many` do (SQLite, which has no such functions, runs those):
the customer locked, the earlier job under the external id, the refusals, the oldest lots
first, the entry, its allocations, the account's balance and running total, the
low-balance alert's state and the auto-recharge flag, the day's closing balance.
tests/jobs/test_charge_in_one_call.py holds the two to the same answers and the same rows
over random histories. The low-balance e-mail stays in Python: the function says when it
is due (`alert_due`) and the caller queues it in the same transaction.

A later migration that changes one of these tables must replace the function too; the
PostgreSQL test run fails until it does.
"""

from alembic import op

revision = "5b9e3d7c1a24"
down_revision = "8d2f4b6a1c39"
branch_labels = None
depends_on = None

CHARGE_JOB = r"""
CREATE OR REPLACE FUNCTION charge_job(
    p_email text, p_external_id text, p_operation text, p_credits integer, p_at timestamptz,
    OUT outcome text, OUT balance_after integer, OUT low_balance_threshold integer,
    OUT alert_due boolean,
    OUT job_id integer, OUT job_user_id integer, OUT job_external_id text,
    OUT job_operation text, OUT job_credits integer, OUT job_status text,
    OUT job_failure_reason text, OUT job_failure_detail text,
    OUT job_credits_restored boolean, OUT job_created_at timestamptz,
    OUT job_finished_at timestamptz
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    account users%ROWTYPE;
    earlier jobs%ROWTYPE;
    new_job integer;
    new_entry integer;
    new_balance integer;
    armed boolean;
    still_needed integer := p_credits;
    taken integer;
    lot record;
BEGIN
    IF p_credits IS NULL OR p_credits <= 0 THEN
        RAISE EXCEPTION 'credits must be a positive number, not %', p_credits;
    END IF;
    alert_due := false;
    SELECT * INTO account FROM users WHERE email = p_email FOR UPDATE;
    -- Staff and closed accounts are no customers the platform may name.
    IF NOT FOUND OR account.role <> 'customer' OR account.status = 'closed' THEN
        outcome := 'not_found';
        RETURN;
    END IF;
    IF account.status = 'terminated' THEN
        outcome := 'terminated';
        RETURN;
    END IF;
    balance_after := account.credits_balance;
    low_balance_threshold := account.low_balance_threshold;

    SELECT * INTO earlier FROM jobs WHERE external_id = p_external_id;
    IF FOUND THEN
        IF earlier.user_id <> account.id OR earlier.operation <> p_operation
                OR earlier.credits <> p_credits THEN
            outcome := 'conflict';
            RETURN;
        END IF;
        outcome := 'repeat';
        SELECT earlier.id, earlier.user_id, earlier.external_id, earlier.operation,
               earlier.credits, earlier.status, earlier.failure_reason,
               earlier.failure_detail, earlier.credits_restored, earlier.created_at,
               earlier.finished_at
          INTO job_id, job_user_id, job_external_id, job_operation, job_credits,
               job_status, job_failure_reason, job_failure_detail, job_credits_restored,
               job_created_at, job_finished_at;
        RETURN;
    END IF;
    IF account.credits_balance < p_credits THEN
        outcome := 'insufficient';
        RETURN;
    END IF;

    -- A twin call (same customer, same external id) that committed while we waited for
    -- the lock was seen above: each statement here reads afresh. Another customer's job
    -- under this id, committed meanwhile, breaks the unique key here instead, and the
    -- caller answers from the committed job.
    INSERT INTO jobs (user_id, external_id, operation, credits, status, credits_restored,
                      created_at)
        VALUES (account.id, p_external_id, p_operation, p_credits, 'running', false, p_at)
        RETURNING id INTO new_job;
    new_balance := account.credits_balance - p_credits;
    INSERT INTO ledger_entries (user_id, kind, credits, balance_after, job_id,
                                idempotency_key, memo, created_at)
        VALUES (account.id, 'job_charge', -p_credits, new_balance, new_job,
                'job:' || new_job || ':charge', p_operation, p_at)
        RETURNING id INTO new_entry;
    FOR lot IN
        SELECT id, credits_remaining FROM credit_lots
         WHERE user_id = account.id AND credits_remaining > 0
         ORDER BY created_at, id
    LOOP
        taken := least(lot.credits_remaining, still_needed);
        UPDATE credit_lots SET credits_remaining = credits_remaining - taken
         WHERE id = lot.id;
        INSERT INTO lot_allocations (ledger_entry_id, lot_id, credits)
            VALUES (new_entry, lot.id, -taken);
        still_needed := still_needed - taken;
        EXIT WHEN still_needed = 0;
    END LOOP;
    IF still_needed > 0 THEN
        -- The balance said yes but the lots disagree: the books are broken, stop here.
        RAISE EXCEPTION 'account %: lots hold less than the balance', account.id;
    END IF;

    -- portal.ledger.alerts.watch_balance for a job charge: back at or above the
    -- threshold arms the alert; below it, an armed alert is sent (once) and disarmed.
    armed := account.low_balance_alert_armed;
    IF account.low_balance_threshold IS NOT NULL THEN
        IF new_balance >= account.low_balance_threshold THEN
            armed := true;
        ELSIF armed THEN
            armed := false;
            alert_due := true;
        END IF;
    END IF;
    -- portal.ledger.recharge_trigger.watch_for_recharge: below the threshold asks.
    UPDATE users
       SET credits_balance = new_balance,
           credits_used = credits_used + p_credits,
           low_balance_alert_armed = armed,
           auto_recharge_wanted = auto_recharge_wanted
               OR (auto_recharge_below IS NOT NULL AND new_balance < auto_recharge_below)
     WHERE id = account.id;
    INSERT INTO day_end_balances (user_id, day, balance)
        VALUES (account.id, (p_at AT TIME ZONE 'UTC')::date, new_balance)
        ON CONFLICT (user_id, day) DO UPDATE SET balance = excluded.balance;

    outcome := 'charged';
    balance_after := new_balance;
    job_id := new_job;
    job_user_id := account.id;
    job_external_id := p_external_id;
    job_operation := p_operation;
    job_credits := p_credits;
    job_status := 'running';
    job_credits_restored := false;
    job_created_at := p_at;
END;
$$
"""


def upgrade():
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        # Straight to the driver, in the migration's transaction: through SQLAlchemy the
        # body's colons (':charge') would be read as bound parameters and its % signs
        # (RAISE's placeholders) as the driver's.
        bind.connection.driver_connection.execute(CHARGE_JOB)


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION charge_job(text, text, text, integer, timestamptz)")
