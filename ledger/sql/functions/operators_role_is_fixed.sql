-- A role and its scope are fixed at creation: a new role is a new account, audited as such.
CREATE OR REPLACE FUNCTION operators_role_is_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.login <> OLD.login OR NEW.role <> OLD.role
       OR NEW.establishment_id IS DISTINCT FROM OLD.establishment_id
       OR NEW.partner_id IS DISTINCT FROM OLD.partner_id THEN
        RAISE EXCEPTION 'operator %: login, role and scope cannot change', OLD.login
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF OLD.disabled AND NOT NEW.disabled THEN
        RAISE EXCEPTION 'operator % is disabled: create a new account', OLD.login
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER operators_role_is_fixed BEFORE UPDATE ON operators
    FOR EACH ROW EXECUTE FUNCTION operators_role_is_fixed();
