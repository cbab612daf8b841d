-- The ledger's invariants, one row each, for tests, `hdfpay ledger check` and load-test reports.
CREATE OR REPLACE FUNCTION ledger_violations() RETURNS TABLE (rule text, detail text) LANGUAGE sql STABLE AS $$
    WITH journal AS (SELECT * FROM account_journal)
    SELECT 'debits equal credits', format('debits %s, credits %s', sum(debits), sum(credits))
      FROM journal HAVING sum(debits) <> sum(credits)
    UNION ALL
    SELECT 'wallet totals match the journal',
           format('account %s posts %s/%s, journal %s/%s', a.id, a.debits_posted, a.credits_posted,
                  coalesce(j.debits, 0), coalesce(j.credits, 0))
      FROM accounts a LEFT JOIN journal j ON j.account_id = a.id
     WHERE a.kind = 'WALLET'
       AND (a.debits_posted <> coalesce(j.debits, 0) OR a.credits_posted <> coalesce(j.credits, 0))
    UNION ALL
    SELECT 'transfers move between known accounts', format('transfer %s', t.id)
      FROM transfers t
     WHERE NOT EXISTS (SELECT 1 FROM accounts WHERE id = t.debit_account_id)
        OR NOT EXISTS (SELECT 1 FROM accounts WHERE id = t.credit_account_id)
    UNION ALL
    SELECT 'every approval has its transfer',
           format('authorization %s approved %s, transfers %s', a.id, a.amount_approved_cents, coalesce(t.total, 0))
      FROM authorizations a
      LEFT JOIN (SELECT authorization_id, sum(amount_cents) AS total FROM transfers
                  WHERE authorization_id IS NOT NULL GROUP BY authorization_id) t ON t.authorization_id = a.id
     WHERE a.amount_approved_cents <> coalesce(t.total, 0)
    UNION ALL
    SELECT 'wallets are never negative', format('account %s balance %s', id, credits_posted - debits_posted)
      FROM accounts WHERE kind = 'WALLET' AND credits_posted < debits_posted
$$;
