-- Counts and totals in cents of what the ledger approved in one batch of a terminal: the
-- authorizations marked with that batch number by close_terminal_batch().
-- A purchase counts for what the server's own void left of it (server_void_purchase.sql):
-- nothing, for a purchase the server answered 91 or 96 and then voided, which its terminal never
-- saw approved and counts nowhere (its reversal is answered 25). The SERVER_VOID rows themselves
-- are no terminal's message (no request hash): never in a batch.
CREATE OR REPLACE FUNCTION batch_totals(p_terminal_id text, p_batch_number integer)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'purchases_count', count(*) FILTER (WHERE message_type = 'PURCHASE'
                                              AND amount_approved_cents > amount_server_voided_cents),
        'purchases_cents', coalesce(sum(amount_approved_cents - amount_server_voided_cents)
                                    FILTER (WHERE message_type = 'PURCHASE'), 0),
        'reversals_count', count(*) FILTER (WHERE message_type = 'REVERSAL'),
        'reversals_cents', coalesce(sum(amount_approved_cents) FILTER (WHERE message_type = 'REVERSAL'), 0),
        'refunds_count', count(*) FILTER (WHERE message_type = 'REFUND'),
        'refunds_cents', coalesce(sum(amount_approved_cents) FILTER (WHERE message_type = 'REFUND'), 0))
      FROM authorizations
     WHERE terminal_id = p_terminal_id AND batch_number = p_batch_number
       AND request_hash IS NOT NULL AND amount_approved_cents > 0
$$;
