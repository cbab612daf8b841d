-- The business day (date in the business time zone) of an instant: settlement and reports group
-- by it. IMMUTABLE and a single expression, so the planner inlines it and matches the extended
-- statistics on transfers and authorizations.
CREATE OR REPLACE FUNCTION business_day_of(p_at timestamptz) RETURNS date
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (p_at AT TIME ZONE business_time_zone())::date
$$;
