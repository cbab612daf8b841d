CREATE OR REPLACE FUNCTION add_partner(p_name text, p_category text, p_address text, p_latitude double precision,
                            p_longitude double precision, p_actor text) RETURNS partners
LANGUAGE plpgsql
-- Runs as hdfpay_owner for the roles granted EXECUTE (ledger/sql/privileges.sql).
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_partner partners;
BEGIN
    IF p_name IS NULL OR p_category IS NULL OR p_address IS NULL OR p_latitude IS NULL OR p_longitude IS NULL THEN
        RAISE EXCEPTION 'a partner needs a name, a category, an address and coordinates' USING ERRCODE = 'HD422';
    END IF;
    PERFORM check_partner_fields(p_name, p_category, p_address, p_latitude, p_longitude);
    WITH account AS (INSERT INTO accounts (kind) VALUES ('MERCHANT_PAYABLE') RETURNING id)
    INSERT INTO partners (name, category, address, latitude, longitude, status, merchant_account_id)
    SELECT btrim(p_name), p_category, btrim(p_address), p_latitude, p_longitude, 'ACTIVE', id FROM account
    RETURNING * INTO v_partner;
    PERFORM append_audit(p_actor, 'partner.add', 'partner:' || v_partner.id, NULL,
                         to_jsonb(v_partner) - 'merchant_account_id');
    RETURN v_partner;
END $$;
