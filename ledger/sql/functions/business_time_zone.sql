-- The region's business time zone: business days, the school year and its dates are read on
-- this clock. The one place it is spelled, but for the extended statistics of 0001_schema.sql,
-- which must repeat the expression the planner sees once business_day_of() is inlined
-- (tests/test_school_calendar.py checks they agree).
CREATE OR REPLACE FUNCTION business_time_zone() RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 'Europe/Paris'
$$;
