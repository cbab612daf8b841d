-- School year Y (named by the calendar year it starts in: 2026 = 2026-2027) runs from 1 July Y
-- 00:00 to 1 July Y+1 00:00, business time. The one place 1 July is written.
CREATE OR REPLACE FUNCTION school_year_starts_at(p_school_year integer) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT make_timestamp(p_school_year, 7, 1, 0, 0, 0) AT TIME ZONE business_time_zone()
$$;
