-- Retrieval reference number, 12 digits: YDDD (local Julian date) then an 8-digit sequence.
-- Unique as long as fewer than 100 million messages share a sequence cycle and a YDDD (ten years).
CREATE OR REPLACE FUNCTION next_rrn(local_time timestamp) RETURNS text LANGUAGE sql VOLATILE AS $$
    SELECT right(to_char(local_time, 'YYYY'), 1) || to_char(local_time, 'DDD')
           || lpad(nextval('rrn_sequence')::text, 8, '0')
$$;
