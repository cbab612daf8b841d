-- A school year's wallets open when the school year starts (1 July).
CREATE OR REPLACE FUNCTION wallet_opens_at(p_school_year integer) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT school_year_starts_at(p_school_year)
$$;
