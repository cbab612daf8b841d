-- Cards (opposition, replacement with its fee), first-card requests, partners.
--
-- One function per operator action: it locks what it changes, checks the rules, makes the change,
-- moves the money with balanced transfers and appends the audit row, all in the caller's
-- transaction. Refusals raise our own SQLSTATEs, which ledger/cards.py turns into typed errors:
--   HD404 not found · HD409 conflicts with the current state · HD422 invalid request ·
--   HD403 outside the caller's scope (establishment staff and other establishments' students).

-- A beneficiary has at most one usable card: a replacement or a first card cannot add a second.
CREATE UNIQUE INDEX cards_one_active_per_beneficiary ON cards (beneficiary_id) WHERE status = 'ACTIVE';

-- Card numbers we issue: '6331' (the demo seed uses '6330'), 11 digits from a sequence and a
-- Luhn check digit, so that a mistyped number is caught before it reaches the database.
CREATE SEQUENCE card_number_sequence MAXVALUE 99999999999;

CREATE FUNCTION luhn_check_digit(p_digits text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT ((10 - sum(CASE WHEN (length(p_digits) - i) % 2 = 0
                           THEN (2 * d) / 10 + (2 * d) % 10 ELSE d END) % 10) % 10)::text
      FROM (SELECT i, substr(p_digits, i, 1)::integer AS d
              FROM generate_series(1, length(p_digits)) AS i) digits
$$;

CREATE FUNCTION new_card_number() RETURNS text LANGUAGE sql VOLATILE AS $$
    SELECT payload || luhn_check_digit(payload)
      FROM (SELECT '6331' || lpad(nextval('card_number_sequence')::text, 11, '0') AS payload) p
$$;

-- A new card row, refused clearly when its UID or number is taken or the beneficiary already has
-- an active card (the unique indexes stay the last line behind these checks).
CREATE FUNCTION issue_card(p_beneficiary_id bigint, p_uid bytea, p_card_number text,
                           p_at timestamptz) RETURNS cards LANGUAGE plpgsql AS $$
DECLARE
    v_card cards;
BEGIN
    IF p_uid IS NULL OR length(p_uid) NOT IN (4, 7, 10) THEN
        RAISE EXCEPTION 'a card UID is 4, 7 or 10 bytes (read from the new card''s chip)' USING ERRCODE = 'HD422';
    END IF;
    IF p_card_number IS NOT NULL AND p_card_number !~ '^[0-9]{16}$' THEN
        RAISE EXCEPTION 'a card number is 16 digits (got %)', p_card_number USING ERRCODE = 'HD422';
    END IF;
    IF EXISTS (SELECT 1 FROM cards WHERE uid = p_uid) THEN
        RAISE EXCEPTION 'a card with UID % already exists', encode(p_uid, 'hex') USING ERRCODE = 'HD409';
    END IF;
    IF EXISTS (SELECT 1 FROM cards WHERE card_number = p_card_number) THEN
        RAISE EXCEPTION 'card number % is already used', p_card_number USING ERRCODE = 'HD409';
    END IF;
    SELECT * INTO v_card FROM cards WHERE beneficiary_id = p_beneficiary_id AND status = 'ACTIVE';
    IF FOUND THEN
        RAISE EXCEPTION 'the beneficiary already has an active card (card %): declare it first',
            v_card.id USING ERRCODE = 'HD409';
    END IF;
    INSERT INTO cards (card_number, uid, beneficiary_id, issued_at)
    VALUES (coalesce(p_card_number, new_card_number()), p_uid, p_beneficiary_id, p_at)
    RETURNING * INTO v_card;
    RETURN v_card;
END $$;

-- Irreversible opposition (the trigger of 0001 forbids lifting it). The terminal then answers
-- 41 (LOST), 43 (STOLEN) or 62 (DAMAGED, DEFECTIVE).
CREATE FUNCTION oppose_card(p_card_id bigint, p_reason text, p_actor text) RETURNS cards
LANGUAGE plpgsql AS $$
DECLARE
    v_now  timestamptz := business_now();
    v_card cards;
BEGIN
    IF p_reason IS NULL OR p_reason NOT IN ('LOST', 'STOLEN', 'DAMAGED', 'DEFECTIVE') THEN
        RAISE EXCEPTION 'an opposition reason is LOST, STOLEN, DAMAGED or DEFECTIVE (got %)',
            coalesce(p_reason, 'nothing') USING ERRCODE = 'HD422';
    END IF;
    SELECT * INTO v_card FROM cards WHERE id = p_card_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no card %', p_card_id USING ERRCODE = 'HD404';
    END IF;
    IF v_card.status <> 'ACTIVE' THEN
        RAISE EXCEPTION 'card % is already opposed (%): an opposition is irreversible',
            p_card_id, v_card.status USING ERRCODE = 'HD409';
    END IF;
    UPDATE cards SET status = p_reason, opposed_at = v_now WHERE id = p_card_id RETURNING * INTO v_card;
    PERFORM append_audit(p_actor, 'card.oppose', 'card:' || p_card_id,
                         jsonb_build_object('status', 'ACTIVE'),
                         jsonb_build_object('status', p_reason, 'opposed_at', v_now));
    RETURN v_card;
END $$;

-- One row per replaced card: a card is replaced at most once (primary key), and the fee's split
-- between what the balance paid and what waits for the next reload is kept.
CREATE TABLE card_replacements (
    old_card_id        bigint PRIMARY KEY REFERENCES cards,
    new_card_id        bigint NOT NULL UNIQUE REFERENCES cards,
    reason             text   NOT NULL CHECK (reason IN ('LOST', 'STOLEN', 'DAMAGED', 'DEFECTIVE')),
    school_year        integer NOT NULL,
    fee_cents          bigint NOT NULL CHECK (fee_cents >= 0),
    fee_taken_cents    bigint NOT NULL CHECK (fee_taken_cents >= 0),
    fee_pending_cents  bigint NOT NULL CHECK (fee_pending_cents >= 0),
    pending_fee_id     bigint UNIQUE REFERENCES pending_fees,
    replaced_by        text   NOT NULL,
    replaced_at        timestamptz NOT NULL,
    CHECK (fee_taken_cents + fee_pending_cents = fee_cents),
    CHECK ((fee_pending_cents > 0) = (pending_fee_id IS NOT NULL)),
    CHECK (reason <> 'DEFECTIVE' OR fee_cents = 0)
);

-- Replace a card. An active card is first opposed with p_reason; an opposed card keeps its own
-- reason (p_reason, if given, must agree). Refused without rights for the current school year.
-- LOST, STOLEN and DAMAGED cost p_fee_cents: taken from the current school year's wallet while
-- its window is open (the wallet row is locked, as a purchase's debit does, so the two serialise
-- and never overspend), the rest recorded as a pending fee that the next reload recovers.
-- DEFECTIVE (returned by mail) is free.
CREATE FUNCTION replace_card(p_card_id bigint, p_reason text, p_new_uid bytea,
                             p_new_card_number text, p_fee_cents bigint, p_actor text)
RETURNS card_replacements LANGUAGE plpgsql AS $$
DECLARE
    v_now      timestamptz := business_now();
    v_local    timestamp   := v_now AT TIME ZONE 'Europe/Paris';
    v_year     integer     := school_year_of(v_local);
    v_old      cards;
    v_new      cards;
    v_reason   text;
    v_was      text;
    v_fee      bigint := 0;
    v_taken    bigint := 0;
    v_wallet   bigint;
    v_balance  bigint;
    v_pending  bigint;
    v_row      card_replacements;
BEGIN
    IF p_fee_cents IS NULL OR p_fee_cents < 0 THEN
        RAISE EXCEPTION 'a replacement fee is zero or more cents' USING ERRCODE = 'HD422';
    END IF;
    -- NO KEY UPDATE, not UPDATE: a purchase holding the wallet row takes KEY SHARE on the card
    -- (its authorization's foreign key); FOR UPDATE would wait on it while it waits on us.
    SELECT * INTO v_old FROM cards WHERE id = p_card_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no card %', p_card_id USING ERRCODE = 'HD404';
    END IF;
    v_was := v_old.status;
    IF EXISTS (SELECT 1 FROM card_replacements WHERE old_card_id = p_card_id) THEN
        RAISE EXCEPTION 'card % was already replaced (by card %)', p_card_id,
            (SELECT new_card_id FROM card_replacements WHERE old_card_id = p_card_id) USING ERRCODE = 'HD409';
    END IF;
    IF v_old.status = 'ACTIVE' THEN
        IF p_reason IS NULL THEN
            RAISE EXCEPTION 'card % is active: say why it is replaced (LOST, STOLEN, DAMAGED or DEFECTIVE)',
                p_card_id USING ERRCODE = 'HD422';
        END IF;
        v_reason := p_reason;
    ELSE
        IF p_reason IS NOT NULL AND p_reason <> v_old.status THEN
            RAISE EXCEPTION 'card % is opposed as %, not %: an opposition cannot be changed',
                p_card_id, v_old.status, p_reason USING ERRCODE = 'HD409';
        END IF;
        v_reason := v_old.status;
    END IF;
    -- Serialise with reload_wallet() (it takes the same lock) and other replacements.
    PERFORM 1 FROM beneficiaries WHERE id = v_old.beneficiary_id FOR UPDATE;
    IF NOT EXISTS (SELECT 1 FROM rights WHERE beneficiary_id = v_old.beneficiary_id AND school_year = v_year) THEN
        RAISE EXCEPTION 'the beneficiary''s rights for school year %-% are not renewed: the establishment must renew them before the card is replaced',
            v_year, v_year + 1 USING ERRCODE = 'HD409';
    END IF;
    IF EXISTS (SELECT 1 FROM card_requests WHERE card_uid = p_new_uid OR card_number = p_new_card_number) THEN
        RAISE EXCEPTION 'that UID or card number belongs to a card printed for a first-card request'
            USING ERRCODE = 'HD409';
    END IF;
    IF v_old.status = 'ACTIVE' THEN
        v_old := oppose_card(p_card_id, v_reason, p_actor);
    END IF;
    v_new := issue_card(v_old.beneficiary_id, p_new_uid, p_new_card_number, v_now);

    IF v_reason <> 'DEFECTIVE' THEN
        v_fee := p_fee_cents;
    END IF;
    IF v_fee > 0 AND in_wallet_window(v_local) THEN
        SELECT w.account_id, a.credits_posted - a.debits_posted INTO v_wallet, v_balance
          FROM wallets w JOIN accounts a ON a.id = w.account_id
         WHERE w.beneficiary_id = v_old.beneficiary_id AND w.school_year = v_year
           FOR UPDATE OF a;
        v_taken := least(v_fee, greatest(coalesce(v_balance, 0), 0));
        IF v_taken > 0 THEN
            UPDATE accounts SET debits_posted = debits_posted + v_taken WHERE id = v_wallet;
            INSERT INTO transfers (code, debit_account_id, credit_account_id, amount_cents, reference, created_at)
            SELECT 'REPLACEMENT_FEE', v_wallet, id, v_taken, 'replacement:' || v_new.id, v_now
              FROM accounts WHERE kind = 'FEE_INCOME';
        END IF;
    END IF;
    IF v_fee - v_taken > 0 THEN
        INSERT INTO pending_fees (beneficiary_id, amount_cents, reason, created_at)
        VALUES (v_old.beneficiary_id, v_fee - v_taken,
                format('replacement of card %s (%s) by card %s', v_old.id, v_reason, v_new.id), v_now)
        RETURNING id INTO v_pending;
    END IF;

    INSERT INTO card_replacements VALUES (v_old.id, v_new.id, v_reason, v_year, v_fee, v_taken,
                                          v_fee - v_taken, v_pending, p_actor, v_now)
    RETURNING * INTO v_row;
    PERFORM append_audit(p_actor, 'card.replace', 'card:' || v_old.id,
                         jsonb_build_object('status', v_was, 'balance_cents', v_balance),
                         jsonb_build_object('new_card_id', v_new.id, 'reason', v_reason,
                                            'fee_cents', v_fee, 'fee_taken_cents', v_taken,
                                            'fee_pending_cents', v_fee - v_taken));
    RETURN v_row;
END $$;

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

CREATE FUNCTION card_request_history_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'card_request_history is append-only (% refused)', TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END $$;
CREATE TRIGGER card_request_history_is_append_only BEFORE UPDATE OR DELETE ON card_request_history
    FOR EACH ROW EXECUTE FUNCTION card_request_history_is_append_only();

-- What the beneficiary reads for a state.
CREATE FUNCTION card_request_label(p_state text, p_reason text) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN p_state = 'REJECTED' THEN label_fr || ' : ' || coalesce(p_reason, '')
                ELSE label_fr END
      FROM card_request_states WHERE state = p_state
$$;

CREATE FUNCTION submit_card_request(p_beneficiary_id bigint, p_actor text) RETURNS card_requests
LANGUAGE plpgsql AS $$
DECLARE
    v_now     timestamptz := business_now();
    v_open    card_requests;
    v_request card_requests;
BEGIN
    PERFORM 1 FROM beneficiaries WHERE id = p_beneficiary_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no beneficiary %', p_beneficiary_id USING ERRCODE = 'HD404';
    END IF;
    -- A first card only: a lost, stolen or damaged card is replaced (with its fee), not requested.
    IF EXISTS (SELECT 1 FROM cards WHERE beneficiary_id = p_beneficiary_id) THEN
        RAISE EXCEPTION 'the beneficiary already has a card: a lost, stolen, damaged or defective card is replaced, not requested again'
            USING ERRCODE = 'HD409';
    END IF;
    SELECT * INTO v_open FROM card_requests
     WHERE beneficiary_id = p_beneficiary_id AND state NOT IN ('ACTIVE', 'REJECTED');
    IF FOUND THEN
        RAISE EXCEPTION 'the beneficiary already has card request % in progress (%)', v_open.id, v_open.state
            USING ERRCODE = 'HD409';
    END IF;
    INSERT INTO card_requests (beneficiary_id, state, submitted_at, updated_at)
    VALUES (p_beneficiary_id, 'SUBMITTED', v_now, v_now) RETURNING * INTO v_request;
    INSERT INTO card_request_history (request_id, from_state, to_state, actor, occurred_at)
    VALUES (v_request.id, NULL, 'SUBMITTED', p_actor, v_now);
    PERFORM append_audit(p_actor, 'card_request.submit', 'card_request:' || v_request.id, NULL,
                         jsonb_build_object('beneficiary_id', p_beneficiary_id, 'state', 'SUBMITTED'));
    RETURN v_request;
END $$;

-- Move a request to p_to_state. PRINTED needs the printed card's UID (its number is generated
-- when not given); ACTIVE issues that card; REJECTED needs a reason. With p_establishment_id the
-- caller is that establishment's staff: only its own students' requests, and only the
-- pre-validation decision (SUBMITTED to PREVALIDATED or REJECTED).
CREATE FUNCTION advance_card_request(p_request_id bigint, p_to_state text, p_actor text,
                                     p_reason text, p_card_uid bytea, p_card_number text,
                                     p_establishment_id integer) RETURNS card_requests
LANGUAGE plpgsql AS $$
DECLARE
    v_now      timestamptz := business_now();
    v_request  card_requests;
    v_card     cards;
    v_allowed  text;
    v_from     text;
BEGIN
    SELECT * INTO v_request FROM card_requests WHERE id = p_request_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no card request %', p_request_id USING ERRCODE = 'HD404';
    END IF;
    v_from := v_request.state;
    IF p_establishment_id IS NOT NULL THEN
        IF NOT EXISTS (SELECT 1 FROM beneficiaries WHERE id = v_request.beneficiary_id
                                                     AND establishment_id = p_establishment_id) THEN
            RAISE EXCEPTION 'card request % is not for a student of your establishment', p_request_id
                USING ERRCODE = 'HD403';
        END IF;
        IF v_request.state <> 'SUBMITTED' OR p_to_state NOT IN ('PREVALIDATED', 'REJECTED') THEN
            RAISE EXCEPTION 'an establishment only pre-validates or rejects a submitted request (request % is %)',
                p_request_id, v_request.state USING ERRCODE = 'HD403';
        END IF;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM card_request_states WHERE state = p_to_state) THEN
        RAISE EXCEPTION 'unknown card request state % (one of %)', coalesce(p_to_state, 'nothing'),
            (SELECT string_agg(state, ', ' ORDER BY step) FROM card_request_states) USING ERRCODE = 'HD422';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM card_request_transitions
                    WHERE from_state = v_request.state AND to_state = p_to_state) THEN
        SELECT string_agg(to_state, ' or ' ORDER BY s.step) INTO v_allowed
          FROM card_request_transitions t JOIN card_request_states s ON s.state = t.to_state
         WHERE from_state = v_request.state;
        RAISE EXCEPTION 'card request % cannot go from % to %: %', p_request_id, v_request.state, p_to_state,
            CASE WHEN v_allowed IS NULL THEN v_request.state || ' is final'
                 ELSE 'from ' || v_request.state || ' it can go to ' || v_allowed END
            USING ERRCODE = 'HD409';
    END IF;
    IF p_to_state = 'REJECTED' AND coalesce(btrim(p_reason), '') = '' THEN
        RAISE EXCEPTION 'a rejection needs a reason the beneficiary will read' USING ERRCODE = 'HD422';
    END IF;

    IF p_to_state = 'PRINTED' THEN
        IF p_card_uid IS NULL OR length(p_card_uid) NOT IN (4, 7, 10) THEN
            RAISE EXCEPTION 'PRINTED needs the printed card''s UID (4, 7 or 10 bytes)' USING ERRCODE = 'HD422';
        END IF;
        IF p_card_number IS NOT NULL AND p_card_number !~ '^[0-9]{16}$' THEN
            RAISE EXCEPTION 'a card number is 16 digits (got %)', p_card_number USING ERRCODE = 'HD422';
        END IF;
        IF EXISTS (SELECT 1 FROM cards WHERE uid = p_card_uid)
           OR EXISTS (SELECT 1 FROM card_requests WHERE card_uid = p_card_uid) THEN
            RAISE EXCEPTION 'a card with UID % already exists', encode(p_card_uid, 'hex') USING ERRCODE = 'HD409';
        END IF;
        IF EXISTS (SELECT 1 FROM cards WHERE card_number = p_card_number)
           OR EXISTS (SELECT 1 FROM card_requests WHERE card_number = p_card_number) THEN
            RAISE EXCEPTION 'card number % is already used', p_card_number USING ERRCODE = 'HD409';
        END IF;
        v_request.card_uid := p_card_uid;
        v_request.card_number := coalesce(p_card_number, new_card_number());
    ELSIF p_to_state = 'ACTIVE' THEN
        v_card := issue_card(v_request.beneficiary_id, v_request.card_uid, v_request.card_number, v_now);
        v_request.card_id := v_card.id;
    END IF;

    UPDATE card_requests
       SET state = p_to_state, updated_at = v_now, card_uid = v_request.card_uid,
           card_number = v_request.card_number, card_id = v_request.card_id,
           rejection_reason = CASE WHEN p_to_state = 'REJECTED' THEN btrim(p_reason) END
     WHERE id = p_request_id RETURNING * INTO v_request;
    INSERT INTO card_request_history (request_id, from_state, to_state, actor, reason, occurred_at)
    VALUES (p_request_id, v_from, p_to_state, p_actor, nullif(btrim(p_reason), ''), v_now);
    PERFORM append_audit(p_actor, 'card_request.advance', 'card_request:' || p_request_id,
                         jsonb_build_object('state', v_from),
                         jsonb_strip_nulls(jsonb_build_object('state', p_to_state, 'reason', nullif(btrim(p_reason), ''),
                                                              'card_id', v_request.card_id)));
    RETURN v_request;
