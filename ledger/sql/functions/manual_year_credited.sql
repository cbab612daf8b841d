-- The beneficiaries with an id in (p_after_id, p_upto_id] (a bulk chunk) whose wallet for
-- p_school_year received their year's credit from a manual reload.
CREATE OR REPLACE FUNCTION manual_year_credited(p_school_year integer, p_after_id bigint, p_upto_id bigint)
RETURNS TABLE (beneficiary_id bigint) LANGUAGE sql STABLE AS $$
    SELECT b.id FROM transfers t
      JOIN beneficiaries b
        ON b.dossier_number = substr(t.reference, length(manual_year_credit_reference(p_school_year, '')) + 1)
      JOIN wallets w
        ON w.beneficiary_id = b.id AND w.school_year = p_school_year AND w.account_id = t.credit_account_id
     WHERE t.code = 'RELOAD' AND t.reference LIKE 'reload:%'
       AND t.reference ~>=~ manual_year_credit_reference(p_school_year, '')
       AND t.reference ~<~ ('reload:' || p_school_year || ';')       -- ';' follows ':'
       AND t.reference = manual_year_credit_reference(p_school_year, b.dossier_number)
       AND b.id > p_after_id AND b.id <= p_upto_id
$$;
