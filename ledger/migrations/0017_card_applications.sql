-- First-card applications made online by the students themselves (portal: "Créer un compte →
-- première demande de carte"; ledger/card_applications.py). The campaign for school year Y opens
-- on a day of the rules table (21 June by the region's documents: first_card_requests_open_at())
-- and closes with the year's wallet (wallet_closes_at(), 1 May). An applicant's account is a
-- student account tied to the application until it becomes a beneficiary (a dossier), when the
-- application is sent; its card request then goes through the operators' existing states.
ALTER TABLE rules
    ADD COLUMN first_card_requests_open_month smallint NOT NULL DEFAULT 6
        CHECK (first_card_requests_open_month BETWEEN 1 AND 6),
    ADD COLUMN first_card_requests_open_day smallint NOT NULL DEFAULT 21
        CHECK (first_card_requests_open_day BETWEEN 1 AND 30),
    ADD CONSTRAINT rules_first_card_requests_open_every_year
        CHECK ((first_card_requests_open_month, first_card_requests_open_day) <> (2, 29));

CREATE TABLE card_applications (
    id                 bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    school_year        integer NOT NULL CHECK (school_year BETWEEN 2000 AND 2100),
    last_name          text    NOT NULL CHECK (length(last_name) BETWEEN 1 AND 100),
    first_name         text    NOT NULL CHECK (length(first_name) BETWEEN 1 AND 100),
    birth_date         date    NOT NULL,
    email              text    NOT NULL CHECK (email ~ '^[^@\s]+@[^@\s]+\.[^@\s]+$' AND length(email) <= 254),
    -- The programme's rules the applicant read and accepted: their version, and when.
    rules_version      text    NOT NULL CHECK (length(rules_version) BETWEEN 1 AND 40),
    consented_at       timestamptz NOT NULL,
    created_at         timestamptz NOT NULL,
    -- "Poursuivre ma demande": where the card is mailed, and the establishment.
    address_line       text    CHECK (length(address_line) BETWEEN 1 AND 200),
    address_complement text    CHECK (length(address_complement) BETWEEN 1 AND 200),
    mailbox_name       text    CHECK (length(mailbox_name) BETWEEN 1 AND 100),
    postcode           text    CHECK (postcode ~ '^[0-9]{5}$'),
    town               text    CHECK (length(town) BETWEEN 1 AND 100),
    establishment_id   integer REFERENCES establishments,
    -- The photo, stored outside the web root (HDFPAY_PHOTO_DIR) under a name of our own.
    photo_file         text    CHECK (photo_file ~ '^[0-9a-f]{32}\.(jpg|png)$'),
    photo_bytes        integer CHECK (photo_bytes > 0),
    photo_width_px     integer CHECK (photo_width_px > 0),
    photo_height_px    integer CHECK (photo_height_px > 0),
    submitted_at       timestamptz,
    beneficiary_id     bigint  UNIQUE REFERENCES beneficiaries,
    CHECK ((submitted_at IS NULL) = (beneficiary_id IS NULL))
);

ALTER TABLE student_accounts
    ALTER COLUMN beneficiary_id DROP NOT NULL,
    ADD COLUMN application_id bigint UNIQUE REFERENCES card_applications,
    ADD CONSTRAINT student_accounts_of_someone
        CHECK (beneficiary_id IS NOT NULL OR application_id IS NOT NULL);
