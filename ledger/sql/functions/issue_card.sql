-- A new card row, refused clearly when its UID or number is taken or the beneficiary already has
-- an active card (the unique indexes stay the last line behind these checks).
CREATE OR REPLACE FUNCTION issue_card(p_beneficiary_id bigint, p_uid bytea, p_card_number text,
                           p_at timestamptz) RETURNS cards LANGUAGE plpgsql AS $$
DECLARE
    v_card cards;
BEGIN
    IF p_uid IS NULL OR length(p_uid) NOT IN (4, 7, 10) THEN
        RAISE EXCEPTION 'a card UID is 4, 7 or 10 bytes (read from the new card''s chip)' USING ERRCODE = 'HD422';
    END IF;
    IF p_card_number IS NOT NULL AND p_card_number !~ '^[0-9]{16}$' THEN
        RAISE EXCEPTION 'a card number is 16 digits (got %)', p_card_number USING ERRCODE = 'HD422';
    END IF;
    IF EXISTS (SELECT 1 FROM cards WHERE uid = p_uid) THEN
        RAISE EXCEPTION 'a card with UID % already exists', upper(encode(p_uid, 'hex')) USING ERRCODE = 'HD409';
    END IF;
    IF EXISTS (SELECT 1 FROM cards WHERE card_number = p_card_number) THEN
        RAISE EXCEPTION 'card number % is already used', p_card_number USING ERRCODE = 'HD409';
    END IF;
    SELECT * INTO v_card FROM cards WHERE beneficiary_id = p_beneficiary_id AND status = 'ACTIVE';
    IF FOUND THEN
        RAISE EXCEPTION 'the beneficiary already has an active card (card %): declare it first',
            v_card.id USING ERRCODE = 'HD409';
    END IF;
    INSERT INTO cards (card_number, uid, beneficiary_id, issued_at)
    VALUES (coalesce(p_card_number, new_card_number()), p_uid, p_beneficiary_id, p_at)
    RETURNING * INTO v_card;
    RETURN v_card;
END $$;
