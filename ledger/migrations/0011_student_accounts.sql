-- The students' own accounts for "Mon espace Génération #HDF" (portal/), apart from the operators':
-- another population, another table, other sessions. A student logs in with the dossier number
-- or the number of one of their cards (ledger/students.py). The password is an argon2id hash;
-- wrong passwords lock the account for a while (failed_logins, locked_until), as for operators.
CREATE TABLE student_accounts (
    id                   bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    beneficiary_id       bigint  NOT NULL UNIQUE REFERENCES beneficiaries,
    password_hash        text    NOT NULL CHECK (length(password_hash) BETWEEN 20 AND 500),
    must_change_password boolean NOT NULL DEFAULT true,
    failed_logins        integer NOT NULL DEFAULT 0 CHECK (failed_logins >= 0),
    locked_until         timestamptz,
    created_at           timestamptz NOT NULL
);

-- A session is a random token in the student's cookie, kept here as its SHA-256 only.
CREATE TABLE student_sessions (
    id          bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_hash  bytea   NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    account_id  bigint  NOT NULL REFERENCES student_accounts,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    revoked     boolean NOT NULL DEFAULT false
);
CREATE INDEX student_sessions_by_account ON student_sessions (account_id);
