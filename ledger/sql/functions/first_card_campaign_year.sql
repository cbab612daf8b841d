-- The school year an online first-card application made at p_at is for: the next one from its
-- opening day (21 June), else the current one until its wallet closes (1 May); NULL between
-- the two, when no campaign is open.
CREATE OR REPLACE FUNCTION first_card_campaign_year(p_at timestamptz) RETURNS integer
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_at >= first_card_requests_open_at(y + 1) THEN y + 1
                WHEN p_at < wallet_closes_at(y) THEN y END
      FROM (SELECT school_year_of(p_at) AS y) AS now
$$;
