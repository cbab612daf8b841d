-- The school year's operations: rights renewal by programme, the bulk reload of every wallet
-- with rights, and the expiry of what is left on 1 May (Europe/Paris).
--
-- Programme: what a beneficiary's allocation is for in a school year (BOOKS for lycée students,
-- EQUIPMENT for vocational students and apprentices). It belongs to the year's rights, since a
-- student may change track from one year to the next. Amounts live in reload_programmes, per
-- school year, managed by operators (`hdfpay programmes set`), never in code.

ALTER TABLE rights ADD COLUMN programme text CHECK (programme ~ '^[A-Z][A-Z0-9_]{1,31}$');

-- With no programme given, the establishment's kind decides: the usual case, and what the rights
-- inserted before this migration mean.
CREATE FUNCTION default_programme(p_establishment_kind text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE p_establishment_kind WHEN 'LYCEE' THEN 'BOOKS' ELSE 'EQUIPMENT' END
$$;

UPDATE rights r SET programme = default_programme(e.kind)
  FROM beneficiaries b JOIN establishments e ON e.id = b.establishment_id
 WHERE b.id = r.beneficiary_id;
ALTER TABLE rights ALTER COLUMN programme SET NOT NULL;

CREATE FUNCTION rights_default_programme() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    SELECT default_programme(e.kind) INTO NEW.programme
      FROM beneficiaries b JOIN establishments e ON e.id = b.establishment_id
     WHERE b.id = NEW.beneficiary_id;
    RETURN NEW;
END $$;
CREATE TRIGGER rights_default_programme BEFORE INSERT ON rights
    FOR EACH ROW WHEN (NEW.programme IS NULL) EXECUTE FUNCTION rights_default_programme();

-- The bulk reload walks a year's rights by beneficiary id; the expiry a year's wallets.
CREATE INDEX rights_by_school_year ON rights (school_year, beneficiary_id);
CREATE INDEX wallets_by_school_year ON wallets (school_year);

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

-- The school year of a reload: the current one, or in May and June (its wallet closed) the next.
CREATE FUNCTION reload_school_year() RETURNS integer LANGUAGE sql STABLE AS $$
    SELECT school_year_of(t) + CASE WHEN in_wallet_window(t) THEN 0 ELSE 1 END
      FROM (SELECT business_now() AT TIME ZONE 'Europe/Paris' AS t) now
$$;

-- When a school year's wallets close: 1 May 00:00 Europe/Paris of its second calendar year.
-- (STABLE, like make_timestamptz with a time zone: the zone database may change.)
CREATE FUNCTION wallet_closes_at(p_school_year integer) RETURNS timestamptz LANGUAGE sql STABLE AS $$
    SELECT make_timestamptz(p_school_year + 1, 5, 1, 0, 0, 0, 'Europe/Paris')
$$;

-- The reference of a beneficiary's bulk reload for a year. Zero-padded, so that references sort
-- as beneficiary ids do and a chunk's id range is a range of transfers_reload_once.
CREATE FUNCTION bulk_reload_reference(p_school_year integer, p_beneficiary_id bigint) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'bulk:' || p_school_year || ':' || lpad(p_beneficiary_id::text, 12, '0')
$$;

-- One chunk of a run, in the caller's transaction (one round trip, set-based): the next
-- p_chunk_rows beneficiaries with rights after the run's cursor, those not yet credited this year
-- locked as reload_wallet() locks them, wallets opened where missing, RELOAD transfers, pending
-- fees recovered oldest first from what was credited, totals posted, the cursor moved. When no
-- beneficiary is left the run is finished and audited.
CREATE FUNCTION bulk_reload_chunk(
    p_run_id bigint, p_chunk_rows integer, p_actor text,
    OUT beneficiaries_seen bigint, OUT wallets_credited bigint, OUT wallets_opened bigint,
    OUT credited_cents bigint, OUT fee_recovered_cents bigint, OUT finished boolean
) LANGUAGE plpgsql AS $$
DECLARE
    r            bulk_reload_runs;
    v_now        timestamptz := business_now();
    v_upto       bigint;
    v_funding    bigint;
    v_fee_income bigint;
    v_without    bigint;
BEGIN
    beneficiaries_seen := 0; wallets_credited := 0; wallets_opened := 0;
    credited_cents := 0; fee_recovered_cents := 0;
    -- The run's row lock: two processes never work on one run at once.
    SELECT * INTO r FROM bulk_reload_runs WHERE id = p_run_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no bulk reload run %', p_run_id USING ERRCODE = 'no_data_found';
    END IF;
    finished := r.finished_at IS NOT NULL;
    IF finished THEN
        RETURN;
    END IF;
    IF v_now >= wallet_closes_at(r.school_year) THEN
        RAISE EXCEPTION 'the wallets of school year %-% closed on 1 May %: nothing can be reloaded',
            r.school_year, r.school_year + 1, r.school_year + 1 USING ERRCODE = 'check_violation';
    END IF;

    SELECT max(beneficiary_id), count(*) INTO v_upto, beneficiaries_seen FROM (
        SELECT beneficiary_id FROM rights
         WHERE school_year = r.school_year AND beneficiary_id > r.after_beneficiary_id
         ORDER BY beneficiary_id LIMIT p_chunk_rows) chunk;
    IF v_upto IS NULL THEN
        UPDATE bulk_reload_runs SET finished_at = v_now WHERE id = p_run_id RETURNING * INTO r;
        PERFORM append_audit(p_actor, 'reload.bulk_finish', 'school_year:' || r.school_year,
            NULL, jsonb_build_object('run', r.id, 'wallets_credited', r.wallets_credited,
                'wallets_opened', r.wallets_opened, 'credited_cents', r.credited_cents,
                'fee_recovered_cents', r.fee_recovered_cents, 'without_amount', r.without_amount,
                'beneficiaries_seen', r.beneficiaries_seen));
        finished := true;
        RETURN;
    END IF;

    -- Who is still to credit in this range; only they are locked (as reload_wallet() locks
    -- them), so that a repeated run writes nothing. No other run of the year can credit them
    -- meanwhile (the run's row lock, one open run per year).
    CREATE TEMP TABLE bulk_todo ON COMMIT DROP AS
    SELECT rt.beneficiary_id, (r.amounts ->> rt.programme)::bigint AS amount_cents,
           bulk_reload_reference(r.school_year, rt.beneficiary_id) AS reference
      FROM rights rt
     WHERE rt.school_year = r.school_year
       AND rt.beneficiary_id > r.after_beneficiary_id AND rt.beneficiary_id <= v_upto
       AND r.amounts ? rt.programme
       AND NOT EXISTS (SELECT 1 FROM transfers t WHERE t.code = 'RELOAD'
                          AND t.reference = bulk_reload_reference(r.school_year, rt.beneficiary_id)
                          -- the same, as a range the planner can read from the index
                          AND t.reference > bulk_reload_reference(r.school_year, r.after_beneficiary_id)
                          AND t.reference <= bulk_reload_reference(r.school_year, v_upto));
    ANALYZE bulk_todo;
    SELECT count(*) INTO v_without FROM rights rt
     WHERE rt.school_year = r.school_year
       AND rt.beneficiary_id > r.after_beneficiary_id AND rt.beneficiary_id <= v_upto
       AND NOT r.amounts ? rt.programme;
    -- Lock, then read wallets and fees: what a reload_wallet() or a card replacement committed
    -- before these locks is seen below, and none of them can change it until this commit.
    PERFORM 1 FROM beneficiaries WHERE id IN (SELECT beneficiary_id FROM bulk_todo) ORDER BY id FOR UPDATE;
    PERFORM 1 FROM pending_fees
     WHERE beneficiary_id IN (SELECT beneficiary_id FROM bulk_todo) AND recovered_cents < amount_cents
     ORDER BY id FOR UPDATE;

    CREATE TEMP TABLE bulk_chunk ON COMMIT DROP AS
    SELECT c.beneficiary_id, c.amount_cents, c.reference, w.account_id IS NULL AS is_new,
           coalesce(w.account_id, nextval(pg_get_serial_sequence('accounts', 'id'))) AS account_id
      FROM bulk_todo c
      LEFT JOIN wallets w ON w.beneficiary_id = c.beneficiary_id AND w.school_year = r.school_year;
    ANALYZE bulk_chunk;

    -- Pending fees, oldest first, each taking what the credit has left after the older ones.
    CREATE TEMP TABLE bulk_fee_takes ON COMMIT DROP AS
    SELECT fee_id, beneficiary_id, account_id, take_cents, created_at FROM (
        SELECT f.id AS fee_id, f.beneficiary_id, c.account_id, f.created_at,
               least(f.amount_cents - f.recovered_cents,
                     c.amount_cents - (sum(f.amount_cents - f.recovered_cents) OVER w
                                       - (f.amount_cents - f.recovered_cents))) AS take_cents
          FROM pending_fees f JOIN bulk_chunk c ON c.beneficiary_id = f.beneficiary_id
         WHERE f.recovered_cents < f.amount_cents
        WINDOW w AS (PARTITION BY f.beneficiary_id ORDER BY f.created_at, f.id)) fees
     WHERE take_cents > 0;
    ANALYZE bulk_fee_takes;

    SELECT id INTO v_funding FROM accounts WHERE kind = 'REGION_FUNDING';
    SELECT id INTO v_fee_income FROM accounts WHERE kind = 'FEE_INCOME';

    -- New wallets are born with their totals; existing ones are updated once each.
    WITH fees AS (SELECT beneficiary_id, sum(take_cents) AS cents FROM bulk_fee_takes GROUP BY 1)
    INSERT INTO accounts (id, kind, credits_posted, debits_posted) OVERRIDING SYSTEM VALUE
    SELECT c.account_id, 'WALLET', c.amount_cents, coalesce(f.cents, 0)
      FROM bulk_chunk c LEFT JOIN fees f ON f.beneficiary_id = c.beneficiary_id
     WHERE c.is_new;
    INSERT INTO wallets (beneficiary_id, school_year, account_id)
    SELECT beneficiary_id, r.school_year, account_id FROM bulk_chunk WHERE is_new;
    WITH fees AS (SELECT beneficiary_id, sum(take_cents) AS cents FROM bulk_fee_takes GROUP BY 1)
    UPDATE accounts a SET credits_posted = a.credits_posted + c.amount_cents,
                          debits_posted = a.debits_posted + coalesce(f.cents, 0)
      FROM bulk_chunk c LEFT JOIN fees f ON f.beneficiary_id = c.beneficiary_id
     WHERE a.id = c.account_id AND NOT c.is_new;

    INSERT INTO transfers (code, debit_account_id, credit_account_id, amount_cents, reference, created_at)
    SELECT 'RELOAD', v_funding, account_id, amount_cents, reference, v_now
      FROM bulk_chunk ORDER BY beneficiary_id;
    INSERT INTO transfers (code, debit_account_id, credit_account_id, amount_cents, reference, created_at)
    SELECT 'REPLACEMENT_FEE', account_id, v_fee_income, take_cents, 'pending-fee:' || fee_id, v_now
      FROM bulk_fee_takes ORDER BY beneficiary_id, created_at, fee_id;
    UPDATE pending_fees f SET recovered_cents = f.recovered_cents + t.take_cents
      FROM bulk_fee_takes t WHERE f.id = t.fee_id;

    SELECT count(*), count(*) FILTER (WHERE is_new), coalesce(sum(amount_cents), 0)
      INTO wallets_credited, wallets_opened, credited_cents FROM bulk_chunk;
    SELECT coalesce(sum(take_cents), 0) INTO fee_recovered_cents FROM bulk_fee_takes;
    UPDATE bulk_reload_runs SET
        after_beneficiary_id = v_upto,
        chunks_done = chunks_done + 1,
        beneficiaries_seen = bulk_reload_runs.beneficiaries_seen + bulk_reload_chunk.beneficiaries_seen,
        wallets_credited = bulk_reload_runs.wallets_credited + bulk_reload_chunk.wallets_credited,
        wallets_opened = bulk_reload_runs.wallets_opened + bulk_reload_chunk.wallets_opened,
        without_amount = bulk_reload_runs.without_amount + v_without,
        credited_cents = bulk_reload_runs.credited_cents + bulk_reload_chunk.credited_cents,
        fee_recovered_cents = bulk_reload_runs.fee_recovered_cents + bulk_reload_chunk.fee_recovered_cents
     WHERE id = p_run_id;
    DROP TABLE bulk_todo, bulk_chunk, bulk_fee_takes;
END $$;

-- Expiry: from 1 May 00:00 Paris, what is left in a school year's wallets moves to the
-- expired-funds account, one EXPIRY transfer per wallet. The wallets are locked first (the lock
-- authorize_purchase's debit takes), then their balances read and moved: a purchase in flight
-- either debited before (and its amount is not expired) or waits and finds nothing left (51).
-- Idempotent: a second run finds every balance at zero, and sweeps only what was credited since
-- (a reversal decided before 1 May but committed after the expiry).
CREATE FUNCTION expire_school_year(
    p_school_year integer, OUT wallets_expired bigint, OUT expired_cents bigint
) LANGUAGE plpgsql AS $$
DECLARE
    v_now      timestamptz := business_now();
    v_expired  bigint;
    v_accounts bigint[];
BEGIN
    IF v_now < wallet_closes_at(p_school_year) THEN
        RAISE EXCEPTION 'the wallets of school year %-% are open until 1 May % 00:00 (Europe/Paris): no expiry before',
            p_school_year, p_school_year + 1, p_school_year + 1 USING ERRCODE = 'check_violation';
    END IF;
    SELECT id INTO v_expired FROM accounts WHERE kind = 'EXPIRED_FUNDS';
    SELECT array_agg(id ORDER BY id) INTO v_accounts FROM (
        SELECT a.id FROM wallets w JOIN accounts a ON a.id = w.account_id
         WHERE w.school_year = p_school_year AND a.credits_posted > a.debits_posted
         ORDER BY a.id
           FOR UPDATE OF a) locked;
    -- With the locks held, this statement reads the latest balances and nothing can change them.
    WITH moved AS (
        SELECT id, credits_posted - debits_posted AS balance FROM accounts
         WHERE id = ANY (v_accounts) AND credits_posted > debits_posted),
    posted AS (
        UPDATE accounts a SET debits_posted = a.debits_posted + m.balance
          FROM moved m WHERE a.id = m.id),
    journal AS (
        INSERT INTO transfers (code, debit_account_id, credit_account_id, amount_cents, reference, created_at)
        SELECT 'EXPIRY', id, v_expired, balance, 'expiry:' || p_school_year, v_now
          FROM moved ORDER BY id)
    SELECT count(*), coalesce(sum(balance), 0) INTO wallets_expired, expired_cents FROM moved;
END $$;

-- A reversal once the purchase's wallet has closed (1 May) must not put spendable money back:
-- the voided amount goes where the wallet's balance went, the expired-funds account. Otherwise as
-- in 0002.
CREATE OR REPLACE FUNCTION authorize_reversal(
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
    v_credited  bigint;
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

    v_credited := o.wallet_account_id;
    IF o.message_type <> 'PURCHASE' OR o.request_hash IS NULL THEN
        v_rc := '25';
    ELSE
        v_rc := '00';
        v_amount := o.amount_approved_cents - o.amount_reversed_cents - o.amount_refunded_cents;
        IF v_amount > 0 AND v_now >= wallet_closes_at(o.school_year) THEN
            SELECT id INTO v_credited FROM accounts WHERE kind = 'EXPIRED_FUNDS';
            UPDATE authorizations SET amount_reversed_cents = amount_reversed_cents + v_amount
             WHERE id = o.id;
        ELSIF v_amount > 0 THEN
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
        VALUES ('REVERSAL', f.merchant_account_id, v_credited, v_amount, v_auth_id, v_now);
    END IF;
    RETURN v_response;
END $$;
