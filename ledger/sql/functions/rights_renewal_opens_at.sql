-- Establishments renew their students' rights for school year Y from 20 June Y 00:00 (business
-- time), before the school year starts; renewal ends with the school year (1 July Y+1).
-- HDFPAY_RENEWAL_OPENS may move the opening (ledger/rights_renewal.py).
CREATE OR REPLACE FUNCTION rights_renewal_opens_at(p_school_year integer) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT make_timestamp(p_school_year, 6, 20, 0, 0, 0) AT TIME ZONE business_time_zone()
$$;
