-- The school year's operations: programme amounts and bulk reload runs.
--
-- Programme amounts live in reload_programmes, per school year, managed by operators
-- (`hdfpay programmes set`), never in code.

CREATE TABLE reload_programmes (
    school_year   integer NOT NULL CHECK (school_year BETWEEN 2000 AND 2100),
    programme     text    NOT NULL CHECK (programme ~ '^[A-Z][A-Z0-9_]{1,31}$'),
    amount_cents  bigint  NOT NULL CHECK (amount_cents BETWEEN 1 AND 100000),
    PRIMARY KEY (school_year, programme)
);

-- One row per bulk reload run. Chunks of beneficiaries (by id) commit one at a time and move
-- after_beneficiary_id forward, so a crashed run resumes where its last chunk committed. Each
-- beneficiary is credited at most once per school year whatever happens (reference
-- bulk_reload_reference(year, beneficiary id) under transfers_reload_once), so a resumed or
-- repeated run never credits twice; a later run credits only those renewed since.
CREATE TABLE bulk_reload_runs (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    school_year           integer NOT NULL CHECK (school_year BETWEEN 2000 AND 2100),
    started_by            text    NOT NULL,
    started_at            timestamptz NOT NULL,
    finished_at           timestamptz,
    amounts               jsonb   NOT NULL,   -- programme → amount_cents, as they were at the start
    beneficiaries_total   bigint  NOT NULL,   -- with rights for the year when the run started
    after_beneficiary_id  bigint  NOT NULL DEFAULT 0,
    chunks_done           integer NOT NULL DEFAULT 0,
    beneficiaries_seen    bigint  NOT NULL DEFAULT 0,
    wallets_credited      bigint  NOT NULL DEFAULT 0,
    wallets_opened        bigint  NOT NULL DEFAULT 0,
    without_amount        bigint  NOT NULL DEFAULT 0,
    credited_cents        bigint  NOT NULL DEFAULT 0,
    fee_recovered_cents   bigint  NOT NULL DEFAULT 0
);
-- At most one unfinished run per school year: a second start resumes it.
CREATE UNIQUE INDEX bulk_reload_one_open_run ON bulk_reload_runs (school_year) WHERE finished_at IS NULL;
