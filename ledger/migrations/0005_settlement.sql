-- Settlement: what each partner is owed per business day (business_day_of() the transfers),
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
-- A run settles every closed day (before today in business time, the grace after midnight passed) not
-- yet settled, up to the day asked: runs never leave a gap, so "not yet settled" is "after the
-- last run's day". Settling a day twice moves nothing more: runs are serialised by an advisory
-- lock, each (partner, day) has one line (primary key) and one SETTLEMENT transfer (unique
-- reference).

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
