-- The region's reference data, the cards, the terminals and the double-entry ledger.
--
-- Numbered migrations hold tables, indexes, constraints and data changes only. Every function,
-- trigger and view lives in its own file under ledger/sql/, re-applied by `hdfpay db migrate`
-- after these (ledger/migrate.py): the body a reader finds there is the one that runs.
-- Money is integer euro cents (bigint). Timestamps are timestamptz; business dates are computed in
-- the business time zone (business_time_zone()). A school year is named by the calendar year it
-- starts in (2026 = 2026-2027).
--
-- Business timestamps (when a transfer, a renewal, a card… happened for the region's rules and
-- reports) come from the business clock, business_now(): the wall clock unless tests or the demo
-- pinned it (clock_override). Functions set them explicitly; the columns default to
-- business_now() for other writers, set in sql/functions/business_now.sql (numbered migrations
-- run before the function exists). Purely technical timestamps keep the wall clock:
-- schema_migrations / schema_repeatables.applied_at (when code was deployed) and
-- terminal_keys.created_at (orders a terminal's keys for rotation).

CREATE TABLE establishments (
    id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uai         text NOT NULL UNIQUE CHECK (uai ~ '^[0-9]{7}[A-Z]$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    kind        text NOT NULL CHECK (kind IN ('LYCEE', 'LP', 'CFA'))
);

CREATE TABLE beneficiaries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dossier_number   text NOT NULL UNIQUE CHECK (dossier_number ~ '^[0-9A-Z]{6,20}$'),
    last_name        text NOT NULL CHECK (length(last_name) BETWEEN 1 AND 100),
    first_name       text NOT NULL CHECK (length(first_name) BETWEEN 1 AND 100),
    birth_date       date NOT NULL,
    email            text NOT NULL CHECK (email ~ '^[^@\s]+@[^@\s]+$'),
    establishment_id integer NOT NULL REFERENCES establishments
);

-- Rights are renewed each school year by the student's establishment. Programme: what the
-- beneficiary's allocation is for in that school year (BOOKS for lycée students, EQUIPMENT for
-- vocational students and apprentices); it belongs to the year's rights, since a student may
-- change track from one year to the next. Without one given, the establishment's kind decides
-- (trigger rights_default_programme).
CREATE TABLE rights (
    beneficiary_id  bigint  NOT NULL REFERENCES beneficiaries,
    school_year     integer NOT NULL CHECK (school_year BETWEEN 2000 AND 2100),
    renewed_by      text    NOT NULL,
    renewed_at      timestamptz NOT NULL,          -- DEFAULT business_now()
    programme       text    NOT NULL CHECK (programme ~ '^[A-Z][A-Z0-9_]{1,31}$'),
    PRIMARY KEY (beneficiary_id, school_year)
);
-- The bulk reload walks a year's rights by beneficiary id.
CREATE INDEX rights_by_school_year ON rights (school_year, beneficiary_id);

-- The region's limits and fees, one row: data the database holds, so every server and command
-- applies the same (an operator command may set them; each change goes through the audit trail).
CREATE TABLE rules (
    only_row                   boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    -- A purchase above it is declined (61).
    max_purchase_amount_cents  bigint  NOT NULL CHECK (max_purchase_amount_cents BETWEEN 1 AND 10000000),
    -- The beneficiary's share of a card replacement, when the status charges it (card_statuses).
    replacement_fee_cents      bigint  NOT NULL CHECK (replacement_fee_cents BETWEEN 0 AND 100000)
);
INSERT INTO rules VALUES (true, 30000, 500);

-- A card's status: ACTIVE, or one of the oppositions (irreversible: trigger
-- cards_opposition_is_irreversible), with the response code a terminal answers for it and whether
-- replacing a card so opposed costs the replacement fee (a defective card, returned by mail, is
-- replaced free).
CREATE TABLE card_statuses (
    status               text    PRIMARY KEY CHECK (status ~ '^[A-Z]{2,20}$'),
    is_opposition        boolean NOT NULL,
    decline_code         char(2) CHECK ((decline_code IS NOT NULL) = is_opposition),
    replacement_charged  boolean NOT NULL CHECK (is_opposition OR NOT replacement_charged)
);
INSERT INTO card_statuses VALUES
    ('ACTIVE', false, NULL, false),
    ('LOST', true, '41', true),
    ('STOLEN', true, '43', true),
    ('DAMAGED', true, '62', true),
    ('DEFECTIVE', true, '62', false);

