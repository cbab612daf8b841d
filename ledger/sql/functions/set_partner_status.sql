-- ACTIVE or SUSPENDED (its terminals then answer 58), or CLOSED, which is final. Setting the
-- status a partner already has changes nothing and records nothing.
CREATE OR REPLACE FUNCTION set_partner_status(p_partner_id integer, p_status text, p_actor text) RETURNS partners
LANGUAGE plpgsql
-- Runs as hdfpay_owner for the roles granted EXECUTE (ledger/sql/privileges.sql).
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_partner partners;
BEGIN
    IF p_status IS NULL OR p_status NOT IN ('ACTIVE', 'SUSPENDED', 'CLOSED') THEN
        RAISE EXCEPTION 'a partner status is ACTIVE, SUSPENDED or CLOSED (got %)', coalesce(p_status, 'nothing')
            USING ERRCODE = 'HD422';
    END IF;
    SELECT * INTO v_partner FROM partners WHERE id = p_partner_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no partner %', p_partner_id USING ERRCODE = 'HD404';
    END IF;
    IF v_partner.status = p_status THEN
        RETURN v_partner;
    END IF;
    IF v_partner.status = 'CLOSED' THEN
        RAISE EXCEPTION 'partner % is closed: a closed partner is not reopened, add it again', p_partner_id
            USING ERRCODE = 'HD409';
    END IF;
    PERFORM append_audit(p_actor, CASE p_status WHEN 'ACTIVE' THEN 'partner.activate'
                                                WHEN 'SUSPENDED' THEN 'partner.suspend' ELSE 'partner.close' END,
                         'partner:' || p_partner_id, jsonb_build_object('status', v_partner.status),
                         jsonb_build_object('status', p_status));
    UPDATE partners SET status = p_status WHERE id = p_partner_id RETURNING * INTO v_partner;
    RETURN v_partner;
END $$;
