-- NULL leaves a field as it is.
CREATE OR REPLACE FUNCTION update_partner(p_partner_id integer, p_name text, p_category text, p_address text,
                               p_latitude double precision, p_longitude double precision,
                               p_actor text) RETURNS partners LANGUAGE plpgsql
-- Runs as hdfpay_owner for the roles granted EXECUTE (ledger/sql/privileges.sql).
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_before partners;
    v_after  partners;
BEGIN
    PERFORM check_partner_fields(p_name, p_category, p_address, p_latitude, p_longitude);
    SELECT * INTO v_before FROM partners WHERE id = p_partner_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no partner %', p_partner_id USING ERRCODE = 'HD404';
    END IF;
    UPDATE partners SET name = coalesce(btrim(p_name), name), category = coalesce(p_category, category),
                        address = coalesce(btrim(p_address), address),
                        latitude = coalesce(p_latitude, latitude), longitude = coalesce(p_longitude, longitude)
     WHERE id = p_partner_id RETURNING * INTO v_after;
    IF v_after IS DISTINCT FROM v_before THEN
        PERFORM append_audit(p_actor, 'partner.update', 'partner:' || p_partner_id,
                             to_jsonb(v_before) - 'merchant_account_id', to_jsonb(v_after) - 'merchant_account_id');
    END IF;
    RETURN v_after;
END $$;
