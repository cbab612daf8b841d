CREATE OR REPLACE FUNCTION settlement_bank_account() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_id bigint;
BEGIN
    SELECT id INTO v_id FROM accounts WHERE kind = 'SETTLEMENT_BANK';
    IF NOT FOUND THEN
        INSERT INTO accounts (kind) VALUES ('SETTLEMENT_BANK')
        ON CONFLICT (kind) WHERE kind = 'SETTLEMENT_BANK' DO NOTHING;
        SELECT id INTO v_id FROM accounts WHERE kind = 'SETTLEMENT_BANK';
    END IF;
    RETURN v_id;
END $$;
