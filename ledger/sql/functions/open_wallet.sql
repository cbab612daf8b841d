CREATE OR REPLACE FUNCTION open_wallet(p_beneficiary_id bigint, p_school_year integer) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_account_id bigint;
BEGIN
    SELECT account_id INTO v_account_id FROM wallets
     WHERE beneficiary_id = p_beneficiary_id AND school_year = p_school_year;
    IF FOUND THEN
        RETURN v_account_id;
    END IF;
    INSERT INTO accounts (kind) VALUES ('WALLET') RETURNING id INTO v_account_id;
    INSERT INTO wallets (beneficiary_id, school_year, account_id)
    VALUES (p_beneficiary_id, p_school_year, v_account_id);
    RETURN v_account_id;
END $$;
