-- Move a request to p_to_state. PRINTED needs the printed card's UID (its number is generated
-- when not given); ACTIVE issues that card; REJECTED needs a reason. With p_establishment_id the
-- caller is that establishment's staff: only its own students' requests, and only the
-- pre-validation decision (SUBMITTED to PREVALIDATED or REJECTED).
CREATE OR REPLACE FUNCTION advance_card_request(p_request_id bigint, p_to_state text, p_actor text,
                                     p_reason text, p_card_uid bytea, p_card_number text,
                                     p_establishment_id integer) RETURNS card_requests
LANGUAGE plpgsql
-- Runs as hdfpay_owner for the roles granted EXECUTE (ledger/sql/privileges.sql).
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_now      timestamptz := business_now();
    v_request  card_requests;
    v_card     cards;
    v_allowed  text;
    v_from     text;
BEGIN
    SELECT * INTO v_request FROM card_requests WHERE id = p_request_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no card request %', p_request_id USING ERRCODE = 'HD404';
    END IF;
    v_from := v_request.state;
    IF p_establishment_id IS NOT NULL THEN
        IF NOT EXISTS (SELECT 1 FROM beneficiaries WHERE id = v_request.beneficiary_id
                                                     AND establishment_id = p_establishment_id) THEN
            RAISE EXCEPTION 'card request % is not for a student of your establishment', p_request_id
                USING ERRCODE = 'HD403';
        END IF;
        IF v_request.state <> 'SUBMITTED' OR p_to_state NOT IN ('PREVALIDATED', 'REJECTED') THEN
            RAISE EXCEPTION 'an establishment only pre-validates or rejects a submitted request (request % is %)',
                p_request_id, v_request.state USING ERRCODE = 'HD403';
        END IF;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM card_request_states WHERE state = p_to_state) THEN
        RAISE EXCEPTION 'unknown card request state % (one of %)', coalesce(p_to_state, 'nothing'),
            (SELECT string_agg(state, ', ' ORDER BY step) FROM card_request_states) USING ERRCODE = 'HD422';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM card_request_transitions
                    WHERE from_state = v_request.state AND to_state = p_to_state) THEN
        SELECT string_agg(to_state, ' or ' ORDER BY s.step) INTO v_allowed
          FROM card_request_transitions t JOIN card_request_states s ON s.state = t.to_state
         WHERE from_state = v_request.state;
        RAISE EXCEPTION 'card request % cannot go from % to %: %', p_request_id, v_request.state, p_to_state,
            CASE WHEN v_allowed IS NULL THEN v_request.state || ' is final'
                 ELSE 'from ' || v_request.state || ' it can go to ' || v_allowed END
            USING ERRCODE = 'HD409';
    END IF;
    IF p_to_state = 'REJECTED' AND coalesce(btrim(p_reason), '') = '' THEN
        RAISE EXCEPTION 'a rejection needs a reason the beneficiary will read' USING ERRCODE = 'HD422';
    END IF;

    IF p_to_state = 'PRINTED' THEN
        IF p_card_uid IS NULL OR length(p_card_uid) NOT IN (4, 7, 10) THEN
            RAISE EXCEPTION 'PRINTED needs the printed card''s UID (4, 7 or 10 bytes)' USING ERRCODE = 'HD422';
        END IF;
        IF p_card_number IS NOT NULL AND p_card_number !~ '^[0-9]{16}$' THEN
            RAISE EXCEPTION 'a card number is 16 digits (got %)', p_card_number USING ERRCODE = 'HD422';
        END IF;
        IF EXISTS (SELECT 1 FROM cards WHERE uid = p_card_uid)
           OR EXISTS (SELECT 1 FROM card_requests WHERE card_uid = p_card_uid) THEN
            RAISE EXCEPTION 'a card with UID % already exists', upper(encode(p_card_uid, 'hex')) USING ERRCODE = 'HD409';
        END IF;
        IF EXISTS (SELECT 1 FROM cards WHERE card_number = p_card_number)
           OR EXISTS (SELECT 1 FROM card_requests WHERE card_number = p_card_number) THEN
            RAISE EXCEPTION 'card number % is already used', p_card_number USING ERRCODE = 'HD409';
        END IF;
        v_request.card_uid := p_card_uid;
        v_request.card_number := coalesce(p_card_number, new_card_number());
    ELSIF p_to_state = 'ACTIVE' THEN
        v_card := issue_card(v_request.beneficiary_id, v_request.card_uid, v_request.card_number, v_now);
        v_request.card_id := v_card.id;
    END IF;

    UPDATE card_requests
       SET state = p_to_state, updated_at = v_now, card_uid = v_request.card_uid,
           card_number = v_request.card_number, card_id = v_request.card_id,
           rejection_reason = CASE WHEN p_to_state = 'REJECTED' THEN btrim(p_reason) END
     WHERE id = p_request_id RETURNING * INTO v_request;
    INSERT INTO card_request_history (request_id, from_state, to_state, actor, reason, occurred_at)
    VALUES (p_request_id, v_from, p_to_state, p_actor, nullif(btrim(p_reason), ''), v_now);
    PERFORM append_audit(p_actor, 'card_request.advance', 'card_request:' || p_request_id,
                         jsonb_build_object('state', v_from),
                         jsonb_strip_nulls(jsonb_build_object('state', p_to_state, 'reason', nullif(btrim(p_reason), ''),
                                                              'card_id', v_request.card_id)));
    RETURN v_request;
END $$;
