-- Each account's debits and credits summed from the journal (transfers): the ledger's invariants
-- (ledger_violations()) and the funds report (ledger/reports.py) compare the accounts against it.
CREATE OR REPLACE VIEW account_journal AS
SELECT account_id, sum(debit)::bigint AS debits, sum(credit)::bigint AS credits FROM (
    SELECT debit_account_id AS account_id, amount_cents AS debit, 0::bigint AS credit FROM transfers
    UNION ALL
    SELECT credit_account_id, 0, amount_cents FROM transfers) moves
GROUP BY account_id;
