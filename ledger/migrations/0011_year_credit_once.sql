-- The school year's programme credit is made once per beneficiary and school year, whichever of
-- its two paths comes first:
--   - the bulk reload (0007), reference bulk_reload_reference(Y, beneficiary id);
--   - the manual reload without an explicit reference (`hdfpay reload DOSSIER AMOUNT`,
--     ledger.reload.reload_wallet), reference manual_year_credit_reference(Y, dossier number),
--     "one reload per student and year".
-- Until now neither saw the other, so a student reloaded by hand and then by the bulk run (or the
-- other way round) was credited twice. Now:
--   - bulk_reload_chunk() skips a beneficiary whose wallet for the year already received the
--     manual year's credit (counted in beneficiaries_seen, not in wallets_credited, as one the
--     bulk itself credited in an earlier run);
--   - reload_wallet() with the year's-credit reference (or NULL, which now means it) refuses when
--     the bulk reload already credited that beneficiary for the year.
-- A manual reload with any other reference is a deliberate extra credit (a correction): it
-- neither blocks the bulk reload nor is blocked by it. Such a reference may not begin 'reload:'
-- or 'bulk:' (the names of year's credits), unless it is the beneficiary's own year's credit.
-- Both paths lock the beneficiary's row (FOR UPDATE) and look for the other's transfer in a
-- statement after that lock (READ COMMITTED: a new snapshot per statement), so two concurrent
-- sessions cannot both credit.

-- The reference of the manual year's credit. ledger/reload.py passes NULL for it.
CREATE FUNCTION manual_year_credit_reference(p_school_year integer, p_dossier_number text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT 'reload:' || p_school_year || ':' || p_dossier_number
$$;

-- Manual reloads are few beside the bulk's and the purchases: this partial index holds only the
-- RELOAD references that begin 'reload:', in byte order (text_pattern_ops), so that a school
-- year's manual credits are one short range scan whatever the database's collation, and the bulk
-- reload does not probe the journal once per beneficiary.
CREATE INDEX transfers_manual_reloads ON transfers (reference text_pattern_ops)
    WHERE code = 'RELOAD' AND reference LIKE 'reload:%';

-- The beneficiaries with an id in (p_after_id, p_upto_id] (a bulk chunk) whose wallet for
-- p_school_year received their year's credit from a manual reload.
CREATE FUNCTION manual_year_credited(p_school_year integer, p_after_id bigint, p_upto_id bigint)
RETURNS TABLE (beneficiary_id bigint) LANGUAGE sql STABLE AS $$
    SELECT b.id FROM transfers t
      JOIN beneficiaries b
        ON b.dossier_number = substr(t.reference, length(manual_year_credit_reference(p_school_year, '')) + 1)
      JOIN wallets w
        ON w.beneficiary_id = b.id AND w.school_year = p_school_year AND w.account_id = t.credit_account_id
     WHERE t.code = 'RELOAD' AND t.reference LIKE 'reload:%'
       AND t.reference ~>=~ manual_year_credit_reference(p_school_year, '')
       AND t.reference ~<~ ('reload:' || p_school_year || ';')       -- ';' follows ':'
       AND t.reference = manual_year_credit_reference(p_school_year, b.dossier_number)
       AND b.id > p_after_id AND b.id <= p_upto_id
$$;

-- As in 0003, and: p_reference NULL means the year's credit; the year's credit is refused when the
-- bulk reload already made it.
CREATE OR REPLACE FUNCTION reload_wallet(
    p_beneficiary_id bigint, p_school_year integer, p_amount_cents bigint, p_reference text,
    OUT credited_cents bigint, OUT fee_recovered_cents bigint, OUT balance_cents bigint,
    OUT already_done boolean
) LANGUAGE plpgsql AS $$
DECLARE
    v_wallet    bigint;
    v_funding   bigint;
    v_fee_income bigint;
    v_fee       record;
    v_take      bigint;
    v_previous  record;
    v_dossier   text;
    v_year_credit text;
    v_reference text;
    v_bulk      record;
BEGIN
    IF p_amount_cents <= 0 THEN
        RAISE EXCEPTION 'a reload amount must be positive (got % cents)', p_amount_cents
            USING ERRCODE = 'check_violation';
    END IF;
    -- Money put in a wallet whose window has closed (1 May) could never be spent.
    IF business_now() AT TIME ZONE 'Europe/Paris' >= make_timestamp(p_school_year + 1, 5, 1, 0, 0, 0) THEN
        RAISE EXCEPTION 'the wallet of school year %-% closed on 1 May %: reload the next school year',
            p_school_year, p_school_year + 1, p_school_year + 1 USING ERRCODE = 'check_violation';
    END IF;
    -- One reload at a time per beneficiary: wallet creation and fee recovery do not race, and
    -- the bulk reload (which takes the same lock) is seen by the statements below.
    SELECT dossier_number INTO v_dossier FROM beneficiaries WHERE id = p_beneficiary_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown beneficiary %', p_beneficiary_id USING ERRCODE = 'no_data_found';
    END IF;
    v_year_credit := manual_year_credit_reference(p_school_year, v_dossier);
    v_reference := coalesce(p_reference, v_year_credit);

    v_wallet := open_wallet(p_beneficiary_id, p_school_year);
    credited_cents := 0;
    fee_recovered_cents := 0;
    SELECT credit_account_id, amount_cents INTO v_previous FROM transfers
     WHERE code = 'RELOAD' AND reference = v_reference;
    already_done := FOUND;
    IF already_done AND (v_previous.credit_account_id <> v_wallet
                         OR v_previous.amount_cents <> p_amount_cents) THEN
        RAISE EXCEPTION 'reload reference % was already used for another wallet or amount', v_reference
            USING ERRCODE = 'unique_violation';
    END IF;
    -- The year's-credit and bulk references name a beneficiary and a year: an explicit reference
    -- may not borrow them (another student's year's credit, a bulk credit), or the paths above
    -- would be misled.
    IF NOT already_done AND v_reference <> v_year_credit
       AND (v_reference LIKE 'reload:%' OR v_reference LIKE 'bulk:%') THEN
        RAISE EXCEPTION 'reload references beginning ''reload:'' or ''bulk:'' are reserved for the year''s credit (got %)', v_reference
            USING ERRCODE = 'check_violation';
    END IF;
    IF NOT already_done AND v_reference = v_year_credit THEN
        SELECT amount_cents, created_at INTO v_bulk FROM transfers
         WHERE code = 'RELOAD' AND reference = bulk_reload_reference(p_school_year, p_beneficiary_id);
        IF FOUND THEN
            RAISE EXCEPTION 'dossier % already received its %-% credit from the bulk reload (% EUR on %): the year''s credit is made once; an extra credit (a correction) needs an explicit reference',
                v_dossier, p_school_year, p_school_year + 1,
                (v_bulk.amount_cents / 100) || '.' || lpad((v_bulk.amount_cents % 100)::text, 2, '0'),
                (v_bulk.created_at AT TIME ZONE 'Europe/Paris')::date
                USING ERRCODE = 'unique_violation';
        END IF;
    END IF;
    IF NOT already_done THEN
        SELECT id INTO v_funding FROM accounts WHERE kind = 'REGION_FUNDING';
        SELECT id INTO v_fee_income FROM accounts WHERE kind = 'FEE_INCOME';
        INSERT INTO transfers (code, debit_account_id, credit_account_id, amount_cents, reference)
        VALUES ('RELOAD', v_funding, v_wallet, p_amount_cents, v_reference);
        UPDATE accounts SET credits_posted = credits_posted + p_amount_cents WHERE id = v_wallet;
        credited_cents := p_amount_cents;

        FOR v_fee IN SELECT id, amount_cents - recovered_cents AS open_cents FROM pending_fees
                      WHERE beneficiary_id = p_beneficiary_id AND recovered_cents < amount_cents
                      ORDER BY created_at, id FOR UPDATE
        LOOP
            v_take := least(v_fee.open_cents, p_amount_cents - fee_recovered_cents);
            EXIT WHEN v_take <= 0;
            INSERT INTO transfers (code, debit_account_id, credit_account_id, amount_cents, reference)
            VALUES ('REPLACEMENT_FEE', v_wallet, v_fee_income, v_take, 'pending-fee:' || v_fee.id);
            UPDATE accounts SET debits_posted = debits_posted + v_take WHERE id = v_wallet;
            UPDATE pending_fees SET recovered_cents = recovered_cents + v_take WHERE id = v_fee.id;
            fee_recovered_cents := fee_recovered_cents + v_take;
        END LOOP;
    END IF;
    SELECT credits_posted - debits_posted INTO balance_cents FROM accounts WHERE id = v_wallet;
END $$;

-- As in 0007, and: a beneficiary whose year's credit a manual reload already made is skipped,
-- both when the chunk's to-do list is drawn and again once its beneficiaries are locked.
CREATE OR REPLACE FUNCTION bulk_reload_chunk(
    p_run_id bigint, p_chunk_rows integer, p_actor text,
    OUT beneficiaries_seen bigint, OUT wallets_credited bigint, OUT wallets_opened bigint,
    OUT credited_cents bigint, OUT fee_recovered_cents bigint, OUT finished boolean
) LANGUAGE plpgsql AS $$
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
        RAISE EXCEPTION 'the wallets of school year %-% closed on 1 May %: nothing can be reloaded',
            r.school_year, r.school_year + 1, r.school_year + 1 USING ERRCODE = 'check_violation';
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
    -- Nor those whose year's credit a manual reload already made (0011). OFFSET 0 keeps the
    -- query above planned as in 0007.
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
