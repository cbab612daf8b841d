-- Settlement: what each partner is owed per business day (Europe/Paris date of the transfers),
-- moved from its merchant payable account to the region's settlement bank account by SETTLEMENT
-- transfers, one per partner and day, and the payout files (CSV, SEPA pain.001) made from them.
--
-- Merchant accounts are never written on the authorization path: a partner's payable is the sum
-- of PURCHASE credits minus REVERSAL and REFUND debits on its merchant account. A day's net can be
-- negative (refunds of purchases settled earlier): nothing is paid and the shortfall is carried as
-- a debt, deducted from the partner's next positive days. Per partner, with C the running sum of
-- nets minus the debt carried in, the total paid through a day is max(0, max C so far): a running
-- maximum, so a run over many days is one set-based statement.
--
-- A run settles every closed day (before today in Paris, the grace after midnight passed) not
-- yet settled, up to the day asked: runs never leave a gap, so "not yet settled" is "after the
-- last run's day". Settling a day twice moves nothing more: runs are serialised by an advisory
-- lock, each (partner, day) has one line (primary key) and one SETTLEMENT transfer (unique
-- reference).

-- The accounts' kind CHECK gets SETTLEMENT_BANK added to whatever list earlier migrations left,
-- so that this file composes with other migrations that extend the list too.
DO $$
DECLARE
    v_definition text;
BEGIN
    SELECT pg_get_constraintdef(oid) INTO v_definition FROM pg_constraint
     WHERE conrelid = 'accounts'::regclass AND conname = 'accounts_kind_check';
    IF v_definition NOT LIKE '%ARRAY[%' THEN
        RAISE EXCEPTION 'unexpected accounts_kind_check: %', v_definition;
    END IF;
    IF v_definition NOT LIKE '%''SETTLEMENT_BANK''%' THEN
        EXECUTE 'ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check';
        EXECUTE 'ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check '
                || replace(v_definition, 'ARRAY[', 'ARRAY[''SETTLEMENT_BANK''::text, ');
    END IF;
END $$;
-- One per region, created by the first run (settlement_bank_account()).
CREATE UNIQUE INDEX accounts_one_settlement_bank ON accounts (kind) WHERE kind = 'SETTLEMENT_BANK';

-- Where a partner is paid. Checked with schwifty (IBAN checksums, national RIB key, BIC) when set
-- and again when a payout file is made; the CHECKs here only keep the shape.
ALTER TABLE partners
    ADD COLUMN IF NOT EXISTS payee_name text CHECK (length(payee_name) BETWEEN 1 AND 70),
    ADD COLUMN IF NOT EXISTS iban text CHECK (iban ~ '^[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}$'),
    ADD COLUMN IF NOT EXISTS bic text CHECK (bic ~ '^[A-Z]{6}[A-Z0-9]{2}([A-Z0-9]{3})?$');

-- Business days are ranges of created_at: block-range indexes cost the authorization path almost
-- nothing (rows arrive in time order) and let settlement and reports read only their days.
CREATE INDEX transfers_created_at_brin ON transfers USING brin (created_at);
CREATE INDEX authorizations_created_at_brin ON authorizations USING brin (created_at);
-- How many business days the rows span: without it the planner takes every row for its own
-- (partner, day) group and sorts a million rows on disk instead of hashing a few thousand groups.
CREATE STATISTICS transfers_paris_day ON ((created_at AT TIME ZONE 'Europe/Paris')::date) FROM transfers;
CREATE STATISTICS authorizations_paris_day ON ((created_at AT TIME ZONE 'Europe/Paris')::date) FROM authorizations;

CREATE UNIQUE INDEX transfers_settlement_once ON transfers (reference) WHERE code = 'SETTLEMENT';

CREATE TABLE settlement_runs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    first_day    date,                        -- NULL: the first run, from the first transfer
    through_day  date   NOT NULL UNIQUE,
    settled_by   text   NOT NULL CHECK (length(settled_by) BETWEEN 1 AND 200),
    settled_at   timestamptz NOT NULL,
    CHECK (first_day IS NULL OR first_day <= through_day)
);

CREATE TABLE settlement_lines (
    partner_id         integer NOT NULL REFERENCES partners,
    business_day       date    NOT NULL,
    run_id             bigint  NOT NULL REFERENCES settlement_runs,
    purchases_count    integer NOT NULL CHECK (purchases_count >= 0),
    purchases_cents    bigint  NOT NULL CHECK (purchases_cents >= 0),
    reversals_count    integer NOT NULL CHECK (reversals_count >= 0),
    reversals_cents    bigint  NOT NULL CHECK (reversals_cents >= 0),
    refunds_count      integer NOT NULL CHECK (refunds_count >= 0),
    refunds_cents      bigint  NOT NULL CHECK (refunds_cents >= 0),
    net_cents          bigint  NOT NULL,
    debt_before_cents  bigint  NOT NULL CHECK (debt_before_cents >= 0),
    paid_cents         bigint  NOT NULL CHECK (paid_cents >= 0),
    debt_after_cents   bigint  NOT NULL CHECK (debt_after_cents >= 0),
    transfer_id        bigint  UNIQUE,
    PRIMARY KEY (partner_id, business_day),
    CHECK (net_cents = purchases_cents - reversals_cents - refunds_cents),
    -- Nothing is lost: what is paid and what stays owed move together with the day's net.
    CHECK (paid_cents - debt_after_cents = net_cents - debt_before_cents),
    CHECK (paid_cents = 0 OR debt_after_cents = 0),
    CHECK ((paid_cents > 0) = (transfer_id IS NOT NULL))
);
CREATE INDEX settlement_lines_run ON settlement_lines (run_id);

