-- An instant as people read it in messages: '1 May 2027 00:00 (Europe/Paris)'.
CREATE OR REPLACE FUNCTION business_time_text(p_at timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT to_char(p_at AT TIME ZONE business_time_zone(), 'FMDD FMMonth YYYY HH24:MI')
           || ' (' || business_time_zone() || ')'
$$;
