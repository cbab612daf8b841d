-- Replay protection: a message is accepted only if its KSN counter is strictly greater than the
-- last one accepted for that initial key, and the key is an ACTIVE key of that terminal. The
-- update holds the key's row until commit, so two messages can never both pass with one counter.
-- NULL (no KSN) is passed only by a server explicitly run without terminal authentication.
CREATE OR REPLACE FUNCTION accept_ksn(p_terminal_id text, p_initial_key_id bytea, p_counter bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_previous bigint;
BEGIN
    IF p_initial_key_id IS NULL THEN
        RETURN true;
    END IF;
    SELECT last_counter INTO v_previous FROM terminal_keys
     WHERE initial_key_id = p_initial_key_id AND terminal_id = p_terminal_id AND status = 'ACTIVE'
       FOR UPDATE;
    IF NOT FOUND OR v_previous >= p_counter THEN
        RETURN false;
    END IF;
    UPDATE terminal_keys SET last_counter = p_counter WHERE initial_key_id = p_initial_key_id;
    IF v_previous = -1 THEN
        -- First message under this key: a rotation is complete, older keys stop working.
        UPDATE terminal_keys SET status = 'RETIRED'
         WHERE terminal_id = p_terminal_id AND status = 'ACTIVE' AND initial_key_id <> p_initial_key_id
           AND created_at < (SELECT created_at FROM terminal_keys WHERE initial_key_id = p_initial_key_id);
    END IF;
    RETURN true;
END $$;