CREATE TABLE cards (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    card_number     text   NOT NULL UNIQUE CHECK (card_number ~ '^[0-9]{16}$'),
    uid             bytea  NOT NULL UNIQUE CHECK (length(uid) IN (4, 7, 10)),
    beneficiary_id  bigint NOT NULL REFERENCES beneficiaries,
    status          text   NOT NULL DEFAULT 'ACTIVE' REFERENCES card_statuses,
    opposed_at      timestamptz,
    issued_at       timestamptz NOT NULL,          -- DEFAULT business_now()
    CHECK ((status = 'ACTIVE') = (opposed_at IS NULL))
);
CREATE INDEX cards_beneficiary ON cards (beneficiary_id);

-- Ledger accounts. Wallet accounts carry posted totals because the no-overdraft rule is a CHECK on
-- them; every other account's balance is the sum of its transfers, so that merchant accounts are
-- never written (never row-locked) on the authorization path.
CREATE TABLE accounts (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            text   NOT NULL CHECK (kind IN ('WALLET', 'MERCHANT_PAYABLE', 'REGION_FUNDING',
                                                    'FEE_INCOME', 'EXPIRED_FUNDS', 'SETTLEMENT_BANK')),
    debits_posted   bigint NOT NULL DEFAULT 0 CHECK (debits_posted >= 0),
    credits_posted  bigint NOT NULL DEFAULT 0 CHECK (credits_posted >= 0),
    CONSTRAINT wallet_never_overdrawn CHECK (kind <> 'WALLET' OR debits_posted <= credits_posted),
    CONSTRAINT only_wallets_keep_totals CHECK (kind = 'WALLET' OR (debits_posted = 0 AND credits_posted = 0))
);

-- The single region-wide accounts, found by kind.
CREATE UNIQUE INDEX accounts_one_per_region_kind ON accounts (kind)
    WHERE kind IN ('REGION_FUNDING', 'FEE_INCOME', 'EXPIRED_FUNDS');
INSERT INTO accounts (kind) VALUES ('REGION_FUNDING'), ('FEE_INCOME'), ('EXPIRED_FUNDS');
-- One per region, created by the first settlement run (settlement_bank_account()).
CREATE UNIQUE INDEX accounts_one_settlement_bank ON accounts (kind) WHERE kind = 'SETTLEMENT_BANK';

-- One wallet per beneficiary per school year.
CREATE TABLE wallets (
    beneficiary_id  bigint  NOT NULL REFERENCES beneficiaries,
    school_year     integer NOT NULL CHECK (school_year BETWEEN 2000 AND 2100),
    account_id      bigint  NOT NULL UNIQUE REFERENCES accounts,
    PRIMARY KEY (beneficiary_id, school_year)
);
-- The expiry walks a year's wallets.
CREATE INDEX wallets_by_school_year ON wallets (school_year);

-- payee_name, iban, bic: where a partner is paid. Checked with schwifty (IBAN checksums, national
-- RIB key, BIC) when set and again when a payout file is made; the CHECKs here only keep the shape.
CREATE TABLE partners (
    id              integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text    NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    category        text    NOT NULL CHECK (category IN ('BOOKSHOP', 'EQUIPMENT')),
    address         text    NOT NULL,
    latitude        double precision NOT NULL CHECK (latitude BETWEEN -90 AND 90),
    longitude       double precision NOT NULL CHECK (longitude BETWEEN -180 AND 180),
    status          text    NOT NULL DEFAULT 'ACTIVE' CHECK (status IN ('ACTIVE', 'SUSPENDED', 'CLOSED')),
    merchant_account_id bigint NOT NULL UNIQUE REFERENCES accounts,
    payee_name      text    CHECK (length(payee_name) BETWEEN 1 AND 70),
    iban            text    CHECK (iban ~ '^[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}$'),
    bic             text    CHECK (bic ~ '^[A-Z]{6}[A-Z0-9]{2}([A-Z0-9]{3})?$')
);
-- Geosearch: a bounding box on this B-tree (category first, so a category filter or a list of
-- categories is an index condition), then the exact haversine distance.
CREATE INDEX partners_geo ON partners (category, latitude, longitude);

