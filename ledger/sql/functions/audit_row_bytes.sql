-- The bytes a row's hash covers; ledger/audit.py recomputes the same in Python to verify.
CREATE OR REPLACE FUNCTION audit_row_bytes(p_id bigint, p_occurred_at timestamptz, p_actor text,
                                p_action text, p_subject text, p_before jsonb, p_after jsonb)
RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
    SELECT convert_to(concat_ws(chr(31), p_id::text,
                                (extract(epoch FROM p_occurred_at) * 1000000)::bigint::text,
                                p_actor, p_action, p_subject,
                                coalesce(p_before::text, 'null'), coalesce(p_after::text, 'null')),
                      'UTF8')
$$;
