-- The reference of the manual year's credit. ledger/reload.py passes NULL for it.
CREATE OR REPLACE FUNCTION manual_year_credit_reference(p_school_year integer, p_dossier_number text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT 'reload:' || p_school_year || ':' || p_dossier_number
$$;
