-- Irreversible opposition (the trigger cards_opposition_is_irreversible forbids lifting it). The terminal then answers
-- the opposition's decline code (card_statuses: 41 lost, 43 stolen, 62 damaged or defective).
CREATE OR REPLACE FUNCTION oppose_card(p_card_id bigint, p_reason text, p_actor text) RETURNS cards
LANGUAGE plpgsql
-- Runs as hdfpay_owner for the roles granted EXECUTE (ledger/sql/privileges.sql).
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_now  timestamptz := business_now();
    v_card cards;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM card_statuses WHERE status = p_reason AND is_opposition) THEN
        RAISE EXCEPTION 'an opposition reason is % (got %)',
            (SELECT string_agg(status, ', ' ORDER BY status) FROM card_statuses WHERE is_opposition),
            coalesce(p_reason, 'nothing') USING ERRCODE = 'HD422';
    END IF;
    SELECT * INTO v_card FROM cards WHERE id = p_card_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no card %', p_card_id USING ERRCODE = 'HD404';
    END IF;
    IF v_card.status <> 'ACTIVE' THEN
        RAISE EXCEPTION 'card % is already opposed (%): an opposition is irreversible',
            p_card_id, v_card.status USING ERRCODE = 'HD409';
    END IF;
    UPDATE cards SET status = p_reason, opposed_at = v_now WHERE id = p_card_id RETURNING * INTO v_card;
    PERFORM append_audit(p_actor, 'card.oppose', 'card:' || p_card_id,
                         jsonb_build_object('status', 'ACTIVE'),
                         jsonb_build_object('status', p_reason, 'opposed_at', v_now));
    RETURN v_card;
END $$;
