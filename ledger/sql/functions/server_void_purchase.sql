-- The server's own void of a purchase it answered 91 or 96 (authorizer/server_voids.py), called
-- in the background after the answer, as often as it takes to land. It is keyed by the
-- purchase's request id: its SERVER_VOID row's request id is 'server-void:' and that id (no
-- terminal request id holds a colon), so it acts once whatever the attempts or the servers, and
-- it serialises with the terminal's own reversal on the purchase's row lock: the wallet is
-- credited back once between them.
--
-- p_may_have_committed: the transmission answered 91/96 reached the database and its outcome is
-- unknown (its call was cut by the deadline or a lost connection), or the ledger approved it and
-- the answer could not be MAC'd. Then the purchase under this id and content is voided: what it
-- took goes back (to the expired-funds account once its wallet has closed, as a reversal's), the
-- stored answer a retry gets becomes the 94 a late purchase gets, and the terminal's own reversal
-- is answered 25, as for a purchase that never arrived (authorize_reversal.sql). Otherwise the
-- transmission committed nothing (it never reached the database, or the database rolled it back):
-- a purchase already under the id is another transmission's, answered on its own (a replayed
-- copy of an approved sale answered 91 "card busy" must not void it), and is left alone.
--
-- Either way an id the ledger does not know gets a tombstone, as a reversal of an unknown
-- original leaves one: a late or retried copy of the purchase is declined 94 and debits nothing.
-- Returns what it did, for the server's metrics.
CREATE OR REPLACE FUNCTION server_void_purchase(
    p_terminal_id text, p_request_id text, p_request_hash bytea, p_may_have_committed boolean
) RETURNS text LANGUAGE plpgsql
-- Runs as hdfpay_owner for the roles granted EXECUTE (ledger/sql/privileges.sql).
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_now        timestamptz := business_now();
    v_void_id    text := 'server-void:' || p_request_id;
    v_merchant   bigint;
    o            record;
    v_tombstoned boolean := false;
    v_effect     text;
    v_rc         text := '00';
    v_amount     bigint := 0;
    v_credited   bigint;
    v_balance    bigint;
    v_rrn        text;
    v_auth_id    bigint;
BEGIN
    SELECT p.merchant_account_id INTO v_merchant
      FROM terminals t JOIN partners p ON p.id = t.partner_id
     WHERE t.id = p_terminal_id;
    IF NOT FOUND THEN
        RETURN 'unknown_terminal';          -- nothing of it can be in the ledger
    END IF;

    SELECT * INTO o FROM authorizations
     WHERE terminal_id = p_terminal_id AND request_id = p_request_id FOR UPDATE;
    IF NOT FOUND THEN
        v_tombstoned := tombstone_purchase(p_terminal_id, p_request_id, v_now);
        -- Either our tombstone is in, or the purchase committed meanwhile: look again.
        SELECT * INTO o FROM authorizations
         WHERE terminal_id = p_terminal_id AND request_id = p_request_id FOR UPDATE;
    END IF;

    IF EXISTS (SELECT 1 FROM authorizations
                WHERE terminal_id = p_terminal_id AND request_id = v_void_id) THEN
        RETURN 'repeated';
    END IF;
    IF o.message_type <> 'PURCHASE' OR (o.request_hash IS NOT NULL
            AND (o.request_hash <> p_request_hash OR NOT p_may_have_committed)) THEN
        RETURN 'not_ours';
    END IF;

    IF o.request_hash IS NULL THEN
        -- A tombstone: ours, or the terminal's reversal came first. Nothing was ever debited.
        v_rc := '25';
        v_effect := CASE WHEN v_tombstoned THEN 'tombstoned' ELSE 'was_reversed' END;
    ELSE
        v_amount := o.amount_approved_cents - o.amount_reversed_cents - o.amount_refunded_cents;
        v_credited := o.wallet_account_id;
        IF v_amount > 0 AND v_now >= wallet_closes_at(o.school_year) THEN
            SELECT id INTO v_credited FROM accounts WHERE kind = 'EXPIRED_FUNDS';
        ELSIF v_amount > 0 THEN
            UPDATE accounts SET credits_posted = credits_posted + v_amount
             WHERE id = o.wallet_account_id
            RETURNING credits_posted - debits_posted INTO v_balance;
        END IF;
        UPDATE authorizations
           SET amount_reversed_cents = amount_reversed_cents + v_amount,
               amount_server_voided_cents = amount_server_voided_cents + v_amount,
               response = CASE WHEN amount_approved_cents > 0
                               THEN terminal_response('purchase', request_id, stan, '94',
                                                      amount_requested_cents, 0, NULL, NULL, NULL)
                               ELSE response END
         WHERE id = o.id;
        v_effect := CASE WHEN v_amount > 0 THEN 'credited'
                         WHEN o.amount_approved_cents > 0 THEN 'was_reversed'
                         ELSE 'declined' END;
    END IF;

    v_rrn := next_rrn(v_now);
    INSERT INTO authorizations (terminal_id, request_id, message_type, request_hash, card_id,
                                wallet_account_id, school_year, original_id, amount_requested_cents,
                                amount_approved_cents, response_code, rrn, created_at, response)
    VALUES (p_terminal_id, v_void_id, 'SERVER_VOID', NULL, o.card_id, o.wallet_account_id,
            o.school_year, o.id, o.amount_approved_cents, v_amount, v_rc, v_rrn, v_now,
            terminal_response('server_void', p_request_id, NULL, v_rc, o.amount_approved_cents,
                              v_amount, v_balance, NULL, v_rrn))
    RETURNING id INTO v_auth_id;
    IF v_amount > 0 THEN
        INSERT INTO transfers (code, debit_account_id, credit_account_id, amount_cents,
                               authorization_id, created_at)
        VALUES ('REVERSAL', v_merchant, v_credited, v_amount, v_auth_id, v_now);
    END IF;
    RETURN v_effect;
END $$;