END $$;

-- Partners. Geosearch: a bounding box on this B-tree (category first, so a category filter or a
-- list of categories is an index condition), then the exact haversine distance.
CREATE INDEX partners_geo ON partners (category, latitude, longitude);

CREATE FUNCTION check_partner_fields(p_name text, p_category text, p_address text,
                                     p_latitude double precision, p_longitude double precision)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF p_name IS NOT NULL AND length(btrim(p_name)) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'a partner name has 1 to 200 characters' USING ERRCODE = 'HD422';
    END IF;
    IF p_category IS NOT NULL AND p_category NOT IN ('BOOKSHOP', 'EQUIPMENT') THEN
        RAISE EXCEPTION 'a partner category is BOOKSHOP or EQUIPMENT (got %)', p_category USING ERRCODE = 'HD422';
    END IF;
    IF p_address IS NOT NULL AND length(btrim(p_address)) NOT BETWEEN 1 AND 300 THEN
        RAISE EXCEPTION 'a partner address has 1 to 300 characters' USING ERRCODE = 'HD422';
    END IF;
    IF p_latitude IS NOT NULL AND NOT p_latitude BETWEEN -90 AND 90
       OR p_longitude IS NOT NULL AND NOT p_longitude BETWEEN -180 AND 180 THEN
        RAISE EXCEPTION 'coordinates are a latitude in [-90, 90] and a longitude in [-180, 180]'
            USING ERRCODE = 'HD422';
    END IF;
