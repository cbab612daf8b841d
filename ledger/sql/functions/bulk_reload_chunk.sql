-- One chunk of a run, in the caller's transaction (one round trip, set-based): the next
-- p_chunk_rows beneficiaries with rights after the run's cursor, those not yet credited this year
-- locked as reload_wallet() locks them, wallets opened where missing, RELOAD transfers, pending
-- fees recovered oldest first from what was credited, totals posted, the cursor moved. When no
-- beneficiary is left the run is finished and audited.
--
-- The year's credit is made once per beneficiary and school year (see reload_wallet.sql): a
-- beneficiary whose year's credit a manual reload already made is skipped, both when the chunk's
-- to-do list is drawn and again once its beneficiaries are locked (counted in beneficiaries_seen,
-- not in wallets_credited, as one the bulk itself credited in an earlier run).
CREATE OR REPLACE FUNCTION bulk_reload_chunk(
    p_run_id bigint, p_chunk_rows integer, p_actor text,
    OUT beneficiaries_seen bigint, OUT wallets_credited bigint, OUT wallets_opened bigint,
    OUT credited_cents bigint, OUT fee_recovered_cents bigint, OUT finished boolean
) LANGUAGE plpgsql
-- Runs as hdfpay_owner for the roles granted EXECUTE (ledger/sql/privileges.sql).
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    r            bulk_reload_runs;
    v_now        timestamptz := business_now();
    v_upto       bigint;
    v_funding    bigint;
    v_fee_income bigint;
    v_without    bigint;
