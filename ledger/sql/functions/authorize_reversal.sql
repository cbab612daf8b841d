-- Void a purchase of this terminal by its request id. Restores the wallet once. If the original
-- is unknown, leave a tombstone under its key so that a late original is declined (94), and
-- answer 25.
-- A reversal once the purchase's wallet has closed (wallet_closes_at()) must not put spendable money back:
-- the voided amount goes where the wallet's balance went, the expired-funds account.
-- A purchase the server voided itself (it answered it 91 or 96: server_void_purchase.sql) is
-- answered as one that never arrived, 25 with nothing requested: its terminal never saw it
-- approved, and counts it in no batch total, nor does the ledger (batch_totals.sql).
CREATE OR REPLACE FUNCTION authorize_reversal(
    p_terminal_id text, p_request_id text, p_request_hash bytea, p_stan integer,
    p_original_request_id text, p_initial_key_id bytea, p_ksn_counter bigint
) RETURNS text LANGUAGE plpgsql
-- Runs as hdfpay_owner for the roles granted EXECUTE (ledger/sql/privileges.sql).
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_now       timestamptz := business_now();
    f           record;
    o           record;
    v_rc        text;
    v_requested bigint;
    v_amount    bigint := 0;
    v_balance   bigint;
    v_rrn       text;
    v_response  text;
    v_auth_id   bigint;
    v_credited  bigint;
BEGIN
    SELECT * INTO f FROM open_terminal_message('reversal', p_terminal_id, p_request_id, p_request_hash,
                                               p_stan, NULL, p_initial_key_id, p_ksn_counter);
    IF f.early_response IS NOT NULL THEN
        RETURN f.early_response;
    END IF;

    SELECT * INTO o FROM authorizations
     WHERE terminal_id = p_terminal_id AND request_id = p_original_request_id FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM tombstone_purchase(p_terminal_id, p_original_request_id, v_now);
        -- Either our tombstone is in, or the original committed meanwhile: look again.
        SELECT * INTO o FROM authorizations
         WHERE terminal_id = p_terminal_id AND request_id = p_original_request_id FOR UPDATE;
    END IF;

    v_credited := o.wallet_account_id;
    v_requested := CASE WHEN o.amount_server_voided_cents > 0 THEN 0 ELSE o.amount_approved_cents END;
    IF o.message_type <> 'PURCHASE' OR o.request_hash IS NULL OR o.amount_server_voided_cents > 0 THEN
        v_rc := '25';
    ELSE
        v_rc := '00';
        v_amount := o.amount_approved_cents - o.amount_reversed_cents - o.amount_refunded_cents;
        IF v_amount > 0 AND v_now >= wallet_closes_at(o.school_year) THEN
            SELECT id INTO v_credited FROM accounts WHERE kind = 'EXPIRED_FUNDS';
            UPDATE authorizations SET amount_reversed_cents = amount_reversed_cents + v_amount
             WHERE id = o.id;
        ELSIF v_amount > 0 THEN
            UPDATE accounts SET credits_posted = credits_posted + v_amount
             WHERE id = o.wallet_account_id
            RETURNING credits_posted - debits_posted INTO v_balance;
            UPDATE authorizations SET amount_reversed_cents = amount_reversed_cents + v_amount
             WHERE id = o.id;
        END IF;
    END IF;

    v_rrn := next_rrn(v_now);
    v_response := terminal_response('reversal', p_request_id, p_stan, v_rc,
                                    v_requested, v_amount, v_balance, NULL, v_rrn);
    INSERT INTO authorizations (terminal_id, request_id, message_type, request_hash, stan, card_id,
                                wallet_account_id, school_year, original_id, amount_requested_cents,
                                amount_approved_cents, response_code, rrn, created_at, response)
    VALUES (p_terminal_id, p_request_id, 'REVERSAL', p_request_hash, p_stan, o.card_id,
            o.wallet_account_id, o.school_year, o.id, v_requested, v_amount, v_rc,
            v_rrn, v_now, v_response)
    RETURNING id INTO v_auth_id;

    IF v_amount > 0 THEN
        INSERT INTO transfers (code, debit_account_id, credit_account_id, amount_cents, authorization_id, created_at)
        VALUES ('REVERSAL', f.merchant_account_id, v_credited, v_amount, v_auth_id, v_now);
    END IF;
    RETURN v_response;
END $$;