-- A terminal is PENDING from its provisioning until an operator activates it; REVOKED is final.
CREATE TABLE terminals (
    id              text    PRIMARY KEY CHECK (id ~ '^[A-Z0-9-]{4,32}$'),
    partner_id      integer NOT NULL REFERENCES partners,
    status          text    NOT NULL DEFAULT 'PENDING'
                    CHECK (status IN ('PENDING', 'ACTIVE', 'SUSPENDED', 'REVOKED'))
);
CREATE INDEX terminals_partner ON terminals (partner_id);

-- A terminal's AES-DUKPT initial keys, by initial key id (BDK id || derivation id). The KSN
-- counter of each must strictly increase (replay protection). During a rotation a terminal has
-- two ACTIVE keys; the first message under the newer one retires the older.
CREATE TABLE terminal_keys (
    initial_key_id  bytea   PRIMARY KEY CHECK (length(initial_key_id) = 8),
    terminal_id     text    NOT NULL REFERENCES terminals,
    status          text    NOT NULL DEFAULT 'ACTIVE' CHECK (status IN ('ACTIVE', 'RETIRED')),
    last_counter    bigint  NOT NULL DEFAULT -1 CHECK (last_counter BETWEEN -1 AND 4294967295),
    -- Technical, not business time: orders a terminal's keys for rotation (accept_ksn()).
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX terminal_keys_terminal ON terminal_keys (terminal_id);
CREATE SEQUENCE terminal_key_derivation_id MAXVALUE 4294967295;

-- Every terminal message that reached the ledger, keyed by (terminal, request id): the stored
-- response is replayed for a retry. A row with request_hash NULL is a tombstone left by a reversal
-- that arrived before its original: the late original is then declined.
CREATE TABLE authorizations (
    id                      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    terminal_id             text    NOT NULL REFERENCES terminals,
    request_id              text    NOT NULL,
    message_type            text    NOT NULL CHECK (message_type IN ('PURCHASE', 'REVERSAL', 'REFUND',
                                                                       'BATCH_CLOSE')),
    request_hash            bytea,
    stan                    integer CHECK (stan BETWEEN 0 AND 999999),
    card_id                 bigint  REFERENCES cards,
    wallet_account_id       bigint,
    school_year             integer,
    original_id             bigint  REFERENCES authorizations,
    amount_requested_cents  bigint  CHECK (amount_requested_cents >= 0),
    amount_approved_cents   bigint  NOT NULL DEFAULT 0 CHECK (amount_approved_cents >= 0),
    amount_reversed_cents   bigint  NOT NULL DEFAULT 0 CHECK (amount_reversed_cents >= 0),
    amount_refunded_cents   bigint  NOT NULL DEFAULT 0 CHECK (amount_refunded_cents >= 0),
    response_code           char(2) NOT NULL,
    auth_code               text,
    rrn                     text    UNIQUE,
    terminal_local_time     timestamp,
    created_at              timestamptz NOT NULL,
    response                text    NOT NULL,
    UNIQUE (terminal_id, request_id),
    CHECK (amount_reversed_cents + amount_refunded_cents <= amount_approved_cents)
);

CREATE SEQUENCE rrn_sequence MAXVALUE 99999999 CYCLE;

-- Batch close (the terminal's end of day): the terminal sends the counts and totals of its batch,
-- that is every message it sent since its previous close; the ledger counts the same from what it
-- approved and answers in balance (00) or out of balance (95, ISO 8583's "reconcile error") with
-- the differences. The batch closes either way: an out-of-balance batch is for the region's staff
-- to look into, with both sets of totals kept here. A batch close is a terminal message like any
-- other (MAC'd, KSN checked, replayed byte for byte on a retry), hence its row in authorizations.
CREATE TABLE terminal_batches (
    id                      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    terminal_id             text    NOT NULL REFERENCES terminals,
    batch_number            integer NOT NULL CHECK (batch_number > 0),
    -- The batch is the terminal's authorizations with first_authorization_id <= id < close_authorization_id.
    first_authorization_id  bigint  NOT NULL,
    close_authorization_id  bigint  NOT NULL UNIQUE REFERENCES authorizations,
    terminal_totals         jsonb   NOT NULL,
    ledger_totals           jsonb   NOT NULL,
    in_balance              boolean NOT NULL,
    closed_at               timestamptz NOT NULL,
    UNIQUE (terminal_id, batch_number)
);

-- Replacement fees that could not be taken from the balance, recovered from the next reload.
CREATE TABLE pending_fees (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    beneficiary_id  bigint NOT NULL REFERENCES beneficiaries,
    amount_cents    bigint NOT NULL CHECK (amount_cents > 0),
    recovered_cents bigint NOT NULL DEFAULT 0 CHECK (recovered_cents >= 0),
    reason          text   NOT NULL,
    created_at      timestamptz NOT NULL,          -- DEFAULT business_now()
    CHECK (recovered_cents <= amount_cents)
);
CREATE INDEX pending_fees_open ON pending_fees (beneficiary_id) WHERE recovered_cents < amount_cents;

-- Immutable double-entry transfers: one amount, one debited and one credited account.
-- debit/credit accounts carry no foreign key on purpose: a foreign-key check takes a KEY SHARE
-- lock on the referenced row, and merchant accounts are hot rows; accounts are never deleted.
CREATE TABLE transfers (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code                text   NOT NULL CHECK (code IN ('PURCHASE', 'REVERSAL', 'REFUND', 'RELOAD',
                                                        'REPLACEMENT_FEE', 'EXPIRY', 'SETTLEMENT')),
    debit_account_id    bigint NOT NULL,
    credit_account_id   bigint NOT NULL CHECK (credit_account_id <> debit_account_id),
    amount_cents        bigint NOT NULL CHECK (amount_cents > 0),
    authorization_id    bigint,
    reference           text,
    created_at          timestamptz NOT NULL       -- DEFAULT business_now()
);
CREATE INDEX transfers_debit_account ON transfers (debit_account_id);
CREATE INDEX transfers_credit_account ON transfers (credit_account_id);
CREATE UNIQUE INDEX transfers_reload_once ON transfers (reference) WHERE code = 'RELOAD';
CREATE UNIQUE INDEX transfers_settlement_once ON transfers (reference) WHERE code = 'SETTLEMENT';
-- Manual reloads are few beside the bulk's and the purchases: this partial index holds only the
-- RELOAD references that begin 'reload:', in byte order (text_pattern_ops), so that a school
-- year's manual credits are one short range scan whatever the database's collation, and the bulk
-- reload does not probe the journal once per beneficiary (manual_year_credited()).
CREATE INDEX transfers_manual_reloads ON transfers (reference text_pattern_ops)
    WHERE code = 'RELOAD' AND reference LIKE 'reload:%';

-- Business days are ranges of created_at: block-range indexes cost the authorization path almost
-- nothing (rows arrive in time order) and let settlement and reports read only their days.
CREATE INDEX transfers_created_at_brin ON transfers USING brin (created_at);
CREATE INDEX authorizations_created_at_brin ON authorizations USING brin (created_at);
-- How many business days the rows span: without it the planner takes every row for its own
-- (partner, day) group and sorts a million rows on disk instead of hashing a few thousand groups.
-- The expression is business_day_of(created_at) as the planner sees it once inlined (a function
-- cannot be called here: numbered migrations run before the function files);
-- tests/test_school_calendar.py checks the two agree.
CREATE STATISTICS transfers_business_day ON ((created_at AT TIME ZONE 'Europe/Paris')::date) FROM transfers;
CREATE STATISTICS authorizations_business_day ON ((created_at AT TIME ZONE 'Europe/Paris')::date) FROM authorizations;

-- Tests and the demo pin the business clock here; with no row, business time is now().
CREATE TABLE clock_override (
    only_row    boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    pinned_at   timestamptz NOT NULL
);
