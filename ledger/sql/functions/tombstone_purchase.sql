-- Leave a tombstone under a purchase's key, so that the purchase, if it arrives late, is declined
-- (94) and never debits: what a reversal of an unknown original (authorize_reversal) and the
-- server's void of a purchase it never recorded (server_void_purchase) both do. True when this
-- call put the tombstone in; false when a row was already there (the purchase committed
-- meanwhile, or another tombstone): the caller looks again.
CREATE OR REPLACE FUNCTION tombstone_purchase(
    p_terminal_id text, p_request_id text, p_now timestamptz
) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO authorizations (terminal_id, request_id, message_type, request_hash,
                                response_code, created_at, response)
    VALUES (p_terminal_id, p_request_id, 'PURCHASE', NULL, '25', p_now,
            terminal_response('purchase', p_request_id, NULL, '94', NULL, 0, NULL, NULL, NULL))
    ON CONFLICT (terminal_id, request_id) DO NOTHING;
    RETURN FOUND;
END $$;
