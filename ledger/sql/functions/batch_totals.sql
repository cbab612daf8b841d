-- Counts and totals in cents of what the ledger approved for one terminal in an id range.
CREATE OR REPLACE FUNCTION batch_totals(p_terminal_id text, p_from_id bigint, p_below_id bigint)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'purchases_count', count(*) FILTER (WHERE message_type = 'PURCHASE'),
        'purchases_cents', coalesce(sum(amount_approved_cents) FILTER (WHERE message_type = 'PURCHASE'), 0),
        'reversals_count', count(*) FILTER (WHERE message_type = 'REVERSAL'),
        'reversals_cents', coalesce(sum(amount_approved_cents) FILTER (WHERE message_type = 'REVERSAL'), 0),
        'refunds_count', count(*) FILTER (WHERE message_type = 'REFUND'),
        'refunds_cents', coalesce(sum(amount_approved_cents) FILTER (WHERE message_type = 'REFUND'), 0))
      FROM authorizations
     WHERE terminal_id = p_terminal_id AND id >= p_from_id AND id < p_below_id
       AND request_hash IS NOT NULL AND amount_approved_cents > 0
$$;
