-- Group commit: several terminal messages decided in one round trip and one commit. Each message
-- runs its own function (authorize_purchase, _reversal, _refund) inside its own BEGIN … EXCEPTION
-- block, i.e. a subtransaction: a message that fails (a lock not granted in lock_timeout, a
-- deadlock, a concurrent duplicate's unique_violation) rolls back only what it did and reports its
-- SQLSTATE; the others go on and commit together. A cancelled statement (statement timeout) is not
-- caught and fails the whole batch, which then commits nothing.
--
-- Each message has a time budget (p_time_left_ms, what is left before its request's deadline,
-- counted from the start of this call): it waits for a lock no longer than that (nor than
-- p_lock_timeout_ms, the hot path's bound), and a message that ends past it is rolled back (HD408,
-- the project's "deadline passed", answered 91; not 57014, which WHEN OTHERS does not catch),
-- so that a message answered 91 at its deadline is not committed behind the terminal's back by the
-- batch it was in, as a cancelled single call is not.
--
-- The caller bounds the number of messages (GROUP_COMMIT_BATCH_MAX_MESSAGES in
-- authorizer/group_commit.py, below PostgreSQL's 64 cached subtransactions per backend) and
-- answers each message only after this call's transaction has committed. Row i of the result is
-- message i's: its stored response, or the error that rolled it back.
CREATE OR REPLACE FUNCTION authorize_batch(
    p_kinds text[], p_terminal_ids text[], p_request_ids text[], p_request_hashes bytea[],
    p_stans integer[], p_card_uids bytea[], p_amounts_cents bigint[],
    p_terminal_local_times timestamp[], p_partial_oks boolean[], p_originals text[],
    p_initial_key_ids bytea[], p_ksn_counters bigint[], p_time_left_ms integer[],
    p_lock_timeout_ms integer
) RETURNS TABLE (response text, error_sqlstate text, error_constraint text, error_message text)
LANGUAGE plpgsql
-- Runs as hdfpay_owner for the roles granted EXECUTE (ledger/sql/privileges.sql).
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_left_ms integer;
BEGIN
    FOR i IN 1 .. coalesce(cardinality(p_kinds), 0) LOOP
        response := NULL;
        error_sqlstate := NULL;
        error_constraint := NULL;
        error_message := NULL;
        BEGIN
            v_left_ms := p_time_left_ms[i]
                         - (extract(epoch FROM clock_timestamp() - v_started) * 1000)::integer;
            IF v_left_ms <= 0 THEN
                RAISE EXCEPTION 'deadline passed before its turn' USING ERRCODE = 'HD408';
            END IF;
            PERFORM set_config('lock_timeout', least(v_left_ms, p_lock_timeout_ms) || 'ms', true);
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
            IF clock_timestamp() > v_started + p_time_left_ms[i] * interval '1 millisecond' THEN
                RAISE EXCEPTION 'deadline passed' USING ERRCODE = 'HD408';   -- undoes this one
            END IF;
        EXCEPTION WHEN OTHERS THEN
            response := NULL;        -- what it answered was rolled back with it
            GET STACKED DIAGNOSTICS error_sqlstate = RETURNED_SQLSTATE,
                                    error_constraint = CONSTRAINT_NAME,
                                    error_message = MESSAGE_TEXT;
        END;
        RETURN NEXT;
    END LOOP;
END $$;
