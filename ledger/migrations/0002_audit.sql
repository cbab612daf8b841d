-- The audit trail of operator actions: who, when, what, before and after. Append-only (triggers
-- refuse UPDATE, DELETE and TRUNCATE) and hash-chained: each row's hash covers its content and
-- the previous row's hash, and audit_head holds the last (id, hash), so `hdfpay audit verify`
-- finds a row altered, inserted or deleted anywhere, the last one included.

CREATE TABLE audit_log (
    id             bigint PRIMARY KEY,
    occurred_at    timestamptz NOT NULL,
    actor          text  NOT NULL CHECK (length(actor) BETWEEN 1 AND 200),
    action         text  NOT NULL CHECK (action ~ '^[a-z][a-z0-9_.]{1,63}$'),
    subject        text  NOT NULL CHECK (length(subject) BETWEEN 1 AND 200),
    before         jsonb,
    after          jsonb,
    previous_hash  bytea NOT NULL CHECK (length(previous_hash) = 32),
    row_hash       bytea NOT NULL UNIQUE CHECK (length(row_hash) = 32)
);

CREATE TABLE audit_head (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_id    bigint NOT NULL,
    last_hash  bytea  NOT NULL
);
INSERT INTO audit_head VALUES (true, 0, '\x0000000000000000000000000000000000000000000000000000000000000000');
