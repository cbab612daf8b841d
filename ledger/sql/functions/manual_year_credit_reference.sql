-- The reference of the manual year's credit. ledger/reload.py passes NULL for it.
-- ::text, not text || integer (a STABLE operator): an IMMUTABLE body calling a STABLE function
-- is not inlined, and each call then ran an executor of its own (tests/test_plan_stability.py).
CREATE OR REPLACE FUNCTION manual_year_credit_reference(p_school_year integer, p_dossier_number text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT 'reload:' || p_school_year::text || ':' || p_dossier_number
$$;