END $$;

CREATE FUNCTION add_partner(p_name text, p_category text, p_address text, p_latitude double precision,
                            p_longitude double precision, p_actor text) RETURNS partners
LANGUAGE plpgsql AS $$
DECLARE
    v_partner partners;
BEGIN
    IF p_name IS NULL OR p_category IS NULL OR p_address IS NULL OR p_latitude IS NULL OR p_longitude IS NULL THEN
        RAISE EXCEPTION 'a partner needs a name, a category, an address and coordinates' USING ERRCODE = 'HD422';
    END IF;
    PERFORM check_partner_fields(p_name, p_category, p_address, p_latitude, p_longitude);
    WITH account AS (INSERT INTO accounts (kind) VALUES ('MERCHANT_PAYABLE') RETURNING id)
    INSERT INTO partners (name, category, address, latitude, longitude, status, merchant_account_id)
    SELECT btrim(p_name), p_category, btrim(p_address), p_latitude, p_longitude, 'ACTIVE', id FROM account
    RETURNING * INTO v_partner;
    PERFORM append_audit(p_actor, 'partner.add', 'partner:' || v_partner.id, NULL,
                         to_jsonb(v_partner) - 'merchant_account_id');
    RETURN v_partner;
END $$;

-- NULL leaves a field as it is.
CREATE FUNCTION update_partner(p_partner_id integer, p_name text, p_category text, p_address text,
                               p_latitude double precision, p_longitude double precision,
                               p_actor text) RETURNS partners LANGUAGE plpgsql AS $$
