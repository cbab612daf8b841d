-- The audit trail of operator actions: who, when, what, before and after. Append-only (triggers
-- refuse UPDATE, DELETE and TRUNCATE) and hash-chained: each row's hash covers its content and
-- the previous row's hash, and audit_head holds the last (id, hash), so `hdfpay audit verify`
-- finds a row altered, inserted or deleted anywhere, the last one included.

CREATE TABLE audit_log (
    id             bigint PRIMARY KEY,
    occurred_at    timestamptz NOT NULL,
    actor          text  NOT NULL CHECK (length(actor) BETWEEN 1 AND 200),
    action         text  NOT NULL CHECK (action ~ '^[a-z][a-z0-9_.]{1,63}$'),
    subject        text  NOT NULL CHECK (length(subject) BETWEEN 1 AND 200),
    before         jsonb,
    after          jsonb,
    previous_hash  bytea NOT NULL CHECK (length(previous_hash) = 32),
    row_hash       bytea NOT NULL UNIQUE CHECK (length(row_hash) = 32)
);

CREATE TABLE audit_head (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_id    bigint NOT NULL,
    last_hash  bytea  NOT NULL
);
INSERT INTO audit_head VALUES (true, 0, '\x0000000000000000000000000000000000000000000000000000000000000000');

-- The bytes a row's hash covers; ledger/audit.py recomputes the same in Python to verify.
CREATE FUNCTION audit_row_bytes(p_id bigint, p_occurred_at timestamptz, p_actor text,
                                p_action text, p_subject text, p_before jsonb, p_after jsonb)
RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
    SELECT convert_to(concat_ws(chr(31), p_id::text,
                                (extract(epoch FROM p_occurred_at) * 1000000)::bigint::text,
                                p_actor, p_action, p_subject,
                                coalesce(p_before::text, 'null'), coalesce(p_after::text, 'null')),
                      'UTF8')
$$;

-- Append one action, inside the caller's transaction (it commits or rolls back with the change
-- it describes). The head row's lock serialises appends, so the chain has no fork.
CREATE FUNCTION append_audit(p_actor text, p_action text, p_subject text, p_before jsonb,
                             p_after jsonb) RETURNS bigint LANGUAGE plpgsql AS $$
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

CREATE FUNCTION refuse_audit_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION refuse_audit_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_audit_change();
