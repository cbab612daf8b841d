-- Issue 17 §4: the server voids, by itself, every purchase it answered 91 or 96 (the terminal
-- never saw it approved), whether or not its terminal ever reverses it (a load driver that gives
-- up never does): authorizer/server_voids.py calls sql/functions/server_void_purchase.sql in the
-- background. The void is an authorization row of its own, SERVER_VOID, keyed by the purchase's
-- request id, with a REVERSAL transfer when it gives money back; and the purchase records how
-- much of its reversed amount the server's void gave back, so that a purchase the terminal never
-- saw approved counts in no batch total (batch_totals.sql) and its terminal's own reversal is
-- answered as for a purchase that never arrived (authorize_reversal.sql).
ALTER TABLE authorizations
    DROP CONSTRAINT authorizations_message_type_check,
    ADD CONSTRAINT authorizations_message_type_check
        CHECK (message_type IN ('PURCHASE', 'REVERSAL', 'REFUND', 'BATCH_CLOSE', 'SERVER_VOID')),
    ADD COLUMN amount_server_voided_cents bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT authorizations_server_void_within_reversed
        CHECK (amount_server_voided_cents BETWEEN 0 AND amount_reversed_cents);

COMMENT ON COLUMN authorizations.amount_server_voided_cents IS
    'Of amount_reversed_cents, what the server''s own void gave back (a purchase it answered 91 '
    'or 96; its SERVER_VOID row has original_id = this id). Such a purchase''s stored response, '
    'the one a retry gets, is the 94 a late purchase gets; response_code keeps what the ledger '
    'decided.';