BEGIN
    beneficiaries_seen := 0; wallets_credited := 0; wallets_opened := 0;
    credited_cents := 0; fee_recovered_cents := 0;
    -- The run's row lock: two processes never work on one run at once.
    SELECT * INTO r FROM bulk_reload_runs WHERE id = p_run_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no bulk reload run %', p_run_id USING ERRCODE = 'no_data_found';
    END IF;
    finished := r.finished_at IS NOT NULL;
    IF finished THEN
        RETURN;
    END IF;
    IF v_now >= wallet_closes_at(r.school_year) THEN
        RAISE EXCEPTION 'the wallets of school year %-% closed on %: nothing can be reloaded',
            r.school_year, r.school_year + 1, business_time_text(wallet_closes_at(r.school_year))
            USING ERRCODE = 'check_violation';
    END IF;

    SELECT max(beneficiary_id), count(*) INTO v_upto, beneficiaries_seen FROM (
        SELECT beneficiary_id FROM rights
         WHERE school_year = r.school_year AND beneficiary_id > r.after_beneficiary_id
         ORDER BY beneficiary_id LIMIT p_chunk_rows) chunk;
    IF v_upto IS NULL THEN
        UPDATE bulk_reload_runs SET finished_at = v_now WHERE id = p_run_id RETURNING * INTO r;
        PERFORM append_audit(p_actor, 'reload.bulk_finish', 'school_year:' || r.school_year,
            NULL, jsonb_build_object('run', r.id, 'wallets_credited', r.wallets_credited,
                'wallets_opened', r.wallets_opened, 'credited_cents', r.credited_cents,
                'fee_recovered_cents', r.fee_recovered_cents, 'without_amount', r.without_amount,
                'beneficiaries_seen', r.beneficiaries_seen));
        finished := true;
        RETURN;
    END IF;

    -- Who is still to credit in this range; only they are locked (as reload_wallet() locks
    -- them), so that a repeated run writes nothing. No other run of the year can credit them
    -- meanwhile (the run's row lock, one open run per year).
    CREATE TEMP TABLE bulk_todo ON COMMIT DROP AS
    SELECT todo.* FROM (
        SELECT rt.beneficiary_id, (r.amounts ->> rt.programme)::bigint AS amount_cents,
               bulk_reload_reference(r.school_year, rt.beneficiary_id) AS reference
          FROM rights rt
         WHERE rt.school_year = r.school_year
           AND rt.beneficiary_id > r.after_beneficiary_id AND rt.beneficiary_id <= v_upto
           AND r.amounts ? rt.programme
           AND NOT EXISTS (SELECT 1 FROM transfers t WHERE t.code = 'RELOAD'
                              AND t.reference = bulk_reload_reference(r.school_year, rt.beneficiary_id)
                              -- the same, as a range the planner can read from the index
                              AND t.reference > bulk_reload_reference(r.school_year, r.after_beneficiary_id)
                              AND t.reference <= bulk_reload_reference(r.school_year, v_upto))
        OFFSET 0) todo
    -- Nor those whose year's credit a manual reload already made. OFFSET 0 keeps the query above
    -- planned on its own (the reference range scan of transfers_reload_once).
     WHERE todo.beneficiary_id NOT IN (
            SELECT beneficiary_id FROM manual_year_credited(r.school_year, r.after_beneficiary_id, v_upto));
    ANALYZE bulk_todo;
    SELECT count(*) INTO v_without FROM rights rt
     WHERE rt.school_year = r.school_year
       AND rt.beneficiary_id > r.after_beneficiary_id AND rt.beneficiary_id <= v_upto
       AND NOT r.amounts ? rt.programme;
    -- Lock, then read wallets and fees: what a reload_wallet() or a card replacement committed
    -- before these locks is seen below, and none of them can change it until this commit.
    PERFORM 1 FROM beneficiaries WHERE id IN (SELECT beneficiary_id FROM bulk_todo) ORDER BY id FOR UPDATE;
    -- A manual year's credit that committed between bulk_todo and these locks (reload_wallet()
    -- takes the same lock): this statement's snapshot sees it; the beneficiary is skipped.
    DELETE FROM bulk_todo WHERE beneficiary_id IN (
        SELECT beneficiary_id FROM manual_year_credited(r.school_year, r.after_beneficiary_id, v_upto));
    PERFORM 1 FROM pending_fees
     WHERE beneficiary_id IN (SELECT beneficiary_id FROM bulk_todo) AND recovered_cents < amount_cents
     ORDER BY id FOR UPDATE;

    CREATE TEMP TABLE bulk_chunk ON COMMIT DROP AS
    SELECT c.beneficiary_id, c.amount_cents, c.reference, w.account_id IS NULL AS is_new,
           coalesce(w.account_id, nextval(pg_get_serial_sequence('accounts', 'id'))) AS account_id
      FROM bulk_todo c
      LEFT JOIN wallets w ON w.beneficiary_id = c.beneficiary_id AND w.school_year = r.school_year;
    ANALYZE bulk_chunk;

    -- Pending fees, oldest first, each taking what the credit has left after the older ones.
    CREATE TEMP TABLE bulk_fee_takes ON COMMIT DROP AS
    SELECT fee_id, beneficiary_id, account_id, take_cents, created_at FROM (
        SELECT f.id AS fee_id, f.beneficiary_id, c.account_id, f.created_at,
               least(f.amount_cents - f.recovered_cents,
                     c.amount_cents - (sum(f.amount_cents - f.recovered_cents) OVER w
                                       - (f.amount_cents - f.recovered_cents))) AS take_cents
          FROM pending_fees f JOIN bulk_chunk c ON c.beneficiary_id = f.beneficiary_id
         WHERE f.recovered_cents < f.amount_cents
        WINDOW w AS (PARTITION BY f.beneficiary_id ORDER BY f.created_at, f.id)) fees
     WHERE take_cents > 0;
    ANALYZE bulk_fee_takes;

    SELECT id INTO v_funding FROM accounts WHERE kind = 'REGION_FUNDING';
    SELECT id INTO v_fee_income FROM accounts WHERE kind = 'FEE_INCOME';

    -- New wallets are born with their totals; existing ones are updated once each.
    WITH fees AS (SELECT beneficiary_id, sum(take_cents) AS cents FROM bulk_fee_takes GROUP BY 1)
    INSERT INTO accounts (id, kind, credits_posted, debits_posted) OVERRIDING SYSTEM VALUE
    SELECT c.account_id, 'WALLET', c.amount_cents, coalesce(f.cents, 0)
      FROM bulk_chunk c LEFT JOIN fees f ON f.beneficiary_id = c.beneficiary_id
     WHERE c.is_new;
    INSERT INTO wallets (beneficiary_id, school_year, account_id)
    SELECT beneficiary_id, r.school_year, account_id FROM bulk_chunk WHERE is_new;
    WITH fees AS (SELECT beneficiary_id, sum(take_cents) AS cents FROM bulk_fee_takes GROUP BY 1)
    UPDATE accounts a SET credits_posted = a.credits_posted + c.amount_cents,
                          debits_posted = a.debits_posted + coalesce(f.cents, 0)
      FROM bulk_chunk c LEFT JOIN fees f ON f.beneficiary_id = c.beneficiary_id
     WHERE a.id = c.account_id AND NOT c.is_new;

    INSERT INTO transfers (code, debit_account_id, credit_account_id, amount_cents, reference, created_at)
    SELECT 'RELOAD', v_funding, account_id, amount_cents, reference, v_now
      FROM bulk_chunk ORDER BY beneficiary_id;
    INSERT INTO transfers (code, debit_account_id, credit_account_id, amount_cents, reference, created_at)
    SELECT 'REPLACEMENT_FEE', account_id, v_fee_income, take_cents, 'pending-fee:' || fee_id, v_now
      FROM bulk_fee_takes ORDER BY beneficiary_id, created_at, fee_id;
    UPDATE pending_fees f SET recovered_cents = f.recovered_cents + t.take_cents
      FROM bulk_fee_takes t WHERE f.id = t.fee_id;

    SELECT count(*), count(*) FILTER (WHERE is_new), coalesce(sum(amount_cents), 0)
      INTO wallets_credited, wallets_opened, credited_cents FROM bulk_chunk;
    SELECT coalesce(sum(take_cents), 0) INTO fee_recovered_cents FROM bulk_fee_takes;
    UPDATE bulk_reload_runs SET
        after_beneficiary_id = v_upto,
        chunks_done = chunks_done + 1,
        beneficiaries_seen = bulk_reload_runs.beneficiaries_seen + bulk_reload_chunk.beneficiaries_seen,
        wallets_credited = bulk_reload_runs.wallets_credited + bulk_reload_chunk.wallets_credited,
        wallets_opened = bulk_reload_runs.wallets_opened + bulk_reload_chunk.wallets_opened,
        without_amount = bulk_reload_runs.without_amount + v_without,
        credited_cents = bulk_reload_runs.credited_cents + bulk_reload_chunk.credited_cents,
        fee_recovered_cents = bulk_reload_runs.fee_recovered_cents + bulk_reload_chunk.fee_recovered_cents
     WHERE id = p_run_id;
    DROP TABLE bulk_todo, bulk_chunk, bulk_fee_takes;
END $$;
