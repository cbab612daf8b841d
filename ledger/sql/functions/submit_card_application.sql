-- An online first-card application, complete (address, establishment, photo), is sent: the
-- applicant becomes a beneficiary with a dossier number, the account gets it (the student then
-- logs in with it too), and the first-card request starts in SUBMITTED, moved on by the
-- establishment and the region as any other (submit_card_request()). All or nothing.
CREATE OR REPLACE FUNCTION submit_card_application(p_application_id bigint, p_actor text)
RETURNS card_requests LANGUAGE plpgsql
-- Runs as hdfpay_owner for the roles granted EXECUTE (ledger/sql/privileges.sql).
SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_now  timestamptz := business_now();
    v_app  card_applications;
    v_ben  bigint;
BEGIN
    SELECT * INTO v_app FROM card_applications WHERE id = p_application_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no application %', p_application_id USING ERRCODE = 'HD404';
    END IF;
    IF v_app.submitted_at IS NOT NULL THEN
        RAISE EXCEPTION 'application % was already sent', p_application_id USING ERRCODE = 'HD409';
    END IF;
    IF v_app.address_line IS NULL OR v_app.postcode IS NULL OR v_app.town IS NULL
       OR v_app.establishment_id IS NULL OR v_app.photo_file IS NULL THEN
        RAISE EXCEPTION 'application % is not complete (address, establishment, photo)',
            p_application_id USING ERRCODE = 'HD422';
    END IF;
    INSERT INTO beneficiaries (dossier_number, last_name, first_name, birth_date, email,
                               establishment_id)
    VALUES ('W' || lpad(p_application_id::text, 9, '0'), v_app.last_name, v_app.first_name,
            v_app.birth_date, v_app.email, v_app.establishment_id)
    RETURNING id INTO v_ben;
    UPDATE card_applications SET submitted_at = v_now, beneficiary_id = v_ben
     WHERE id = p_application_id;
    UPDATE student_accounts SET beneficiary_id = v_ben WHERE application_id = p_application_id;
    RETURN submit_card_request(v_ben, p_actor);
END $$;
