-- The common first step of a reversal, a refund or a batch close: the terminal is known (63
-- when a KSN came with the message, 58 without), the KSN is accepted (63), the terminal is
-- active (58, below), and an earlier message under the same key is replayed or
-- is a duplicate (94). early_response is the whole answer when the message is decided here;
-- otherwise it is NULL and the terminal's partner and merchant account are returned.
--
-- A suspended terminal may still reverse its own purchases and close its batch: a reversal only
-- gives a student's money back (typically a purchase whose answer was lost just before the
-- region suspended the shop), and refusing it (58) left the student debited for goods never
-- handed over. Purchases and refunds from a suspended terminal stay refused; a revoked terminal
-- or a closed partner can send nothing.
CREATE OR REPLACE FUNCTION open_terminal_message(
    p_type text, p_terminal_id text, p_request_id text, p_request_hash bytea, p_stan integer,
    p_requested_cents bigint, p_initial_key_id bytea, p_ksn_counter bigint,
    OUT early_response text, OUT partner_id integer, OUT merchant_account_id bigint
) LANGUAGE plpgsql AS $$
DECLARE
    f record;
BEGIN
    SELECT t.status AS terminal_status, p.status AS partner_status, p.id AS partner_id,
           p.merchant_account_id,
           a.id AS previous_id, a.request_hash AS previous_hash, a.response AS previous_response
      INTO f
      FROM terminals t
      JOIN partners p ON p.id = t.partner_id
      LEFT JOIN authorizations a ON a.terminal_id = t.id AND a.request_id = p_request_id
     WHERE t.id = p_terminal_id;
    IF NOT FOUND THEN
        -- An unknown terminal: with a KSN, the key is not the named terminal's (63, as for a
        -- known terminal given another one's key); 58 only without authentication.
        early_response := terminal_response(p_type, p_request_id, p_stan,
                                            CASE WHEN p_initial_key_id IS NULL THEN '58' ELSE '63' END,
                                            p_requested_cents, 0, NULL, NULL, NULL);
    ELSIF NOT accept_ksn(p_terminal_id, p_initial_key_id, p_ksn_counter) THEN
        early_response := terminal_response(p_type, p_request_id, p_stan, '63', p_requested_cents, 0, NULL, NULL, NULL);
    ELSIF f.previous_id IS NOT NULL THEN
        early_response := CASE WHEN f.previous_hash = p_request_hash THEN f.previous_response
            ELSE terminal_response(p_type, p_request_id, p_stan, '94', p_requested_cents, 0, NULL, NULL, NULL) END;
    ELSIF (f.terminal_status <> 'ACTIVE' OR f.partner_status <> 'ACTIVE')
          AND NOT (p_type IN ('reversal', 'batch_close') AND f.terminal_status = 'SUSPENDED'
                   AND f.partner_status <> 'CLOSED') THEN
        early_response := terminal_response(p_type, p_request_id, p_stan, '58', p_requested_cents, 0, NULL, NULL, NULL);
    END IF;
    partner_id := f.partner_id;
    merchant_account_id := f.merchant_account_id;
END $$;
