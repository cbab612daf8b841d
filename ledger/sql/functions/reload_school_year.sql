-- The school year a reload or a seed is for: the current one, or once its wallets have closed
-- (May and June) the next one.
CREATE OR REPLACE FUNCTION reload_school_year() RETURNS integer LANGUAGE sql STABLE AS $$
    SELECT school_year_of(t) + CASE WHEN t >= wallet_closes_at(school_year_of(t)) THEN 1 ELSE 0 END
      FROM (SELECT business_now() AS t) now
$$;
