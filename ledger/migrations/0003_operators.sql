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
    created_at            timestamptz NOT NULL,     -- DEFAULT business_now() (sql/functions/business_now.sql)
    CONSTRAINT staff_have_their_establishment
        CHECK ((role = 'establishment_staff') = (establishment_id IS NOT NULL)),
    CONSTRAINT partners_have_their_partner
        CHECK ((role = 'partner') = (partner_id IS NOT NULL))
);

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
