-- The authorization path: each terminal message is decided by one function call, i.e. one
-- database round trip, under READ COMMITTED. The balance condition sits inside the wallet UPDATE,
-- so concurrent debits on one card serialise on the wallet row and can never overspend; the
-- wallet_never_overdrawn CHECK is the last line behind it.
--
-- Idempotency: the message's row in `authorizations` is inserted last. Two concurrent messages
-- with the same (terminal, request id) both run; the second one's INSERT waits for the first to
-- commit and then fails with unique_violation, which rolls back everything it did (its debit
-- included). The caller then calls again and gets the stored response.

-- Business time: the database clock, unless tests or the demo pinned it.
CREATE FUNCTION business_now() RETURNS timestamptz LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT pinned_at FROM clock_override), now())
$$;

-- School year Y runs from 1 July Y (Europe/Paris local time).
CREATE FUNCTION school_year_of(local_time timestamp) RETURNS integer LANGUAGE sql IMMUTABLE AS $$
    SELECT extract(year FROM local_time)::integer - CASE WHEN extract(month FROM local_time) >= 7 THEN 0 ELSE 1 END
$$;

-- The wallet window of school year Y is [1 July Y 00:00, 1 May Y+1 00:00) local time: May and June
-- are outside.
CREATE FUNCTION in_wallet_window(local_time timestamp) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT extract(month FROM local_time) NOT IN (5, 6)
$$;

-- Retrieval reference number, 12 digits: YDDD (local Julian date) then an 8-digit sequence.
-- Unique as long as fewer than 100 million messages share a sequence cycle and a YDDD (ten years).
CREATE FUNCTION next_rrn(local_time timestamp) RETURNS text LANGUAGE sql VOLATILE AS $$
    SELECT right(to_char(local_time, 'YYYY'), 1) || to_char(local_time, 'DDD')
           || lpad(nextval('rrn_sequence')::text, 8, '0')
$$;

-- The response body the terminal receives, built once and stored for replays. Keys absent when
-- null.
CREATE FUNCTION terminal_response(
    p_type text, p_request_id text, p_stan integer, p_rc text, p_requested_cents bigint,
    p_approved_cents bigint, p_balance_cents bigint, p_auth_code text, p_rrn text
) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT json_strip_nulls(json_build_object(
        'v', 1, 'type', p_type, 'request_id', p_request_id, 'stan', p_stan, 'rc', p_rc,
        'requested_cents', p_requested_cents, 'approved_cents', p_approved_cents,
        'balance_cents', p_balance_cents, 'auth_code', p_auth_code, 'rrn', p_rrn))::text
$$;

