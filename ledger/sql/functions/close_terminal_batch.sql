CREATE OR REPLACE FUNCTION close_terminal_batch(
    p_terminal_id text, p_request_id text, p_request_hash bytea, p_stan integer,
    p_terminal_totals jsonb, p_initial_key_id bytea, p_ksn_counter bigint
) RETURNS text LANGUAGE plpgsql
-- Runs as hdfpay_owner for the roles granted EXECUTE (ledger/sql/privileges.sql).
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_now        timestamptz := business_now();
    f            record;
    v_auth_id    bigint;
    v_from_id    bigint;
    v_number     integer;
    v_ledger     jsonb;
    v_diffs      jsonb;
    v_rc         text;
    v_response   text;
BEGIN
    SELECT * INTO f FROM open_terminal_message('batch_close', p_terminal_id, p_request_id,
                                               p_request_hash, p_stan, NULL, p_initial_key_id,
                                               p_ksn_counter);
    IF f.early_response IS NOT NULL THEN
        RETURN f.early_response;
    END IF;
    -- One close at a time per terminal (also serialised by its KSN row when MACs are on). NO KEY
    -- UPDATE: the KEY SHARE lock every authorization's insert takes on its terminal does not
    -- wait for it, nor it for them.
    PERFORM 1 FROM terminals WHERE id = p_terminal_id FOR NO KEY UPDATE;

    SELECT coalesce(max(batch_number), 0) + 1 INTO v_number
      FROM terminal_batches WHERE terminal_id = p_terminal_id;

    INSERT INTO authorizations (terminal_id, request_id, message_type, request_hash, stan,
                                response_code, created_at, response, batch_number)
    VALUES (p_terminal_id, p_request_id, 'BATCH_CLOSE', p_request_hash, p_stan, '00', v_now, '',
            v_number)
    RETURNING id INTO v_auth_id;

    -- The batch is what the terminal sent that is committed and not yet in a batch, whatever its
    -- id: a message committing after this statement's snapshot stays unmarked for the next close.
    WITH counted AS (
        UPDATE authorizations SET batch_number = v_number
         WHERE terminal_id = p_terminal_id AND batch_number IS NULL AND request_hash IS NOT NULL
        RETURNING id)
    SELECT coalesce(min(id), v_auth_id) INTO v_from_id FROM counted;

    v_ledger := batch_totals(p_terminal_id, v_number);
    SELECT coalesce(jsonb_agg(jsonb_build_object('field', l.key, 'terminal', t.value, 'ledger', l.value)
                              ORDER BY l.key), '[]'::jsonb)
      INTO v_diffs
      FROM jsonb_each(v_ledger) l
      LEFT JOIN jsonb_each(p_terminal_totals) t ON t.key = l.key
     WHERE t.value IS DISTINCT FROM l.value;
    v_rc := CASE WHEN jsonb_array_length(v_diffs) = 0 THEN '00' ELSE '95' END;

    v_response := json_strip_nulls(json_build_object(
        'v', 1, 'type', 'batch_close', 'request_id', p_request_id, 'stan', p_stan, 'rc', v_rc,
        'batch_number', v_number, 'ledger_totals', v_ledger, 'differences', v_diffs))::text;
    UPDATE authorizations SET response_code = v_rc, response = v_response WHERE id = v_auth_id;
    INSERT INTO terminal_batches (terminal_id, batch_number, first_authorization_id,
                                  close_authorization_id, terminal_totals, ledger_totals,
                                  in_balance, closed_at)
    VALUES (p_terminal_id, v_number, v_from_id, v_auth_id, p_terminal_totals, v_ledger,
            v_rc = '00', v_now);
    RETURN v_response;
END $$;
