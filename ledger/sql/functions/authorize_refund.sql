-- Refund part or all of a purchase made at the same partner, found by its RRN, to the card tapped
-- at the till: it must be a card of the purchase's student (the card that paid, or its
-- replacement), so that the money goes back where it came from; another student's card answers
-- 25 with detail 'other_card', an unknown card 14. Cumulative refunds
-- never exceed what is left of the purchase: above it the answer is 13 (invalid amount) with
-- refundable_cents, what can still be refunded, and `detail` 'voided' when the sale was voided
-- (or 'refunded' when refunds took it all), so that the cashier is told which. The wallet of the
-- purchase's school year is credited while its window is open (54 after).
CREATE OR REPLACE FUNCTION authorize_refund(
    p_terminal_id text, p_request_id text, p_request_hash bytea, p_stan integer,
    p_original_rrn text, p_amount_cents bigint, p_card_uid bytea, p_initial_key_id bytea,
    p_ksn_counter bigint
) RETURNS text LANGUAGE plpgsql
-- Runs as hdfpay_owner for the roles granted EXECUTE (ledger/sql/privileges.sql).
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_now       timestamptz := business_now();
    f           record;
    o           record;
    v_rc        text;
    v_amount    bigint := 0;
    v_balance   bigint;
    v_rrn       text;
    v_response  text;
    v_auth_id   bigint;
    v_card_id   bigint;
    v_wallet_account_id bigint;
    v_school_year integer;
    v_original_id bigint;
    v_refundable bigint;
    v_detail    text;
BEGIN
    SELECT * INTO f FROM open_terminal_message('refund', p_terminal_id, p_request_id, p_request_hash,
                                               p_stan, p_amount_cents, p_initial_key_id, p_ksn_counter);
    IF f.early_response IS NOT NULL THEN
        RETURN f.early_response;
    END IF;

    SELECT a.* INTO o FROM authorizations a JOIN terminals t ON t.id = a.terminal_id
     WHERE a.rrn = p_original_rrn AND a.message_type = 'PURCHASE' AND t.partner_id = f.partner_id
       AND a.amount_approved_cents > 0
       FOR UPDATE OF a;

    IF NOT FOUND THEN
        v_rc := '25';
    ELSIF NOT EXISTS (SELECT 1 FROM cards WHERE uid = p_card_uid) THEN
        v_rc := '14';
    ELSIF NOT EXISTS (SELECT 1 FROM cards tapped JOIN cards paid
                         ON paid.beneficiary_id = tapped.beneficiary_id
                       WHERE tapped.uid = p_card_uid AND paid.id = o.card_id) THEN
        v_rc := '25';
        v_detail := 'other_card';
    ELSIF NOT in_wallet_window(v_now) OR school_year_of(v_now) <> o.school_year THEN
        v_rc := '54';
    ELSIF p_amount_cents > o.amount_approved_cents - o.amount_reversed_cents - o.amount_refunded_cents THEN
        v_rc := '13';
        v_refundable := o.amount_approved_cents - o.amount_reversed_cents - o.amount_refunded_cents;
    ELSE
        v_rc := '00';
        v_amount := p_amount_cents;
        UPDATE accounts SET credits_posted = credits_posted + v_amount
         WHERE id = o.wallet_account_id
        RETURNING credits_posted - debits_posted INTO v_balance;
        UPDATE authorizations SET amount_refunded_cents = amount_refunded_cents + v_amount
         WHERE id = o.id;
    END IF;

    IF v_rc NOT IN ('25', '14') THEN
        v_card_id := o.card_id;
        v_wallet_account_id := o.wallet_account_id;
        v_school_year := o.school_year;
        v_original_id := o.id;
    END IF;
    v_rrn := next_rrn(v_now);
    v_response := terminal_response('refund', p_request_id, p_stan, v_rc, p_amount_cents,
                                    v_amount, v_balance, NULL, v_rrn);
    IF v_detail IS NOT NULL THEN
        v_response := (v_response::jsonb || jsonb_build_object('detail', v_detail))::text;
    ELSIF v_rc = '13' THEN
        v_response := (v_response::jsonb || jsonb_strip_nulls(jsonb_build_object(
            'refundable_cents', v_refundable,
            'detail', CASE WHEN v_refundable > 0 THEN NULL
                           WHEN o.amount_reversed_cents > 0 THEN 'voided' ELSE 'refunded' END)))::text;
    END IF;
    INSERT INTO authorizations (terminal_id, request_id, message_type, request_hash, stan, card_id,
                                wallet_account_id, school_year, original_id, amount_requested_cents,
                                amount_approved_cents, response_code, rrn, created_at, response)
    VALUES (p_terminal_id, p_request_id, 'REFUND', p_request_hash, p_stan, v_card_id,
            v_wallet_account_id, v_school_year, v_original_id, p_amount_cents, v_amount, v_rc,
            v_rrn, v_now, v_response)
    RETURNING id INTO v_auth_id;

    IF v_amount > 0 THEN
        INSERT INTO transfers (code, debit_account_id, credit_account_id, amount_cents, authorization_id, created_at)
        VALUES ('REFUND', f.merchant_account_id, v_wallet_account_id, v_amount, v_auth_id, v_now);
    END IF;
    RETURN v_response;
END $$;
