-- A request for a new card, as the student makes it. An opposed card (lost, stolen, damaged) is
-- asked for with its own reason; an active card only as DEFECTIVE (the student posts it to the
-- region, which confirms it and replaces it free). Refused while the rights of the current school
-- year are not renewed ("Avant toute demande de refabrication, assurez-vous que vos droits … ont
-- bien été actualisés"), once the card is replaced, and while a request for it is open. Audited.
CREATE OR REPLACE FUNCTION request_card_replacement(p_card_id bigint, p_reason text, p_actor text)
RETURNS card_replacement_requests LANGUAGE plpgsql
-- Runs as hdfpay_owner for the roles granted EXECUTE (ledger/sql/privileges.sql).
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_now   timestamptz := business_now();
    v_card  cards;
    v_row   card_replacement_requests;
BEGIN
    SELECT * INTO v_card FROM cards WHERE id = p_card_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no card %', p_card_id USING ERRCODE = 'HD404';
    END IF;
    IF EXISTS (SELECT 1 FROM card_replacements WHERE old_card_id = p_card_id) THEN
        RAISE EXCEPTION 'card % was already replaced', p_card_id USING ERRCODE = 'HD409';
    END IF;
    IF v_card.status = 'ACTIVE' AND p_reason <> 'DEFECTIVE' THEN
        RAISE EXCEPTION 'card % is active: declare it lost, stolen or damaged first', p_card_id
            USING ERRCODE = 'HD409';
    END IF;
    IF v_card.status <> 'ACTIVE' AND p_reason <> v_card.status THEN
        RAISE EXCEPTION 'card % is opposed as %, not %', p_card_id, v_card.status, p_reason
            USING ERRCODE = 'HD409';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM rights WHERE beneficiary_id = v_card.beneficiary_id
                                          AND school_year = school_year_of(v_now)) THEN
        RAISE EXCEPTION 'the rights for school year % are not renewed: no new card before',
            school_year_of(v_now) USING ERRCODE = 'HD409';
    END IF;
    IF EXISTS (SELECT 1 FROM card_replacement_requests WHERE card_id = p_card_id AND done_at IS NULL) THEN
        RAISE EXCEPTION 'a new card is already requested for card %', p_card_id USING ERRCODE = 'HD409';
    END IF;
    INSERT INTO card_replacement_requests (card_id, reason, requested_by, requested_at)
    VALUES (p_card_id, p_reason, p_actor, v_now) RETURNING * INTO v_row;
    PERFORM append_audit(p_actor, 'card.replacement_request', 'card:' || p_card_id, NULL,
                         jsonb_build_object('reason', p_reason, 'request_id', v_row.id));
    RETURN v_row;
END $$;
