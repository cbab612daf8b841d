CREATE OR REPLACE FUNCTION submit_card_request(p_beneficiary_id bigint, p_actor text) RETURNS card_requests
LANGUAGE plpgsql
-- Runs as hdfpay_owner for the roles granted EXECUTE (ledger/sql/privileges.sql).
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_now     timestamptz := business_now();
    v_open    card_requests;
    v_request card_requests;
BEGIN
    PERFORM 1 FROM beneficiaries WHERE id = p_beneficiary_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no beneficiary %', p_beneficiary_id USING ERRCODE = 'HD404';
    END IF;
    -- A first card only: a lost, stolen or damaged card is replaced (with its fee), not requested.
    IF EXISTS (SELECT 1 FROM cards WHERE beneficiary_id = p_beneficiary_id) THEN
        RAISE EXCEPTION 'the beneficiary already has a card: a lost, stolen, damaged or defective card is replaced, not requested again'
            USING ERRCODE = 'HD409';
    END IF;
    SELECT * INTO v_open FROM card_requests
     WHERE beneficiary_id = p_beneficiary_id AND state NOT IN ('ACTIVE', 'REJECTED');
    IF FOUND THEN
        RAISE EXCEPTION 'the beneficiary already has card request % in progress (%)', v_open.id, v_open.state
            USING ERRCODE = 'HD409';
    END IF;
    INSERT INTO card_requests (beneficiary_id, state, submitted_at, updated_at)
    VALUES (p_beneficiary_id, 'SUBMITTED', v_now, v_now) RETURNING * INTO v_request;
    INSERT INTO card_request_history (request_id, from_state, to_state, actor, occurred_at)
    VALUES (v_request.id, NULL, 'SUBMITTED', p_actor, v_now);
    PERFORM append_audit(p_actor, 'card_request.submit', 'card_request:' || v_request.id, NULL,
                         jsonb_build_object('beneficiary_id', p_beneficiary_id, 'state', 'SUBMITTED'));
    RETURN v_request;
END $$;
