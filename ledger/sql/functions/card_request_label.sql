-- What the beneficiary reads for a state.
CREATE OR REPLACE FUNCTION card_request_label(p_state text, p_reason text) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN p_state = 'REJECTED' THEN label_fr || ' : ' || coalesce(p_reason, '')
                ELSE label_fr END
      FROM card_request_states WHERE state = p_state
$$;
