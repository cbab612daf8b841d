-- The school year an instant belongs to (see school_year_starts_at()).
CREATE OR REPLACE FUNCTION school_year_of(p_at timestamptz) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT y - CASE WHEN p_at < school_year_starts_at(y) THEN 1 ELSE 0 END
      FROM (SELECT extract(year FROM p_at AT TIME ZONE business_time_zone())::integer AS y) local
$$;
