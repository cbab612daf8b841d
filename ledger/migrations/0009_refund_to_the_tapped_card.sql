-- authorize_refund takes the UID of the card tapped for the refund (ledger/sql/functions/
-- authorize_refund.sql): the old signature goes, the repeatable file creates the new one.
DROP FUNCTION IF EXISTS authorize_refund(text, text, bytea, integer, text, bigint, bytea, bigint);