-- The files given to the bank, kept as made: a second download gets the same bytes and the same
-- message id, so the bank's duplicate check can work.
CREATE TABLE payout_files (
    run_id          bigint PRIMARY KEY REFERENCES settlement_runs,
    message_id      text   NOT NULL UNIQUE CHECK (length(message_id) BETWEEN 1 AND 35),
    payments        integer NOT NULL CHECK (payments >= 0),
    ctrl_sum_cents  bigint NOT NULL CHECK (ctrl_sum_cents >= 0),
    debtor_iban     text   NOT NULL,
    csv             bytea  NOT NULL,
    pain001         bytea,                    -- NULL when the run paid nobody
    created_by      text   NOT NULL,
    created_at      timestamptz NOT NULL
);

CREATE FUNCTION settlement_is_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is immutable: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END $$;
CREATE TRIGGER settlement_runs_immutable BEFORE UPDATE OR DELETE ON settlement_runs
    FOR EACH ROW EXECUTE FUNCTION settlement_is_immutable();
CREATE TRIGGER settlement_lines_immutable BEFORE UPDATE OR DELETE ON settlement_lines
    FOR EACH ROW EXECUTE FUNCTION settlement_is_immutable();
CREATE TRIGGER payout_files_immutable BEFORE UPDATE OR DELETE ON payout_files
    FOR EACH ROW EXECUTE FUNCTION settlement_is_immutable();

CREATE FUNCTION settlement_bank_account() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_id bigint;
BEGIN
    SELECT id INTO v_id FROM accounts WHERE kind = 'SETTLEMENT_BANK';
    IF NOT FOUND THEN
        INSERT INTO accounts (kind) VALUES ('SETTLEMENT_BANK')
        ON CONFLICT (kind) WHERE kind = 'SETTLEMENT_BANK' DO NOTHING;
        SELECT id INTO v_id FROM accounts WHERE kind = 'SETTLEMENT_BANK';
    END IF;
    RETURN v_id;
END $$;

-- The start of a Paris business day as a timestamptz (DST included).
CREATE FUNCTION paris_day_start(p_day date) RETURNS timestamptz LANGUAGE sql IMMUTABLE AS $$
    SELECT p_day::timestamp AT TIME ZONE 'Europe/Paris'
$$;

