-- The wallet window: an instant at which its school year's wallets are open, [1 July, 1 May).
-- May and June are outside.
CREATE OR REPLACE FUNCTION in_wallet_window(p_at timestamptz) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_at >= wallet_opens_at(y) AND p_at < wallet_closes_at(y)
      FROM (SELECT school_year_of(p_at) AS y) year
$$;
