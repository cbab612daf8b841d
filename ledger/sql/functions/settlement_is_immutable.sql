CREATE OR REPLACE FUNCTION settlement_is_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is immutable: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END $$;

CREATE OR REPLACE TRIGGER settlement_runs_immutable BEFORE UPDATE OR DELETE ON settlement_runs
    FOR EACH ROW EXECUTE FUNCTION settlement_is_immutable();
CREATE OR REPLACE TRIGGER settlement_lines_immutable BEFORE UPDATE OR DELETE ON settlement_lines
    FOR EACH ROW EXECUTE FUNCTION settlement_is_immutable();
CREATE OR REPLACE TRIGGER payout_files_immutable BEFORE UPDATE OR DELETE ON payout_files
    FOR EACH ROW EXECUTE FUNCTION settlement_is_immutable();
