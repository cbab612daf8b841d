-- Expiry: once its wallets have closed (wallet_closes_at()), what is left in a school year's wallets moves to the
-- expired-funds account, one EXPIRY transfer per wallet. The wallets are locked first (the lock
-- authorize_purchase's debit takes), then their balances read and moved: a purchase in flight
-- either debited before (and its amount is not expired) or waits and finds nothing left (51).
-- Idempotent: a second run finds every balance at zero, and sweeps only what was credited since
-- (a reversal decided before the close but committed after the expiry).
CREATE OR REPLACE FUNCTION expire_school_year(
    p_school_year integer, OUT wallets_expired bigint, OUT expired_cents bigint
) LANGUAGE plpgsql
-- Runs as hdfpay_owner for the roles granted EXECUTE (ledger/sql/privileges.sql).
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_now      timestamptz := business_now();
    v_expired  bigint;
    v_accounts bigint[];
BEGIN
    IF v_now < wallet_closes_at(p_school_year) THEN
        RAISE EXCEPTION 'the wallets of school year %-% are open until %: no expiry before',
            p_school_year, p_school_year + 1, business_time_text(wallet_closes_at(p_school_year))
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT id INTO v_expired FROM accounts WHERE kind = 'EXPIRED_FUNDS';
    SELECT array_agg(id ORDER BY id) INTO v_accounts FROM (
        SELECT a.id FROM wallets w JOIN accounts a ON a.id = w.account_id
         WHERE w.school_year = p_school_year AND a.credits_posted > a.debits_posted
         ORDER BY a.id
           FOR UPDATE OF a) locked;
    -- With the locks held, this statement reads the latest balances and nothing can change them.
    WITH moved AS (
        SELECT id, credits_posted - debits_posted AS balance FROM accounts
         WHERE id = ANY (v_accounts) AND credits_posted > debits_posted),
    posted AS (
        UPDATE accounts a SET debits_posted = a.debits_posted + m.balance
          FROM moved m WHERE a.id = m.id),
    journal AS (
        INSERT INTO transfers (code, debit_account_id, credit_account_id, amount_cents, reference, created_at)
        SELECT 'EXPIRY', id, v_expired, balance, 'expiry:' || p_school_year, v_now
          FROM moved ORDER BY id)
    SELECT count(*), coalesce(sum(balance), 0) INTO wallets_expired, expired_cents FROM moved;
END $$;