DECLARE
    v_before partners;
    v_after  partners;
BEGIN
    PERFORM check_partner_fields(p_name, p_category, p_address, p_latitude, p_longitude);
    SELECT * INTO v_before FROM partners WHERE id = p_partner_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no partner %', p_partner_id USING ERRCODE = 'HD404';
    END IF;
    UPDATE partners SET name = coalesce(btrim(p_name), name), category = coalesce(p_category, category),
                        address = coalesce(btrim(p_address), address),
                        latitude = coalesce(p_latitude, latitude), longitude = coalesce(p_longitude, longitude)
     WHERE id = p_partner_id RETURNING * INTO v_after;
    IF v_after IS DISTINCT FROM v_before THEN
        PERFORM append_audit(p_actor, 'partner.update', 'partner:' || p_partner_id,
                             to_jsonb(v_before) - 'merchant_account_id', to_jsonb(v_after) - 'merchant_account_id');
    END IF;
    RETURN v_after;
END $$;

-- ACTIVE or SUSPENDED (its terminals then answer 58), or CLOSED, which is final. Setting the
-- status a partner already has changes nothing and records nothing.
CREATE FUNCTION set_partner_status(p_partner_id integer, p_status text, p_actor text) RETURNS partners
LANGUAGE plpgsql AS $$
DECLARE
    v_partner partners;
