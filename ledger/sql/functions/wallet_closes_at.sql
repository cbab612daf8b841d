-- A school year's wallets close on 1 May 00:00 of its second calendar year (business time):
-- from then nothing is spent, refunded into or reloaded into them, and what is left expires
-- (expire_school_year()). The one place 1 May is written.
CREATE OR REPLACE FUNCTION wallet_closes_at(p_school_year integer) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT make_timestamp(p_school_year + 1, 5, 1, 0, 0, 0) AT TIME ZONE business_time_zone()
$$;
