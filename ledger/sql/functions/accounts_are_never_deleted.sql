CREATE OR REPLACE FUNCTION accounts_are_never_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger accounts are never deleted (account %)', OLD.id
        USING ERRCODE = 'integrity_constraint_violation';
END $$;

CREATE OR REPLACE TRIGGER accounts_are_never_deleted BEFORE DELETE ON accounts
    FOR EACH ROW EXECUTE FUNCTION accounts_are_never_deleted();
