-- A student's request for a new card (portal: "Demander une nouvelle carte", "Carte
-- défectueuse"), which operators fulfil with replace_card(); the request closes then. One open
-- request per card. The rules are in ledger/sql/functions/request_card_replacement.sql.
CREATE TABLE card_replacement_requests (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    card_id       bigint NOT NULL REFERENCES cards,
    reason        text   NOT NULL REFERENCES card_statuses CHECK (reason <> 'ACTIVE'),
    requested_by  text   NOT NULL CHECK (length(requested_by) BETWEEN 1 AND 200),
    requested_at  timestamptz NOT NULL,
    done_at       timestamptz
);
CREATE UNIQUE INDEX card_replacement_requests_one_open ON card_replacement_requests (card_id)
    WHERE done_at IS NULL;
