-- The school year of a reload: the current one, or in May and June (its wallet closed) the next.
CREATE OR REPLACE FUNCTION reload_school_year() RETURNS integer LANGUAGE sql STABLE AS $$
    SELECT school_year_of(t) + CASE WHEN in_wallet_window(t) THEN 0 ELSE 1 END
      FROM (SELECT business_now() AT TIME ZONE 'Europe/Paris' AS t) now
$$;
