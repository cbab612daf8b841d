-- A seal, once written, stays as it is: UPDATE, DELETE and TRUNCATE are refused (a superuser
-- who disables the triggers is still found by the MACs and the sequence of seals).
CREATE OR REPLACE FUNCTION journal_seals_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'journal_seals is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE OR REPLACE TRIGGER journal_seals_append_only BEFORE UPDATE OR DELETE ON journal_seals
    FOR EACH ROW EXECUTE FUNCTION journal_seals_are_append_only();
CREATE OR REPLACE TRIGGER journal_seals_no_truncate BEFORE TRUNCATE ON journal_seals
    FOR EACH STATEMENT EXECUTE FUNCTION journal_seals_are_append_only();
