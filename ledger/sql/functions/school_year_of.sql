-- School year Y runs from 1 July Y (Europe/Paris local time).
CREATE OR REPLACE FUNCTION school_year_of(local_time timestamp) RETURNS integer LANGUAGE sql IMMUTABLE AS $$
    SELECT extract(year FROM local_time)::integer - CASE WHEN extract(month FROM local_time) >= 7 THEN 0 ELSE 1 END
$$;
