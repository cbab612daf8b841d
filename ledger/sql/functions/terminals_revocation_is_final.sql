CREATE OR REPLACE FUNCTION terminals_revocation_is_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = 'REVOKED' AND NEW.status <> 'REVOKED' THEN
        RAISE EXCEPTION 'terminal % is revoked: provision a new terminal instead', OLD.id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER terminals_revocation_is_final BEFORE UPDATE ON terminals
    FOR EACH ROW EXECUTE FUNCTION terminals_revocation_is_final();
