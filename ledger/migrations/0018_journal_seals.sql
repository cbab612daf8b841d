-- Seals of the journal (issue 14 §2): the transfers and the audit trail, each a stream of seals.
-- A seal covers the stream's rows with ids first_id..last_id (first_id = the previous seal's
-- last_id + 1; ids no transaction committed are simply absent): `digest` is SHA-256 over their
-- canonical bytes in id order, and `mac` an HMAC-SHA-256, under a key the HSM holds (key_alias),
-- over the seal's fields and the previous seal's MAC. The database cannot compute the MAC, so
-- whoever can write these tables without the HSM cannot rewrite a sealed row, nor forge, reorder
-- or drop a seal in the middle, unseen (`hdfpay check`, `hdfpay audit verify`). Written by
-- `hdfpay ledger seal` (hdfpay/journal_sealing.py), never on the hot path.

CREATE TABLE journal_seals (
    stream        text   NOT NULL CHECK (stream IN ('audit', 'transfers')),
    seq           bigint NOT NULL CHECK (seq >= 1),
    first_id      bigint NOT NULL CHECK (first_id >= 1),
    last_id       bigint NOT NULL,
    row_count     bigint NOT NULL CHECK (row_count >= 1),
    digest        bytea  NOT NULL CHECK (length(digest) = 32),
    previous_mac  bytea  NOT NULL CHECK (length(previous_mac) = 32),
    key_alias     text   NOT NULL CHECK (length(key_alias) BETWEEN 1 AND 64),
    sealed_at     timestamptz NOT NULL,
    mac           bytea  NOT NULL UNIQUE CHECK (length(mac) = 32),
    PRIMARY KEY (stream, seq),
    CHECK (last_id >= first_id AND row_count <= last_id - first_id + 1)
);
