-- Settle every closed business day after the last run up to p_through_day. Returns the run and
-- whether this call made it (false: the day was already settled, by the run returned). A day is
-- closed p_grace after its midnight: a purchase stamped 23:59:59 may still be committing at
-- midnight, and a run must not miss it; the authorization path's transactions are single
-- statements bounded by the statement timeout, far below the grace. A day not closed yet is
-- refused with SQLSTATE HD422 (the project's "invalid request").
CREATE OR REPLACE FUNCTION settle_through(p_through_day date, p_actor text, p_grace interval,
                               OUT settlement_run_id bigint, OUT created boolean)
LANGUAGE plpgsql
-- Runs as hdfpay_owner for the roles granted EXECUTE (ledger/sql/privileges.sql).
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_now    timestamptz := business_now();
    v_today  date := business_day_of(v_now);
    v_last   date;
    v_from   timestamptz;
    v_bank   bigint;
BEGIN
    IF p_through_day >= v_today OR business_day_starts_at(p_through_day + 1) + p_grace > v_now THEN
        RAISE EXCEPTION 'business day % is not closed yet: a day can be settled from % after its midnight (%)',
            p_through_day, p_grace, business_time_zone() USING ERRCODE = 'HD422';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('hdfpay.settlement'));
    SELECT max(through_day) INTO v_last FROM settlement_runs;
    IF v_last >= p_through_day THEN
        SELECT id INTO settlement_run_id FROM settlement_runs WHERE through_day >= p_through_day
         ORDER BY through_day LIMIT 1;
        created := false;
        RETURN;
    END IF;
    v_from := business_day_starts_at(v_last + 1);    -- NULL for the first run: from the beginning
    v_bank := settlement_bank_account();
    INSERT INTO settlement_runs (first_day, through_day, settled_by, settled_at)
    VALUES (v_last + 1, p_through_day, p_actor, v_now) RETURNING id INTO settlement_run_id;
    created := true;

    WITH days AS (
        SELECT p.id AS partner_id, p.merchant_account_id,
               business_day_of(t.created_at) AS business_day,
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
           AND t.created_at < business_day_starts_at(p_through_day + 1)
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
