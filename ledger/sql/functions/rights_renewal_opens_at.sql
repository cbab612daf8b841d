-- Establishments renew their students' rights for school year Y from a day before it starts (20
-- June Y 00:00 business time by default: table rules); renewal ends with the school year
-- (1 July Y+1).
CREATE OR REPLACE FUNCTION rights_renewal_opens_at(p_school_year integer) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT make_timestamp(p_school_year, r.rights_renewal_opens_month, r.rights_renewal_opens_day,
                          0, 0, 0) AT TIME ZONE business_time_zone()
      FROM rules r
$$;