-- Replay protection: a message is accepted only if its KSN counter is strictly greater than the
-- last one accepted for that initial key, and the key is an ACTIVE key of that terminal. The
-- update holds the key's row until commit, so two messages can never both pass with one counter.
-- NULL (no KSN) is passed only by a server explicitly run without terminal authentication.
CREATE FUNCTION accept_ksn(p_terminal_id text, p_initial_key_id bytea, p_counter bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_previous bigint;
BEGIN
    IF p_initial_key_id IS NULL THEN
        RETURN true;
    END IF;
    SELECT last_counter INTO v_previous FROM terminal_keys
     WHERE initial_key_id = p_initial_key_id AND terminal_id = p_terminal_id AND status = 'ACTIVE'
       FOR UPDATE;
    IF NOT FOUND OR v_previous >= p_counter THEN
        RETURN false;
    END IF;
    UPDATE terminal_keys SET last_counter = p_counter WHERE initial_key_id = p_initial_key_id;
    IF v_previous = -1 THEN
        -- First message under this key: a rotation is complete, older keys stop working.
        UPDATE terminal_keys SET status = 'RETIRED'
         WHERE terminal_id = p_terminal_id AND status = 'ACTIVE' AND initial_key_id <> p_initial_key_id
           AND created_at < (SELECT created_at FROM terminal_keys WHERE initial_key_id = p_initial_key_id);
    END IF;
    RETURN true;
END $$;

CREATE FUNCTION authorize_purchase(
    p_terminal_id text, p_request_id text, p_request_hash bytea, p_stan integer,
    p_card_uid bytea, p_amount_cents bigint, p_terminal_local_time timestamp,
    p_partial_ok boolean, p_max_amount_cents bigint, p_initial_key_id bytea, p_ksn_counter bigint
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_now       timestamptz := business_now();
    v_local     timestamp   := v_now AT TIME ZONE 'Europe/Paris';
    v_year      integer     := school_year_of(v_local);
    f           record;
    v_rc        text;
    v_approved  bigint := 0;
    v_balance   bigint;
    v_rrn       text;
    v_auth_code text;
    v_response  text;
    v_auth_id   bigint;
BEGIN
    SELECT t.status AS terminal_status, p.status AS partner_status, p.merchant_account_id,
           c.id AS card_id, c.status AS card_status,
           EXISTS (SELECT 1 FROM rights r
                   WHERE r.beneficiary_id = c.beneficiary_id AND r.school_year = v_year) AS has_rights,
           w.account_id AS wallet_account_id,
           a.id AS previous_id, a.request_hash AS previous_hash, a.response AS previous_response
      INTO f
      FROM terminals t
      JOIN partners p ON p.id = t.partner_id
      LEFT JOIN cards c ON c.uid = p_card_uid
      LEFT JOIN wallets w ON w.beneficiary_id = c.beneficiary_id AND w.school_year = v_year
      LEFT JOIN authorizations a ON a.terminal_id = t.id AND a.request_id = p_request_id
     WHERE t.id = p_terminal_id;

    IF NOT FOUND THEN
        RETURN terminal_response('purchase', p_request_id, p_stan, '58', p_amount_cents, 0, NULL, NULL, NULL);
    END IF;
    IF NOT accept_ksn(p_terminal_id, p_initial_key_id, p_ksn_counter) THEN
        RETURN terminal_response('purchase', p_request_id, p_stan, '63', p_amount_cents, 0, NULL, NULL, NULL);
    END IF;
    IF f.previous_id IS NOT NULL THEN
        IF f.previous_hash = p_request_hash THEN
            RETURN f.previous_response;
        END IF;
        RETURN terminal_response('purchase', p_request_id, p_stan, '94', p_amount_cents, 0, NULL, NULL, NULL);
    END IF;

    v_rc := CASE
        WHEN f.terminal_status <> 'ACTIVE' OR f.partner_status <> 'ACTIVE' THEN '58'
        WHEN f.card_id IS NULL THEN '14'
        WHEN f.card_status = 'LOST' THEN '41'
        WHEN f.card_status = 'STOLEN' THEN '43'
        WHEN f.card_status <> 'ACTIVE' THEN '62'
        WHEN NOT in_wallet_window(v_local) THEN '54'
        WHEN NOT f.has_rights THEN '57'
        WHEN p_amount_cents > p_max_amount_cents THEN '61'
    END;

    IF v_rc IS NULL THEN
        UPDATE accounts SET debits_posted = debits_posted + p_amount_cents
         WHERE id = f.wallet_account_id AND credits_posted - debits_posted >= p_amount_cents
        RETURNING credits_posted - debits_posted INTO v_balance;
        IF FOUND THEN
            v_rc := '00';
            v_approved := p_amount_cents;
        ELSE
            -- Not enough in our snapshot: lock the wallet and read its latest balance (0 when
            -- there is no wallet). A credit may have committed meanwhile: never take more than
            -- the amount asked.
            SELECT credits_posted - debits_posted INTO v_balance
              FROM accounts WHERE id = f.wallet_account_id FOR UPDATE;
            v_balance := coalesce(v_balance, 0);
            IF v_balance >= p_amount_cents THEN
                v_rc := '00';
                v_approved := p_amount_cents;
            ELSIF p_partial_ok AND v_balance > 0 THEN
                v_rc := '10';
                v_approved := v_balance;
            ELSE
                v_rc := '51';
            END IF;
            IF v_approved > 0 THEN
                UPDATE accounts SET debits_posted = debits_posted + v_approved
                 WHERE id = f.wallet_account_id;
                v_balance := v_balance - v_approved;
            END IF;
        END IF;
    END IF;

    v_rrn := next_rrn(v_local);
    IF v_approved > 0 THEN
        v_auth_code := right(v_rrn, 6);
    END IF;
    v_response := terminal_response('purchase', p_request_id, p_stan, v_rc, p_amount_cents,
                                    v_approved, v_balance, v_auth_code, v_rrn);

    INSERT INTO authorizations (terminal_id, request_id, message_type, request_hash, stan, card_id,
                                wallet_account_id, school_year, amount_requested_cents,
                                amount_approved_cents, response_code, auth_code, rrn,
                                terminal_local_time, created_at, response)
    VALUES (p_terminal_id, p_request_id, 'PURCHASE', p_request_hash, p_stan, f.card_id,
            f.wallet_account_id, v_year, p_amount_cents, v_approved, v_rc, v_auth_code, v_rrn,
            p_terminal_local_time, v_now, v_response)
    RETURNING id INTO v_auth_id;

    IF v_approved > 0 THEN
        INSERT INTO transfers (code, debit_account_id, credit_account_id, amount_cents, authorization_id, created_at)
        VALUES ('PURCHASE', f.wallet_account_id, f.merchant_account_id, v_approved, v_auth_id, v_now);
    END IF;
    RETURN v_response;
END $$;

-- The common first step of a reversal or a refund: the terminal is known and active (58), the
-- KSN is accepted (63), and an earlier message under the same key is replayed or is a duplicate
-- (94). early_response is the whole answer when the message is decided here; otherwise it is
-- NULL and the terminal's partner and merchant account are returned.
CREATE FUNCTION open_terminal_message(
    p_type text, p_terminal_id text, p_request_id text, p_request_hash bytea, p_stan integer,
    p_requested_cents bigint, p_initial_key_id bytea, p_ksn_counter bigint,
    OUT early_response text, OUT partner_id integer, OUT merchant_account_id bigint
) LANGUAGE plpgsql AS $$
DECLARE
    f record;
BEGIN
    SELECT t.status AS terminal_status, p.status AS partner_status, p.id AS partner_id,
           p.merchant_account_id,
           a.id AS previous_id, a.request_hash AS previous_hash, a.response AS previous_response
      INTO f
      FROM terminals t
      JOIN partners p ON p.id = t.partner_id
      LEFT JOIN authorizations a ON a.terminal_id = t.id AND a.request_id = p_request_id
     WHERE t.id = p_terminal_id;
    IF NOT FOUND THEN
        early_response := terminal_response(p_type, p_request_id, p_stan, '58', p_requested_cents, 0, NULL, NULL, NULL);
    ELSIF NOT accept_ksn(p_terminal_id, p_initial_key_id, p_ksn_counter) THEN
        early_response := terminal_response(p_type, p_request_id, p_stan, '63', p_requested_cents, 0, NULL, NULL, NULL);
    ELSIF f.previous_id IS NOT NULL THEN
        early_response := CASE WHEN f.previous_hash = p_request_hash THEN f.previous_response
            ELSE terminal_response(p_type, p_request_id, p_stan, '94', p_requested_cents, 0, NULL, NULL, NULL) END;
    ELSIF f.terminal_status <> 'ACTIVE' OR f.partner_status <> 'ACTIVE' THEN
        early_response := terminal_response(p_type, p_request_id, p_stan, '58', p_requested_cents, 0, NULL, NULL, NULL);
    END IF;
    partner_id := f.partner_id;
    merchant_account_id := f.merchant_account_id;
END $$;

-- Void a purchase of this terminal by its request id. Restores the wallet once. If the original
-- is unknown, leave a tombstone under its key so that a late original is declined (94), and
-- answer 25.
CREATE FUNCTION authorize_reversal(
    p_terminal_id text, p_request_id text, p_request_hash bytea, p_stan integer,
    p_original_request_id text, p_initial_key_id bytea, p_ksn_counter bigint
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_now       timestamptz := business_now();
    v_local     timestamp   := v_now AT TIME ZONE 'Europe/Paris';
    f           record;
    o           record;
    v_rc        text;
    v_amount    bigint := 0;
    v_balance   bigint;
    v_rrn       text;
    v_response  text;
    v_auth_id   bigint;
BEGIN
    SELECT * INTO f FROM open_terminal_message('reversal', p_terminal_id, p_request_id, p_request_hash,
                                               p_stan, NULL, p_initial_key_id, p_ksn_counter);
    IF f.early_response IS NOT NULL THEN
        RETURN f.early_response;
    END IF;

    SELECT * INTO o FROM authorizations
     WHERE terminal_id = p_terminal_id AND request_id = p_original_request_id FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO authorizations (terminal_id, request_id, message_type, request_hash,
                                    response_code, created_at, response)
        VALUES (p_terminal_id, p_original_request_id, 'PURCHASE', NULL, '25', v_now,
                terminal_response('purchase', p_original_request_id, NULL, '94', NULL, 0, NULL, NULL, NULL))
        ON CONFLICT (terminal_id, request_id) DO NOTHING;
        -- Either our tombstone is in, or the original committed meanwhile: look again.
        SELECT * INTO o FROM authorizations
         WHERE terminal_id = p_terminal_id AND request_id = p_original_request_id FOR UPDATE;
    END IF;

    IF o.message_type <> 'PURCHASE' OR o.request_hash IS NULL THEN
        v_rc := '25';
    ELSE
        v_rc := '00';
        v_amount := o.amount_approved_cents - o.amount_reversed_cents - o.amount_refunded_cents;
        IF v_amount > 0 THEN
            UPDATE accounts SET credits_posted = credits_posted + v_amount
             WHERE id = o.wallet_account_id
            RETURNING credits_posted - debits_posted INTO v_balance;
            UPDATE authorizations SET amount_reversed_cents = amount_reversed_cents + v_amount
             WHERE id = o.id;
        END IF;
    END IF;

    v_rrn := next_rrn(v_local);
    v_response := terminal_response('reversal', p_request_id, p_stan, v_rc,
                                    o.amount_approved_cents, v_amount, v_balance, NULL, v_rrn);
    INSERT INTO authorizations (terminal_id, request_id, message_type, request_hash, stan, card_id,
                                wallet_account_id, school_year, original_id, amount_requested_cents,
                                amount_approved_cents, response_code, rrn, created_at, response)
    VALUES (p_terminal_id, p_request_id, 'REVERSAL', p_request_hash, p_stan, o.card_id,
            o.wallet_account_id, o.school_year, o.id, o.amount_approved_cents, v_amount, v_rc,
            v_rrn, v_now, v_response)
    RETURNING id INTO v_auth_id;

    IF v_amount > 0 THEN
        INSERT INTO transfers (code, debit_account_id, credit_account_id, amount_cents, authorization_id, created_at)
        VALUES ('REVERSAL', f.merchant_account_id, o.wallet_account_id, v_amount, v_auth_id, v_now);
    END IF;
    RETURN v_response;
END $$;

-- Refund part or all of a purchase made at the same partner, found by its RRN. Cumulative refunds
-- never exceed what is left of the purchase (61 otherwise); the wallet of the purchase's school
-- year is credited while its window is open (54 after).
CREATE FUNCTION authorize_refund(
    p_terminal_id text, p_request_id text, p_request_hash bytea, p_stan integer,
    p_original_rrn text, p_amount_cents bigint, p_initial_key_id bytea, p_ksn_counter bigint
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_now       timestamptz := business_now();
    v_local     timestamp   := v_now AT TIME ZONE 'Europe/Paris';
    f           record;
    o           record;
    v_rc        text;
    v_amount    bigint := 0;
    v_balance   bigint;
    v_rrn       text;
    v_response  text;
    v_auth_id   bigint;
    v_card_id   bigint;
    v_wallet_account_id bigint;
    v_school_year integer;
    v_original_id bigint;
BEGIN
    SELECT * INTO f FROM open_terminal_message('refund', p_terminal_id, p_request_id, p_request_hash,
                                               p_stan, p_amount_cents, p_initial_key_id, p_ksn_counter);
    IF f.early_response IS NOT NULL THEN
        RETURN f.early_response;
    END IF;

    SELECT a.* INTO o FROM authorizations a JOIN terminals t ON t.id = a.terminal_id
     WHERE a.rrn = p_original_rrn AND a.message_type = 'PURCHASE' AND t.partner_id = f.partner_id
       AND a.amount_approved_cents > 0
       FOR UPDATE OF a;

    IF NOT FOUND THEN
        v_rc := '25';
    ELSIF NOT in_wallet_window(v_local) OR school_year_of(v_local) <> o.school_year THEN
        v_rc := '54';
    ELSIF p_amount_cents > o.amount_approved_cents - o.amount_reversed_cents - o.amount_refunded_cents THEN
        v_rc := '61';
    ELSE
        v_rc := '00';
        v_amount := p_amount_cents;
        UPDATE accounts SET credits_posted = credits_posted + v_amount
         WHERE id = o.wallet_account_id
        RETURNING credits_posted - debits_posted INTO v_balance;
        UPDATE authorizations SET amount_refunded_cents = amount_refunded_cents + v_amount
         WHERE id = o.id;
    END IF;

    IF v_rc <> '25' THEN
        v_card_id := o.card_id;
        v_wallet_account_id := o.wallet_account_id;
        v_school_year := o.school_year;
        v_original_id := o.id;
    END IF;
    v_rrn := next_rrn(v_local);
    v_response := terminal_response('refund', p_request_id, p_stan, v_rc, p_amount_cents,
                                    v_amount, v_balance, NULL, v_rrn);
    INSERT INTO authorizations (terminal_id, request_id, message_type, request_hash, stan, card_id,
                                wallet_account_id, school_year, original_id, amount_requested_cents,
                                amount_approved_cents, response_code, rrn, created_at, response)
    VALUES (p_terminal_id, p_request_id, 'REFUND', p_request_hash, p_stan, v_card_id,
            v_wallet_account_id, v_school_year, v_original_id, p_amount_cents, v_amount, v_rc,
            v_rrn, v_now, v_response)
    RETURNING id INTO v_auth_id;

    IF v_amount > 0 THEN
        INSERT INTO transfers (code, debit_account_id, credit_account_id, amount_cents, authorization_id, created_at)
        VALUES ('REFUND', f.merchant_account_id, v_wallet_account_id, v_amount, v_auth_id, v_now);
    END IF;
    RETURN v_response;
END $$;
