-- Cards (opposition, replacement with its fee) and first-card requests.

-- A beneficiary has at most one usable card: a replacement or a first card cannot add a second.
CREATE UNIQUE INDEX cards_one_active_per_beneficiary ON cards (beneficiary_id) WHERE status = 'ACTIVE';

-- Card numbers we issue: '6331' (the demo seed uses '6330'), 11 digits from a sequence and a
-- Luhn check digit, so that a mistyped number is caught before it reaches the database.
CREATE SEQUENCE card_number_sequence MAXVALUE 99999999999;

-- One row per replaced card: a card is replaced at most once (primary key), and the fee's split
-- between what the balance paid and what waits for the next reload is kept.
CREATE TABLE card_replacements (
    old_card_id        bigint PRIMARY KEY REFERENCES cards,
    new_card_id        bigint NOT NULL UNIQUE REFERENCES cards,
    reason             text   NOT NULL REFERENCES card_statuses CHECK (reason <> 'ACTIVE'),
    school_year        integer NOT NULL,
    fee_cents          bigint NOT NULL CHECK (fee_cents >= 0),
    fee_taken_cents    bigint NOT NULL CHECK (fee_taken_cents >= 0),
    fee_pending_cents  bigint NOT NULL CHECK (fee_pending_cents >= 0),
    pending_fee_id     bigint UNIQUE REFERENCES pending_fees,
    replaced_by        text   NOT NULL,
    replaced_at        timestamptz NOT NULL,
    CHECK (fee_taken_cents + fee_pending_cents = fee_cents),
    CHECK ((fee_pending_cents > 0) = (pending_fee_id IS NOT NULL))
);

-- First-card requests: a state machine the beneficiary follows. The states and the legal moves
-- are data; every move is kept in card_request_history (append-only) and in the audit trail.
CREATE TABLE card_request_states (
    state     text    PRIMARY KEY,
    step      integer NOT NULL UNIQUE,
    label_fr  text    NOT NULL,
    final     boolean NOT NULL
);
INSERT INTO card_request_states VALUES
    ('SUBMITTED', 1, 'Demande reçue', false),
    ('PREVALIDATED', 2, 'Validée par l''établissement', false),
    ('PHOTO_CHECKED', 3, 'Photo vérifiée', false),
    ('PRINTED', 4, 'Carte imprimée', false),
    ('MAILED', 5, 'Carte envoyée', false),
    ('ACTIVE', 6, 'Carte active', true),
    ('REJECTED', 7, 'Demande refusée', true);

CREATE TABLE card_request_transitions (
    from_state  text NOT NULL REFERENCES card_request_states,
    to_state    text NOT NULL REFERENCES card_request_states,
    PRIMARY KEY (from_state, to_state)
);
INSERT INTO card_request_transitions VALUES
    ('SUBMITTED', 'PREVALIDATED'), ('PREVALIDATED', 'PHOTO_CHECKED'), ('PHOTO_CHECKED', 'PRINTED'),
    ('PRINTED', 'MAILED'), ('MAILED', 'ACTIVE'),
    ('SUBMITTED', 'REJECTED'), ('PREVALIDATED', 'REJECTED'), ('PHOTO_CHECKED', 'REJECTED'),
    ('PRINTED', 'REJECTED'), ('MAILED', 'REJECTED');

CREATE TABLE card_requests (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    beneficiary_id    bigint NOT NULL REFERENCES beneficiaries,
    state             text   NOT NULL REFERENCES card_request_states,
    rejection_reason  text   CHECK (length(rejection_reason) BETWEEN 1 AND 500),
    -- The printed card's chip UID and number (from the card manufacturer's file), known from PRINTED.
    card_uid          bytea  UNIQUE CHECK (length(card_uid) IN (4, 7, 10)),
    card_number       text   UNIQUE CHECK (card_number ~ '^[0-9]{16}$'),
    card_id           bigint UNIQUE REFERENCES cards,
    submitted_at      timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    CHECK ((state = 'REJECTED') = (rejection_reason IS NOT NULL)),
    CHECK (state NOT IN ('PRINTED', 'MAILED', 'ACTIVE') OR (card_uid IS NOT NULL AND card_number IS NOT NULL)),
    CHECK ((state = 'ACTIVE') = (card_id IS NOT NULL))
);
CREATE UNIQUE INDEX card_requests_one_open ON card_requests (beneficiary_id)
    WHERE state NOT IN ('ACTIVE', 'REJECTED');

CREATE TABLE card_request_history (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id   bigint NOT NULL REFERENCES card_requests,
    from_state   text   REFERENCES card_request_states,
    to_state     text   NOT NULL REFERENCES card_request_states,
    actor        text   NOT NULL,
    reason       text,
    occurred_at  timestamptz NOT NULL
);
CREATE INDEX card_request_history_request ON card_request_history (request_id, id);
