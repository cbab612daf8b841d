-- "Mot de passe oublié": a single-use link by e-mail that expires (ledger/students.py). The
-- link's token is kept as its SHA-256 only; a used or expired one opens nothing.
CREATE TABLE student_password_resets (
    id          bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id  bigint  NOT NULL REFERENCES student_accounts,
    token_hash  bytea   NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX student_password_resets_by_account ON student_password_resets (account_id, created_at);
