-- The wallet window of school year Y is [1 July Y 00:00, 1 May Y+1 00:00) local time: May and June
-- are outside.
CREATE OR REPLACE FUNCTION in_wallet_window(local_time timestamp) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT extract(month FROM local_time) NOT IN (5, 6)
$$;
