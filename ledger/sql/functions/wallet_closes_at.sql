-- When a school year's wallets close: 1 May 00:00 Europe/Paris of its second calendar year.
-- (STABLE, like make_timestamptz with a time zone: the zone database may change.)
CREATE OR REPLACE FUNCTION wallet_closes_at(p_school_year integer) RETURNS timestamptz LANGUAGE sql STABLE AS $$
    SELECT make_timestamptz(p_school_year + 1, 5, 1, 0, 0, 0, 'Europe/Paris')
$$;
