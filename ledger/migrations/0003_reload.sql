-- Reload: credit a beneficiary's wallet for a school year from the region's funding account,
-- then recover pending replacement fees from it, oldest first. Exactly once per reference: the
-- partial unique index transfers_reload_once turns a concurrent second run into an error, and a
-- sequential second run into already_done.

CREATE FUNCTION open_wallet(p_beneficiary_id bigint, p_school_year integer) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_account_id bigint;
BEGIN
    SELECT account_id INTO v_account_id FROM wallets
     WHERE beneficiary_id = p_beneficiary_id AND school_year = p_school_year;
    IF FOUND THEN
        RETURN v_account_id;
    END IF;
    INSERT INTO accounts (kind) VALUES ('WALLET') RETURNING id INTO v_account_id;
    INSERT INTO wallets (beneficiary_id, school_year, account_id)
    VALUES (p_beneficiary_id, p_school_year, v_account_id);
    RETURN v_account_id;
END $$;

CREATE FUNCTION reload_wallet(
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
    -- One reload at a time per beneficiary: wallet creation and fee recovery do not race.
    PERFORM 1 FROM beneficiaries WHERE id = p_beneficiary_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown beneficiary %', p_beneficiary_id USING ERRCODE = 'no_data_found';
    END IF;

    v_wallet := open_wallet(p_beneficiary_id, p_school_year);
    credited_cents := 0;
    fee_recovered_cents := 0;
    SELECT credit_account_id, amount_cents INTO v_previous FROM transfers
     WHERE code = 'RELOAD' AND reference = p_reference;
    already_done := FOUND;
    IF already_done AND (v_previous.credit_account_id <> v_wallet
                         OR v_previous.amount_cents <> p_amount_cents) THEN
        RAISE EXCEPTION 'reload reference % was already used for another wallet or amount', p_reference
            USING ERRCODE = 'unique_violation';
    END IF;
    IF NOT already_done THEN
        SELECT id INTO v_funding FROM accounts WHERE kind = 'REGION_FUNDING';
        SELECT id INTO v_fee_income FROM accounts WHERE kind = 'FEE_INCOME';
        INSERT INTO transfers (code, debit_account_id, credit_account_id, amount_cents, reference)
        VALUES ('RELOAD', v_funding, v_wallet, p_amount_cents, p_reference);
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

-- The ledger's invariants, one row each, for tests, `hdfpay ledger check` and load-test reports.
CREATE FUNCTION ledger_violations() RETURNS TABLE (rule text, detail text) LANGUAGE sql STABLE AS $$
    WITH journal AS (
        SELECT account_id, sum(debit) AS debits, sum(credit) AS credits FROM (
            SELECT debit_account_id AS account_id, amount_cents AS debit, 0::bigint AS credit FROM transfers
            UNION ALL
            SELECT credit_account_id, 0, amount_cents FROM transfers) moves
        GROUP BY account_id)
    SELECT 'debits equal credits', format('debits %s, credits %s', sum(debits), sum(credits))
      FROM journal HAVING sum(debits) <> sum(credits)
    UNION ALL
    SELECT 'wallet totals match the journal',
           format('account %s posts %s/%s, journal %s/%s', a.id, a.debits_posted, a.credits_posted,
                  coalesce(j.debits, 0), coalesce(j.credits, 0))
      FROM accounts a LEFT JOIN journal j ON j.account_id = a.id
     WHERE a.kind = 'WALLET'
       AND (a.debits_posted <> coalesce(j.debits, 0) OR a.credits_posted <> coalesce(j.credits, 0))
    UNION ALL
    SELECT 'transfers move between known accounts', format('transfer %s', t.id)
      FROM transfers t
     WHERE NOT EXISTS (SELECT 1 FROM accounts WHERE id = t.debit_account_id)
        OR NOT EXISTS (SELECT 1 FROM accounts WHERE id = t.credit_account_id)
    UNION ALL
    SELECT 'every approval has its transfer',
           format('authorization %s approved %s, transfers %s', a.id, a.amount_approved_cents, coalesce(t.total, 0))
      FROM authorizations a
      LEFT JOIN (SELECT authorization_id, sum(amount_cents) AS total FROM transfers
                  WHERE authorization_id IS NOT NULL GROUP BY authorization_id) t ON t.authorization_id = a.id
     WHERE a.amount_approved_cents <> coalesce(t.total, 0)
    UNION ALL
    SELECT 'wallets are never negative', format('account %s balance %s', id, credits_posted - debits_posted)
      FROM accounts WHERE kind = 'WALLET' AND credits_posted < debits_posted
$$;
