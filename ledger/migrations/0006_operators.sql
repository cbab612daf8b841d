-- People who use the operator API and CLI, and their sessions. An account has one role; staff
-- are bound to their establishment and partners to their partner, by the database and not only
-- by the code. Accounts are never deleted (disabled instead) so the audit trail's actors stay
-- meaningful. A session token is kept only as its SHA-256: a stolen copy of this table opens
-- nothing.

CREATE TABLE operators (
    id                    integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    login                 text    NOT NULL UNIQUE CHECK (login ~ '^[a-z][a-z0-9._-]{2,63}$'),
    role                  text    NOT NULL CHECK (role IN ('region_operator', 'establishment_staff',
                                                           'partner', 'auditor')),
    establishment_id      integer REFERENCES establishments,
    partner_id            integer REFERENCES partners,
    password_hash         text    NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
    must_change_password  boolean NOT NULL DEFAULT true,
    disabled              boolean NOT NULL DEFAULT false,
    -- Consecutive failed logins (reset by a success); at the limit the account is locked until
    -- locked_until, and login answers as for a wrong password without checking it.
    failed_logins         integer NOT NULL DEFAULT 0 CHECK (failed_logins >= 0),
    locked_until          timestamptz,
    created_at            timestamptz NOT NULL DEFAULT business_now(),
    CONSTRAINT staff_have_their_establishment
        CHECK ((role = 'establishment_staff') = (establishment_id IS NOT NULL)),
    CONSTRAINT partners_have_their_partner
        CHECK ((role = 'partner') = (partner_id IS NOT NULL))
);

CREATE FUNCTION operators_are_never_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'operator accounts are never deleted (operator %): disable it', OLD.login
        USING ERRCODE = 'integrity_constraint_violation';
END $$;
CREATE TRIGGER operators_are_never_deleted BEFORE DELETE ON operators
    FOR EACH ROW EXECUTE FUNCTION operators_are_never_deleted();

-- A role and its scope are fixed at creation: a new role is a new account, audited as such.
CREATE FUNCTION operators_role_is_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
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
CREATE TRIGGER operators_role_is_fixed BEFORE UPDATE ON operators
    FOR EACH ROW EXECUTE FUNCTION operators_role_is_fixed();

CREATE TABLE operator_sessions (
    id           bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_hash   bytea   NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    operator_id  integer NOT NULL REFERENCES operators,
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    revoked      boolean NOT NULL DEFAULT false,
    CHECK (expires_at > created_at)
);
CREATE INDEX operator_sessions_operator ON operator_sessions (operator_id);
