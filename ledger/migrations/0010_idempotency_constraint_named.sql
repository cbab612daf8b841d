-- The terminal listener recognises a concurrent duplicate of a message by the name of this
-- constraint: declare the name instead of relying on the one PostgreSQL generated.
ALTER TABLE authorizations RENAME CONSTRAINT authorizations_terminal_id_request_id_key
    TO authorizations_once_per_terminal_request;
