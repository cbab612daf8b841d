-- The online first-card campaign for school year Y opens on a day before it starts (21 June Y
-- 00:00 business time by default: table rules) and closes with the year's wallet
-- (wallet_closes_at(Y), 1 May Y+1).
CREATE OR REPLACE FUNCTION first_card_requests_open_at(p_school_year integer) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT make_timestamp(p_school_year, r.first_card_requests_open_month,
                          r.first_card_requests_open_day, 0, 0, 0) AT TIME ZONE business_time_zone()
      FROM rules r
$$;
