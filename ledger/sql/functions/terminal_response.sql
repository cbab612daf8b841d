-- The response body the terminal receives, built once and stored for replays. Keys absent when
-- null.
CREATE OR REPLACE FUNCTION terminal_response(
    p_type text, p_request_id text, p_stan integer, p_rc text, p_requested_cents bigint,
    p_approved_cents bigint, p_balance_cents bigint, p_auth_code text, p_rrn text
) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT json_strip_nulls(json_build_object(
        'v', 1, 'type', p_type, 'request_id', p_request_id, 'stan', p_stan, 'rc', p_rc,
        'requested_cents', p_requested_cents, 'approved_cents', p_approved_cents,
        'balance_cents', p_balance_cents, 'auth_code', p_auth_code, 'rrn', p_rrn))::text
$$;