-- Settle every closed business day after the last run up to p_through_day. Returns the run and
-- whether this call made it (false: the day was already settled, by the run returned). A day is
-- closed p_grace after its midnight: a purchase stamped 23:59:59 may still be committing at
-- midnight, and a run must not miss it; the authorization path's transactions are single
-- statements bounded by the statement timeout, far below the grace. A day not closed yet is
-- refused with SQLSTATE HD422 (the project's "invalid request").
CREATE FUNCTION settle_through(p_through_day date, p_actor text, p_grace interval,
                               OUT settlement_run_id bigint, OUT created boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_now    timestamptz := business_now();
    v_today  date := (v_now AT TIME ZONE 'Europe/Paris')::date;
    v_last   date;
    v_from   timestamptz;
    v_bank   bigint;
BEGIN
    IF p_through_day >= v_today OR paris_day_start(p_through_day + 1) + p_grace > v_now THEN
        RAISE EXCEPTION 'business day % is not closed yet: a day can be settled from % after its midnight (Europe/Paris)',
            p_through_day, p_grace USING ERRCODE = 'HD422';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('hdfpay.settlement'));
    SELECT max(through_day) INTO v_last FROM settlement_runs;
    IF v_last >= p_through_day THEN
        SELECT id INTO settlement_run_id FROM settlement_runs WHERE through_day >= p_through_day
         ORDER BY through_day LIMIT 1;
        created := false;
        RETURN;
    END IF;
    v_from := paris_day_start(v_last + 1);    -- NULL for the first run: from the beginning
    v_bank := settlement_bank_account();
    INSERT INTO settlement_runs (first_day, through_day, settled_by, settled_at)
    VALUES (v_last + 1, p_through_day, p_actor, v_now) RETURNING id INTO settlement_run_id;
    created := true;

    WITH days AS (
        SELECT p.id AS partner_id, p.merchant_account_id,
               (t.created_at AT TIME ZONE 'Europe/Paris')::date AS business_day,
               count(*) FILTER (WHERE t.code = 'PURCHASE') AS purchases_count,
               coalesce(sum(t.amount_cents) FILTER (WHERE t.code = 'PURCHASE'), 0) AS purchases_cents,
               count(*) FILTER (WHERE t.code = 'REVERSAL') AS reversals_count,
               coalesce(sum(t.amount_cents) FILTER (WHERE t.code = 'REVERSAL'), 0) AS reversals_cents,
               count(*) FILTER (WHERE t.code = 'REFUND') AS refunds_count,
               coalesce(sum(t.amount_cents) FILTER (WHERE t.code = 'REFUND'), 0) AS refunds_cents
          FROM transfers t
          JOIN partners p ON p.merchant_account_id =
               CASE WHEN t.code = 'PURCHASE' THEN t.credit_account_id ELSE t.debit_account_id END
         WHERE t.code IN ('PURCHASE', 'REVERSAL', 'REFUND')
           AND (v_from IS NULL OR t.created_at >= v_from)
           AND t.created_at < paris_day_start(p_through_day + 1)
         GROUP BY 1, 2, 3),
    carried AS (
        SELECT DISTINCT ON (l.partner_id) l.partner_id, l.debt_after_cents
          FROM settlement_lines l ORDER BY l.partner_id, l.business_day DESC),
    running AS (
        SELECT d.*, d.purchases_cents - d.reversals_cents - d.refunds_cents AS net_cents,
               coalesce(c.debt_after_cents, 0) AS debt_in,
               sum(d.purchases_cents - d.reversals_cents - d.refunds_cents) OVER w
                   - coalesce(c.debt_after_cents, 0) AS cumulative
          FROM days d LEFT JOIN carried c ON c.partner_id = d.partner_id
        WINDOW w AS (PARTITION BY d.partner_id ORDER BY d.business_day)),
    paid AS (
        SELECT r.*, greatest(0, max(r.cumulative) OVER w) AS paid_through
          FROM running r
        WINDOW w AS (PARTITION BY r.partner_id ORDER BY r.business_day)),
    lines AS MATERIALIZED (
        SELECT p.*,
               p.paid_through - coalesce(lag(p.paid_through) OVER w, 0) AS paid_cents,
               coalesce(lag(p.paid_through) OVER w - lag(p.cumulative) OVER w, p.debt_in) AS debt_before_cents,
               p.paid_through - p.cumulative AS debt_after_cents,
               'settlement:' || p.partner_id || ':' || to_char(p.business_day, 'YYYY-MM-DD') AS reference
          FROM paid p
        WINDOW w AS (PARTITION BY p.partner_id ORDER BY p.business_day)),
    moved AS (
        INSERT INTO transfers (code, debit_account_id, credit_account_id, amount_cents, reference, created_at)
        SELECT 'SETTLEMENT', l.merchant_account_id, v_bank, l.paid_cents, l.reference, v_now
          FROM lines l WHERE l.paid_cents > 0
        RETURNING id, reference)
    INSERT INTO settlement_lines (partner_id, business_day, run_id, purchases_count, purchases_cents,
                                  reversals_count, reversals_cents, refunds_count, refunds_cents,
                                  net_cents, debt_before_cents, paid_cents, debt_after_cents, transfer_id)
    SELECT l.partner_id, l.business_day, settlement_run_id, l.purchases_count, l.purchases_cents,
           l.reversals_count, l.reversals_cents, l.refunds_count, l.refunds_cents,
           l.net_cents, l.debt_before_cents, l.paid_cents, l.debt_after_cents, m.id
      FROM lines l LEFT JOIN moved m ON m.reference = l.reference;
END $$;

-- A run's totals, read by the CLI, the API and the payout files.
CREATE VIEW settlement_run_totals AS
SELECT r.id AS run_id, r.first_day, r.through_day, r.settled_by, r.settled_at,
       count(l.partner_id) AS lines,
       count(l.transfer_id) AS payments,
       coalesce(sum(l.purchases_count + l.reversals_count + l.refunds_count), 0)::bigint AS transactions,
       coalesce(sum(l.net_cents), 0)::bigint AS net_cents,
       coalesce(sum(l.paid_cents), 0)::bigint AS paid_cents,
       -- What the run's partners still owe after it (each partner's last day in the run).
       coalesce((SELECT sum(last.debt_after_cents) FROM (
                     SELECT DISTINCT ON (d.partner_id) d.debt_after_cents FROM settlement_lines d
                      WHERE d.run_id = r.id ORDER BY d.partner_id, d.business_day DESC) last),
                0)::bigint AS debt_carried_cents
  FROM settlement_runs r LEFT JOIN settlement_lines l ON l.run_id = r.id
 GROUP BY r.id;
