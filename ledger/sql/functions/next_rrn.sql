-- Retrieval reference number, 12 digits: YDDD (business-time Julian date of p_at) then an 8-digit
-- sequence. Unique as long as fewer than 100 million messages share a sequence cycle and a YDDD
-- (ten years).
CREATE OR REPLACE FUNCTION next_rrn(p_at timestamptz) RETURNS text LANGUAGE sql VOLATILE AS $$
    SELECT right(to_char(local, 'YYYY'), 1) || to_char(local, 'DDD')
           || lpad(nextval('rrn_sequence')::text, 8, '0')
      FROM (SELECT p_at AT TIME ZONE business_time_zone() AS local) l
$$;
