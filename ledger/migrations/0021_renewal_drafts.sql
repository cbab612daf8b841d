-- A rights-renewal CSV file between its dry run and "Appliquer" (backoffice/pages_renewal.py).
-- It was kept in the server's memory: with `serve --workers N` the two requests may reach two
-- processes, and the second did not know the file. Here every worker sees it. The page's token
-- is random; only its SHA-256 is stored, so a reader of this table cannot apply a file. A draft
-- lives RENEWAL_DRAFT_TTL_S (ledger/renewal_drafts.py) and is deleted when applied.
CREATE TABLE renewal_drafts (
    token_sha256  bytea       PRIMARY KEY CHECK (octet_length(token_sha256) = 32),
    operator_id   integer     NOT NULL REFERENCES operators (id) ON DELETE CASCADE,
    school_year   integer     NOT NULL,
    file_name     text        NOT NULL CHECK (length(file_name) BETWEEN 1 AND 100),
    data          bytea       NOT NULL CHECK (octet_length(data) <= 4000000),
    kept_at       timestamptz NOT NULL     -- DEFAULT business_now() (sql/functions/business_now.sql)
);
CREATE INDEX renewal_drafts_kept_at ON renewal_drafts (kept_at);
