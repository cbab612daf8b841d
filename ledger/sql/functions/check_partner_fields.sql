CREATE OR REPLACE FUNCTION check_partner_fields(p_name text, p_category text, p_address text,
                                     p_latitude double precision, p_longitude double precision)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF p_name IS NOT NULL AND length(btrim(p_name)) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'a partner name has 1 to 200 characters' USING ERRCODE = 'HD422';
    END IF;
    IF p_category IS NOT NULL AND p_category NOT IN ('BOOKSHOP', 'EQUIPMENT') THEN
        RAISE EXCEPTION 'a partner category is BOOKSHOP or EQUIPMENT (got %)', p_category USING ERRCODE = 'HD422';
    END IF;
    IF p_address IS NOT NULL AND length(btrim(p_address)) NOT BETWEEN 1 AND 300 THEN
        RAISE EXCEPTION 'a partner address has 1 to 300 characters' USING ERRCODE = 'HD422';
    END IF;
    IF p_latitude IS NOT NULL AND NOT p_latitude BETWEEN -90 AND 90
       OR p_longitude IS NOT NULL AND NOT p_longitude BETWEEN -180 AND 180 THEN
        RAISE EXCEPTION 'coordinates are a latitude in [-90, 90] and a longitude in [-180, 180]'
            USING ERRCODE = 'HD422';
    END IF;
END $$;
