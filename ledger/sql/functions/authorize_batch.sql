-- Group commit: several terminal messages decided in one round trip and one commit. Each message
-- runs its own function (authorize_purchase, _reversal, _refund) inside its own BEGIN … EXCEPTION
-- block, i.e. a subtransaction: a message that fails (a lock not granted in lock_timeout, a
-- deadlock, a concurrent duplicate's unique_violation) rolls back only what it did and reports its
-- SQLSTATE; the others go on and commit together. A cancelled statement (statement timeout) is not
-- caught and fails the whole batch, which then commits nothing.
--
-- The caller bounds the number of messages (GROUP_COMMIT_BATCH_MAX_MESSAGES in
-- authorizer/group_commit.py, below PostgreSQL's 64 cached subtransactions per backend) and
-- answers each message only after this call's transaction has committed. Row i of the result is
-- message i's: its stored response, or the error that rolled it back.
CREATE OR REPLACE FUNCTION authorize_batch(
    p_kinds text[], p_terminal_ids text[], p_request_ids text[], p_request_hashes bytea[],
    p_stans integer[], p_card_uids bytea[], p_amounts_cents bigint[],
    p_terminal_local_times timestamp[], p_partial_oks boolean[], p_originals text[],
    p_initial_key_ids bytea[], p_ksn_counters bigint[]
) RETURNS TABLE (response text, error_sqlstate text, error_constraint text, error_message text)
LANGUAGE plpgsql
-- Runs as hdfpay_owner for the roles granted EXECUTE (ledger/sql/privileges.sql).
SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    FOR i IN 1 .. coalesce(cardinality(p_kinds), 0) LOOP
        response := NULL;
        error_sqlstate := NULL;
        error_constraint := NULL;
        error_message := NULL;
        BEGIN
            IF p_kinds[i] = 'purchase' THEN
                response := authorize_purchase(
                    p_terminal_ids[i], p_request_ids[i], p_request_hashes[i], p_stans[i],
                    p_card_uids[i], p_amounts_cents[i], p_terminal_local_times[i],
                    p_partial_oks[i], p_initial_key_ids[i], p_ksn_counters[i]);
            ELSIF p_kinds[i] = 'reversal' THEN
                response := authorize_reversal(
                    p_terminal_ids[i], p_request_ids[i], p_request_hashes[i], p_stans[i],
                    p_originals[i], p_initial_key_ids[i], p_ksn_counters[i]);
            ELSIF p_kinds[i] = 'refund' THEN
                response := authorize_refund(
                    p_terminal_ids[i], p_request_ids[i], p_request_hashes[i], p_stans[i],
                    p_originals[i], p_amounts_cents[i], p_card_uids[i], p_initial_key_ids[i],
                    p_ksn_counters[i]);
            ELSE
                RAISE EXCEPTION 'unknown message kind %', p_kinds[i] USING ERRCODE = '22023';
            END IF;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS error_sqlstate = RETURNED_SQLSTATE,
                                    error_constraint = CONSTRAINT_NAME,
                                    error_message = MESSAGE_TEXT;
        END;
        RETURN NEXT;
    END LOOP;
END $$;
