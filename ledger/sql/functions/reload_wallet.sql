-- Reload: credit a beneficiary's wallet for a school year from the region's funding account,
-- then recover pending replacement fees from it, oldest first. Exactly once per reference: the
-- partial unique index transfers_reload_once turns a concurrent second run into an error, and a
-- sequential second run into already_done.
--
-- The school year's programme credit is made once per beneficiary and school year, whichever of
-- its two paths comes first:
--   - the bulk reload (bulk_reload_chunk()), reference bulk_reload_reference(Y, beneficiary id);
--   - the manual reload without an explicit reference (`hdfpay reload DOSSIER AMOUNT`,
--     ledger.reload.reload_wallet), reference manual_year_credit_reference(Y, dossier number):
--     p_reference NULL means it. It is refused when the bulk reload already credited that
--     beneficiary for the year.
-- A manual reload with any other reference is a deliberate extra credit (a correction): it
-- neither blocks the bulk reload nor is blocked by it. Such a reference may not begin 'reload:'
-- or 'bulk:' (the names of year's credits), unless it is the beneficiary's own year's credit.
-- Both paths lock the beneficiary's row (FOR UPDATE) and look for the other's transfer in a
-- statement after that lock (READ COMMITTED: a new snapshot per statement), so two concurrent
-- sessions cannot both credit.
CREATE OR REPLACE FUNCTION reload_wallet(
    p_beneficiary_id bigint, p_school_year integer, p_amount_cents bigint, p_reference text,
    OUT credited_cents bigint, OUT fee_recovered_cents bigint, OUT balance_cents bigint,
    OUT already_done boolean
) LANGUAGE plpgsql
-- Runs as hdfpay_owner for the roles granted EXECUTE (ledger/sql/privileges.sql).
SECURITY DEFINER SET search_path = public, pg_temp AS $$
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
    v_now       timestamptz := business_now();
BEGIN
    IF p_amount_cents <= 0 THEN
        RAISE EXCEPTION 'a reload amount must be positive (got % cents)', p_amount_cents
            USING ERRCODE = 'check_violation';
    END IF;
    -- Money put in a wallet that has closed could never be spent.
    IF v_now >= wallet_closes_at(p_school_year) THEN
        RAISE EXCEPTION 'the wallet of school year %-% closed on %: reload the next school year',
            p_school_year, p_school_year + 1, business_time_text(wallet_closes_at(p_school_year))
            USING ERRCODE = 'check_violation';
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
                business_day_of(v_bulk.created_at)
                USING ERRCODE = 'unique_violation';
        END IF;
    END IF;
    IF NOT already_done THEN
        SELECT id INTO v_funding FROM accounts WHERE kind = 'REGION_FUNDING';
        SELECT id INTO v_fee_income FROM accounts WHERE kind = 'FEE_INCOME';
        INSERT INTO transfers (code, debit_account_id, credit_account_id, amount_cents, reference, created_at)
        VALUES ('RELOAD', v_funding, v_wallet, p_amount_cents, v_reference, v_now);
        UPDATE accounts SET credits_posted = credits_posted + p_amount_cents WHERE id = v_wallet;
        credited_cents := p_amount_cents;

        FOR v_fee IN SELECT id, amount_cents - recovered_cents AS open_cents FROM pending_fees
                      WHERE beneficiary_id = p_beneficiary_id AND recovered_cents < amount_cents
                      ORDER BY created_at, id FOR UPDATE
        LOOP
            v_take := least(v_fee.open_cents, p_amount_cents - fee_recovered_cents);
            EXIT WHEN v_take <= 0;
            INSERT INTO transfers (code, debit_account_id, credit_account_id, amount_cents, reference, created_at)
            VALUES ('REPLACEMENT_FEE', v_wallet, v_fee_income, v_take, 'pending-fee:' || v_fee.id, v_now);
            UPDATE accounts SET debits_posted = debits_posted + v_take WHERE id = v_wallet;
            UPDATE pending_fees SET recovered_cents = recovered_cents + v_take WHERE id = v_fee.id;
            fee_recovered_cents := fee_recovered_cents + v_take;
        END LOOP;
    END IF;
    SELECT credits_posted - debits_posted INTO balance_cents FROM accounts WHERE id = v_wallet;
END $$;
