-- Statistics for the wallets a bulk reload has just opened (ledger/bulk_reload.py). ANALYZE also
-- invalidates every session's cached plans on these tables, so a connection that planned on a
-- near-empty accounts table re-plans now. Only the owner may ANALYZE a table: the operators'
-- role reaches it through this function.
CREATE OR REPLACE FUNCTION refresh_wallet_statistics() RETURNS void LANGUAGE plpgsql
-- Runs as hdfpay_owner for the roles granted EXECUTE (ledger/sql/privileges.sql).
SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    ANALYZE accounts, wallets;
END $$;
