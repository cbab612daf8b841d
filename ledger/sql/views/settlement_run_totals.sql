-- A run's totals, read by the CLI, the API and the payout files.
CREATE OR REPLACE VIEW settlement_run_totals AS
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