BEGIN
    IF p_status IS NULL OR p_status NOT IN ('ACTIVE', 'SUSPENDED', 'CLOSED') THEN
        RAISE EXCEPTION 'a partner status is ACTIVE, SUSPENDED or CLOSED (got %)', coalesce(p_status, 'nothing')
            USING ERRCODE = 'HD422';
    END IF;
    SELECT * INTO v_partner FROM partners WHERE id = p_partner_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no partner %', p_partner_id USING ERRCODE = 'HD404';
    END IF;
    IF v_partner.status = p_status THEN
        RETURN v_partner;
    END IF;
    IF v_partner.status = 'CLOSED' THEN
        RAISE EXCEPTION 'partner % is closed: a closed partner is not reopened, add it again', p_partner_id
            USING ERRCODE = 'HD409';
    END IF;
    PERFORM append_audit(p_actor, CASE p_status WHEN 'ACTIVE' THEN 'partner.activate'
                                                WHEN 'SUSPENDED' THEN 'partner.suspend' ELSE 'partner.close' END,
                         'partner:' || p_partner_id, jsonb_build_object('status', v_partner.status),
                         jsonb_build_object('status', p_status));
    UPDATE partners SET status = p_status WHERE id = p_partner_id RETURNING * INTO v_partner;
    RETURN v_partner;
END $$;
