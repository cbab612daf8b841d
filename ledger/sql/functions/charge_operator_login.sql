-- One login attempt charged, before the password is checked (ledger/operators.py checks it):
-- the lock, once reached, holds against requests already in flight; a lock that has run out
-- starts a fresh count. Returns the account with its password hash, or no row (unknown,
-- disabled or locked). The one way the operator API's role reads a hash: one account at a time,
-- each read counted as a failure until a right password resets it.
CREATE OR REPLACE FUNCTION charge_operator_login(
    p_login text, p_id integer, p_failures_before_lock integer, p_lock_ms bigint
) RETURNS TABLE (password_hash text, id integer, login text, role text, establishment_id integer,
                 partner_id integer, must_change_password boolean, disabled boolean,
                 locked boolean, created_at timestamptz)
LANGUAGE sql
-- Runs as hdfpay_owner for the roles granted EXECUTE (ledger/sql/privileges.sql).
SECURITY DEFINER SET search_path = public, pg_temp AS $$
    WITH now AS (SELECT business_now() AS t)
    UPDATE operators o SET
        failed_logins = CASE WHEN o.locked_until <= now.t THEN 0 ELSE o.failed_logins END + 1,
        locked_until = CASE WHEN (CASE WHEN o.locked_until <= now.t THEN 0
                                       ELSE o.failed_logins END) + 1 >= p_failures_before_lock
                            THEN now.t + p_lock_ms * interval '1 millisecond' END
    FROM now
    WHERE (o.login = p_login OR o.id = p_id) AND NOT o.disabled
      AND (o.locked_until IS NULL OR o.locked_until <= now.t)
    RETURNING o.password_hash, o.id, o.login, o.role, o.establishment_id, o.partner_id,
              o.must_change_password, o.disabled, coalesce(o.locked_until > now.t, false),
              o.created_at
$$;
