CREATE OR REPLACE FUNCTION operators_are_never_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'operator accounts are never deleted (operator %): disable it', OLD.login
        USING ERRCODE = 'integrity_constraint_violation';
END $$;

CREATE OR REPLACE TRIGGER operators_are_never_deleted BEFORE DELETE ON operators
    FOR EACH ROW EXECUTE FUNCTION operators_are_never_deleted();
