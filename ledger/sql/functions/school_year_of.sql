-- The school year an instant belongs to (see school_year_starts_at()). One expression with no
-- FROM, so that PostgreSQL inlines it: written with a FROM subquery it was executed as a SQL
-- function on every call, 0.13 ms per authorization with in_wallet_window(), which calls it twice.
CREATE OR REPLACE FUNCTION school_year_of(p_at timestamptz) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT extract(year FROM p_at AT TIME ZONE business_time_zone())::integer
           - CASE WHEN p_at < school_year_starts_at(
                      extract(year FROM p_at AT TIME ZONE business_time_zone())::integer)
                  THEN 1 ELSE 0 END
$$;
