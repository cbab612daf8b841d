CREATE OR REPLACE FUNCTION card_request_history_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'card_request_history is append-only (% refused)', TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END $$;

CREATE OR REPLACE TRIGGER card_request_history_is_append_only BEFORE UPDATE OR DELETE ON card_request_history
    FOR EACH ROW EXECUTE FUNCTION card_request_history_is_append_only();
