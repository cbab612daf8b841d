CREATE OR REPLACE FUNCTION cards_opposition_is_irreversible() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'cards are never deleted (card %)', OLD.id USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF OLD.status <> 'ACTIVE' AND (NEW.status IS DISTINCT FROM OLD.status
                                   OR NEW.opposed_at IS DISTINCT FROM OLD.opposed_at) THEN
        RAISE EXCEPTION 'card % is opposed (%): an opposition cannot be lifted or changed', OLD.id, OLD.status
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF NEW.uid <> OLD.uid OR NEW.beneficiary_id <> OLD.beneficiary_id OR NEW.card_number <> OLD.card_number THEN
        RAISE EXCEPTION 'card % identity is immutable', OLD.id USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER cards_opposition_is_irreversible BEFORE UPDATE OR DELETE ON cards
    FOR EACH ROW EXECUTE FUNCTION cards_opposition_is_irreversible();
