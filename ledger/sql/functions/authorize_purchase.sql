-- The authorization path: each terminal message is decided by one function call, i.e. one
-- database round trip, under READ COMMITTED. The balance condition sits inside the wallet UPDATE,
-- so concurrent debits on one card serialise on the wallet row and can never overspend; the
-- wallet_never_overdrawn CHECK is the last line behind it.
--
-- Idempotency: the message's row in `authorizations` is inserted last. Two concurrent messages
-- with the same (terminal, request id) both run; the second one's INSERT waits for the first to
-- commit and then fails with unique_violation, which rolls back everything it did (its debit
-- included). The caller then calls again and gets the stored response.
CREATE OR REPLACE FUNCTION authorize_purchase(
    p_terminal_id text, p_request_id text, p_request_hash bytea, p_stan integer,
    p_card_uid bytea, p_amount_cents bigint, p_terminal_local_time timestamp,
    p_partial_ok boolean, p_initial_key_id bytea, p_ksn_counter bigint
) RETURNS text LANGUAGE plpgsql
-- Runs as hdfpay_owner for the roles granted EXECUTE (ledger/sql/privileges.sql).
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_now       timestamptz := business_now();
    v_year      integer     := school_year_of(v_now);
    f           record;
    v_rc        text;
    v_approved  bigint := 0;
    v_balance   bigint;
    v_rrn       text;
    v_auth_code text;
    v_response  text;
    v_auth_id   bigint;
    v_opposed   text;
BEGIN
    SELECT t.status AS terminal_status, p.status AS partner_status, p.merchant_account_id,
           c.id AS card_id,
           -- Subqueries, not joins: one-row lookups that keep the plan of this hot query as
           -- small as before (joined, rules and card_statuses cost 38 µs a call).
           (SELECT cs.decline_code FROM card_statuses cs WHERE cs.status = c.status) AS card_decline_code,
           (SELECT rl.max_purchase_amount_cents FROM rules rl) AS max_purchase_amount_cents,
           EXISTS (SELECT 1 FROM rights r
                   WHERE r.beneficiary_id = c.beneficiary_id AND r.school_year = v_year) AS has_rights,
           w.account_id AS wallet_account_id,
           a.id AS previous_id, a.request_hash AS previous_hash, a.response AS previous_response
      INTO f
      FROM terminals t
      JOIN partners p ON p.id = t.partner_id
      LEFT JOIN cards c ON c.uid = p_card_uid
      LEFT JOIN wallets w ON w.beneficiary_id = c.beneficiary_id AND w.school_year = v_year
      LEFT JOIN authorizations a ON a.terminal_id = t.id AND a.request_id = p_request_id
     WHERE t.id = p_terminal_id;

    IF NOT FOUND THEN
        -- An unknown terminal: with a KSN, a genuine MAC under a key that is not this (nor any)
        -- terminal's is a security violation (63), as for a known terminal; 58 without one.
        RETURN terminal_response('purchase', p_request_id, p_stan,
                                 CASE WHEN p_initial_key_id IS NULL THEN '58' ELSE '63' END,
                                 p_amount_cents, 0, NULL, NULL, NULL);
    END IF;
    IF NOT accept_ksn(p_terminal_id, p_initial_key_id, p_ksn_counter) THEN
        RETURN terminal_response('purchase', p_request_id, p_stan, '63', p_amount_cents, 0, NULL, NULL, NULL);
    END IF;
    IF f.previous_id IS NOT NULL THEN
        IF f.previous_hash = p_request_hash THEN
            RETURN f.previous_response;
        END IF;
        RETURN terminal_response('purchase', p_request_id, p_stan, '94', p_amount_cents, 0, NULL, NULL, NULL);
    END IF;

    v_rc := CASE
        WHEN f.terminal_status <> 'ACTIVE' OR f.partner_status <> 'ACTIVE' THEN '58'
        WHEN f.card_id IS NULL THEN '14'
        WHEN f.card_decline_code IS NOT NULL THEN f.card_decline_code
        WHEN NOT in_wallet_window(v_now) THEN '54'
        WHEN NOT f.has_rights THEN '57'
        WHEN p_amount_cents > f.max_purchase_amount_cents THEN '61'
    END;

    IF v_rc IS NULL THEN
        UPDATE accounts SET debits_posted = debits_posted + p_amount_cents
         WHERE id = f.wallet_account_id AND credits_posted - debits_posted >= p_amount_cents
        RETURNING credits_posted - debits_posted INTO v_balance;
        IF FOUND THEN
            v_rc := '00';
            v_approved := p_amount_cents;
        ELSE
            -- Not enough in our snapshot: lock the wallet and read its latest balance (0 when
            -- there is no wallet). A credit may have committed meanwhile: never take more than
            -- the amount asked.
            SELECT credits_posted - debits_posted INTO v_balance
              FROM accounts WHERE id = f.wallet_account_id FOR UPDATE;
            v_balance := coalesce(v_balance, 0);
            IF v_balance >= p_amount_cents THEN
                v_rc := '00';
                v_approved := p_amount_cents;
            ELSIF p_partial_ok AND v_balance > 0 THEN
                v_rc := '10';
                v_approved := v_balance;
            ELSE
                v_rc := '51';
            END IF;
            IF v_approved > 0 THEN
                UPDATE accounts SET debits_posted = debits_posted + v_approved
                 WHERE id = f.wallet_account_id;
                v_balance := v_balance - v_approved;
            END IF;
        END IF;
    END IF;

    IF v_approved > 0 THEN
        -- The wallet row is ours now, but the card was read before we waited for it: an
        -- opposition may have committed meanwhile (replace_card locks the wallet, then opposes
        -- the card). Read the card again, in this statement's newer snapshot, and give the debit
        -- back if it is opposed. One primary-key lookup, only for approvals.
        SELECT cs.decline_code INTO v_opposed
          FROM cards c JOIN card_statuses cs ON cs.status = c.status
         WHERE c.id = f.card_id;
        IF v_opposed IS NOT NULL THEN
            UPDATE accounts SET debits_posted = debits_posted - v_approved
             WHERE id = f.wallet_account_id;
            v_rc := v_opposed;
            v_approved := 0;
            v_balance := NULL;
        END IF;
    END IF;

    v_rrn := next_rrn(v_now);
    IF v_approved > 0 THEN
        v_auth_code := right(v_rrn, 6);
    END IF;
    v_response := terminal_response('purchase', p_request_id, p_stan, v_rc, p_amount_cents,
                                    v_approved, v_balance, v_auth_code, v_rrn);

    INSERT INTO authorizations (terminal_id, request_id, message_type, request_hash, stan, card_id,
                                wallet_account_id, school_year, amount_requested_cents,
                                amount_approved_cents, response_code, auth_code, rrn,
                                terminal_local_time, created_at, response)
    VALUES (p_terminal_id, p_request_id, 'PURCHASE', p_request_hash, p_stan, f.card_id,
            f.wallet_account_id, v_year, p_amount_cents, v_approved, v_rc, v_auth_code, v_rrn,
            p_terminal_local_time, v_now, v_response)
    RETURNING id INTO v_auth_id;

    IF v_approved > 0 THEN
        INSERT INTO transfers (code, debit_account_id, credit_account_id, amount_cents, authorization_id, created_at)
        VALUES ('PURCHASE', f.wallet_account_id, f.merchant_account_id, v_approved, v_auth_id, v_now);
    END IF;
    RETURN v_response;
END $$;
