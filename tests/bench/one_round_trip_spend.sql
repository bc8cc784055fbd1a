-- The benchmark's upper ceiling for a spend: the jobs API's business operation as one
-- round trip, a PL/pgSQL function. It exists only in the benchmark's scratch database
-- (ceilings.py creates it there); the portal never calls it. It does what a spend must:
-- lock the customer, check the account and the balance, find an earlier job by its
-- external id, insert the job, take credits from the oldest lots first with one
-- allocation each, write the entry with its balance, keep the running totals and the
-- day's closing balance. It leaves out what the portal also decides under the lock (the
-- low-balance alert and the auto-recharge flag), as the issue's own measurement did.
CREATE OR REPLACE FUNCTION bench_spend(
    p_email text, p_external_id text, p_operation text, p_credits integer
) RETURNS TABLE (job_id integer, balance_after integer)
LANGUAGE plpgsql AS $$
DECLARE
    account users%ROWTYPE;
    moment timestamptz := now();
    new_job integer;
    new_entry integer;
    still_needed integer := p_credits;
    taken integer;
    lot record;
BEGIN
    SELECT * INTO account FROM users WHERE email = p_email FOR UPDATE;
    IF NOT FOUND OR account.role <> 'customer' OR account.status = 'closed' THEN
        RAISE EXCEPTION 'no customer with this e-mail';
    END IF;
    IF account.status = 'terminated' THEN
        RAISE EXCEPTION 'the customer''s account is terminated';
    END IF;
    SELECT id INTO new_job FROM jobs WHERE external_id = p_external_id;
    IF FOUND THEN
        RETURN QUERY SELECT new_job, account.credits_balance;
        RETURN;
    END IF;
    IF account.credits_balance < p_credits THEN
        RAISE EXCEPTION 'insufficient credits';
    END IF;
    INSERT INTO jobs (user_id, external_id, operation, credits, status, credits_restored,
                      created_at)
        VALUES (account.id, p_external_id, p_operation, p_credits, 'running', false, moment)
        RETURNING id INTO new_job;
    INSERT INTO ledger_entries (user_id, kind, credits, balance_after, job_id,
                                idempotency_key, memo, created_at)
        VALUES (account.id, 'job_charge', -p_credits, account.credits_balance - p_credits,
                new_job, 'job:' || new_job || ':charge', p_operation, moment)
        RETURNING id INTO new_entry;
    FOR lot IN
        SELECT id, credits_remaining FROM credit_lots
        WHERE user_id = account.id AND credits_remaining > 0
        ORDER BY created_at, id
    LOOP
        taken := least(lot.credits_remaining, still_needed);
        UPDATE credit_lots SET credits_remaining = credits_remaining - taken WHERE id = lot.id;
        INSERT INTO lot_allocations (ledger_entry_id, lot_id, credits)
            VALUES (new_entry, lot.id, -taken);
        still_needed := still_needed - taken;
        EXIT WHEN still_needed = 0;
    END LOOP;
    IF still_needed > 0 THEN
        RAISE EXCEPTION 'account %: lots hold less than the balance', account.id;
    END IF;
    UPDATE users SET credits_balance = credits_balance - p_credits,
                     credits_used = credits_used + p_credits
        WHERE id = account.id;
    INSERT INTO day_end_balances (user_id, day, balance)
        VALUES (account.id, (moment AT TIME ZONE 'UTC')::date,
                account.credits_balance - p_credits)
        ON CONFLICT (user_id, day) DO UPDATE SET balance = excluded.balance;
    RETURN QUERY SELECT new_job, account.credits_balance - p_credits;
END;
$$;
