-- The reference of a beneficiary's bulk reload for a year. Zero-padded, so that references sort
-- as beneficiary ids do and a chunk's id range is a range of transfers_reload_once.
CREATE OR REPLACE FUNCTION bulk_reload_reference(p_school_year integer, p_beneficiary_id bigint) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'bulk:' || p_school_year || ':' || lpad(p_beneficiary_id::text, 12, '0')
$$;
