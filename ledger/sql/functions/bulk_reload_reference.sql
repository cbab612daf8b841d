-- The reference of a beneficiary's bulk reload for a year. Zero-padded, so that references sort
-- as beneficiary ids do and a chunk's id range is a range of transfers_reload_once.
-- ::text, not text || integer (a STABLE operator): an IMMUTABLE body calling a STABLE function
-- is not inlined, and each call then ran an executor of its own (tests/test_plan_stability.py).
CREATE OR REPLACE FUNCTION bulk_reload_reference(p_school_year integer, p_beneficiary_id bigint) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'bulk:' || p_school_year::text || ':' || lpad(p_beneficiary_id::text, 12, '0')
$$;
