-- Replace a card (and close the student's request for it, if any). An active card is first opposed with p_reason; an opposed card keeps its own
-- reason (p_reason, if given, must agree). Refused without rights for the current school year.
-- The fee is the region's replacement fee (rules) when the reason charges it (card_statuses: lost,
-- stolen, damaged; a defective card, returned by mail, is free): taken from the current school
-- year's wallet while its window is open (the wallet row is locked, as a purchase's debit does,
-- so the two serialise and never overspend), the rest recorded as a pending fee that the next
-- reload recovers. The wallet row is locked before anything that appends to the audit trail
-- (oppose_card does): the expiry locks wallets and then appends, so the other order could
-- deadlock with it.
CREATE OR REPLACE FUNCTION replace_card(p_card_id bigint, p_reason text, p_new_uid bytea,
                                        p_new_card_number text, p_actor text)
RETURNS card_replacements LANGUAGE plpgsql
-- Runs as hdfpay_owner for the roles granted EXECUTE (ledger/sql/privileges.sql).
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_now      timestamptz := business_now();
    v_year     integer     := school_year_of(v_now);
    v_old      cards;
    v_new      cards;
    v_reason   text;
    v_was      text;
    v_fee      bigint := 0;
    v_taken    bigint := 0;
    v_wallet   bigint;
    v_balance  bigint;
    v_pending  bigint;
    v_row      card_replacements;
BEGIN
    -- NO KEY UPDATE, not UPDATE: a purchase holding the wallet row takes KEY SHARE on the card
    -- (its authorization's foreign key); FOR UPDATE would wait on it while it waits on us.
    SELECT * INTO v_old FROM cards WHERE id = p_card_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no card %', p_card_id USING ERRCODE = 'HD404';
    END IF;
    v_was := v_old.status;
    IF EXISTS (SELECT 1 FROM card_replacements WHERE old_card_id = p_card_id) THEN
        RAISE EXCEPTION 'card % was already replaced (by card %)', p_card_id,
            (SELECT new_card_id FROM card_replacements WHERE old_card_id = p_card_id) USING ERRCODE = 'HD409';
    END IF;
    IF v_old.status = 'ACTIVE' THEN
        IF p_reason IS NULL THEN
            RAISE EXCEPTION 'card % is active: say why it is replaced (%)', p_card_id,
                (SELECT string_agg(status, ', ' ORDER BY status) FROM card_statuses WHERE is_opposition)
                USING ERRCODE = 'HD422';
        END IF;
        v_reason := p_reason;
    ELSE
        IF p_reason IS NOT NULL AND p_reason <> v_old.status THEN
            RAISE EXCEPTION 'card % is opposed as %, not %: an opposition cannot be changed',
                p_card_id, v_old.status, p_reason USING ERRCODE = 'HD409';
        END IF;
        v_reason := v_old.status;
    END IF;
    -- Serialise with reload_wallet() (it takes the same lock) and other replacements.
    PERFORM 1 FROM beneficiaries WHERE id = v_old.beneficiary_id FOR UPDATE;
    IF NOT EXISTS (SELECT 1 FROM rights WHERE beneficiary_id = v_old.beneficiary_id AND school_year = v_year) THEN
        RAISE EXCEPTION 'the beneficiary''s rights for school year %-% are not renewed: the establishment must renew them before the card is replaced',
            v_year, v_year + 1 USING ERRCODE = 'HD409';
    END IF;
    IF EXISTS (SELECT 1 FROM card_requests WHERE card_uid = p_new_uid OR card_number = p_new_card_number) THEN
        RAISE EXCEPTION 'that UID or card number belongs to a card printed for a first-card request'
            USING ERRCODE = 'HD409';
    END IF;
    -- The wallet row before anything that appends to the audit trail (oppose_card does): the
    -- expiry locks wallets and then appends, so the other order could deadlock with it.
    SELECT w.account_id, a.credits_posted - a.debits_posted INTO v_wallet, v_balance
      FROM wallets w JOIN accounts a ON a.id = w.account_id
     WHERE w.beneficiary_id = v_old.beneficiary_id AND w.school_year = v_year
       FOR UPDATE OF a;
    IF v_old.status = 'ACTIVE' THEN
        v_old := oppose_card(p_card_id, v_reason, p_actor);
    END IF;
    v_new := issue_card(v_old.beneficiary_id, p_new_uid, p_new_card_number, v_now);
    -- The student's request for this card, if any, is fulfilled.
    UPDATE card_replacement_requests SET done_at = v_now WHERE card_id = p_card_id AND done_at IS NULL;

    -- The fee is the region's (rules), when the reason charges it (card_statuses).
    SELECT rl.replacement_fee_cents INTO v_fee FROM rules rl, card_statuses cs
     WHERE cs.status = v_reason AND cs.replacement_charged;
    v_fee := coalesce(v_fee, 0);
    IF v_fee > 0 AND in_wallet_window(v_now) THEN
        v_taken := least(v_fee, greatest(coalesce(v_balance, 0), 0));
        IF v_taken > 0 THEN
            UPDATE accounts SET debits_posted = debits_posted + v_taken WHERE id = v_wallet;
            INSERT INTO transfers (code, debit_account_id, credit_account_id, amount_cents, reference, created_at)
            SELECT 'REPLACEMENT_FEE', v_wallet, id, v_taken, 'replacement:' || v_new.id, v_now
              FROM accounts WHERE kind = 'FEE_INCOME';
        END IF;
    END IF;
    IF v_fee - v_taken > 0 THEN
        INSERT INTO pending_fees (beneficiary_id, amount_cents, reason, created_at)
        VALUES (v_old.beneficiary_id, v_fee - v_taken,
                format('replacement of card %s (%s) by card %s', v_old.id, v_reason, v_new.id), v_now)
        RETURNING id INTO v_pending;
    END IF;

    INSERT INTO card_replacements VALUES (v_old.id, v_new.id, v_reason, v_year, v_fee, v_taken,
                                          v_fee - v_taken, v_pending, p_actor, v_now)
    RETURNING * INTO v_row;
    PERFORM append_audit(p_actor, 'card.replace', 'card:' || v_old.id,
                         jsonb_build_object('status', v_was, 'balance_cents', v_balance),
                         jsonb_build_object('new_card_id', v_new.id, 'reason', v_reason,
                                            'fee_cents', v_fee, 'fee_taken_cents', v_taken,
                                            'fee_pending_cents', v_fee - v_taken));
    RETURN v_row;
END $$;
