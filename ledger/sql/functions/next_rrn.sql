-- Retrieval reference number, 12 digits: YDDD (business-time Julian date of p_at) then an 8-digit
-- sequence. The sequence cycles after 99 999 999 and YDDD recurs every ten years, so a number can
-- come back: one already in the ledger is skipped (an index probe) rather than failing the
-- message's insert with a unique violation. Numbers drawn concurrently are distinct, so only a
-- committed row can collide, and the probe sees it.
CREATE OR REPLACE FUNCTION next_rrn(p_at timestamptz) RETURNS text LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_prefix text;
    v_rrn    text;
BEGIN
    SELECT right(to_char(local, 'YYYY'), 1) || to_char(local, 'DDD') INTO v_prefix
      FROM (SELECT p_at AT TIME ZONE business_time_zone() AS local) l;
    LOOP
        v_rrn := v_prefix || lpad(nextval('rrn_sequence')::text, 8, '0');
        EXIT WHEN NOT EXISTS (SELECT 1 FROM authorizations WHERE rrn = v_rrn);
    END LOOP;
    RETURN v_rrn;
END $$;
