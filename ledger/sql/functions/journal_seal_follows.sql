-- A new seal continues its stream: the next seq, the ids just after the previous seal's, and
-- the previous seal's MAC. Two sealers at once cannot fork a stream (the loser's insert fails).
CREATE OR REPLACE FUNCTION journal_seal_follows() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_last journal_seals;
BEGIN
    SELECT * INTO v_last FROM journal_seals WHERE stream = NEW.stream ORDER BY seq DESC LIMIT 1;
    IF NEW.seq <> coalesce(v_last.seq, 0) + 1
       OR NEW.first_id <> coalesce(v_last.last_id, 0) + 1
       OR NEW.previous_mac <> coalesce(v_last.mac, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea) THEN
        RAISE EXCEPTION 'a % seal must follow seal % of its stream', NEW.stream, coalesce(v_last.seq, 0)
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER journal_seal_follows BEFORE INSERT ON journal_seals
    FOR EACH ROW EXECUTE FUNCTION journal_seal_follows();
