-- Append one action, inside the caller's transaction (it commits or rolls back with the change
-- it describes). The head row's lock serialises appends, so the chain has no fork.
CREATE OR REPLACE FUNCTION append_audit(p_actor text, p_action text, p_subject text, p_before jsonb,
                             p_after jsonb) RETURNS bigint LANGUAGE plpgsql
-- Runs as hdfpay_owner for the roles granted EXECUTE (ledger/sql/privileges.sql).
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_head  audit_head;
    v_id    bigint;
    v_now   timestamptz := business_now();
    v_hash  bytea;
BEGIN
    SELECT * INTO v_head FROM audit_head FOR UPDATE;
    v_id := v_head.last_id + 1;
    v_hash := sha256(v_head.last_hash || audit_row_bytes(v_id, v_now, p_actor, p_action,
                                                         p_subject, p_before, p_after));
    INSERT INTO audit_log VALUES (v_id, v_now, p_actor, p_action, p_subject, p_before, p_after,
                                  v_head.last_hash, v_hash);
    UPDATE audit_head SET last_id = v_id, last_hash = v_hash;
    RETURN v_id;
END $$;
