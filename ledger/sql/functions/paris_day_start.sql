-- The start of a Paris business day as a timestamptz (DST included).
CREATE OR REPLACE FUNCTION paris_day_start(p_day date) RETURNS timestamptz LANGUAGE sql IMMUTABLE AS $$
    SELECT p_day::timestamp AT TIME ZONE 'Europe/Paris'
$$;
