-- audit_head may only move forward, one row at a time, onto the hash of the row just appended:
-- resetting it (to hide rows deleted at the end of the trail) needs its trigger disabled as
-- well, which `hdfpay audit verify --expect-head` then shows against a head written down earlier.
CREATE OR REPLACE FUNCTION guard_audit_head() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' OR NEW.last_id <> OLD.last_id + 1
       OR NEW.last_hash IS DISTINCT FROM (SELECT row_hash FROM audit_log WHERE id = NEW.last_id) THEN
        RAISE EXCEPTION 'audit_head only follows append_audit()' USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER audit_head_follows_the_log BEFORE INSERT OR UPDATE OR DELETE ON audit_head
    FOR EACH ROW EXECUTE FUNCTION guard_audit_head();
