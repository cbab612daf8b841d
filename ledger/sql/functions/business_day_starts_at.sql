-- The first instant of a business day (midnight in the business time zone, DST included).
CREATE OR REPLACE FUNCTION business_day_starts_at(p_day date) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_day::timestamp AT TIME ZONE business_time_zone()
$$;
