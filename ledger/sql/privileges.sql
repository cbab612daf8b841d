-- Who may do what: the whole of it, in this one file (ledger/roles.py says why each role exists).
-- `hdfpay db migrate` applies it as hdfpay_owner after the migrations and the function files,
-- whenever this file or anything else changed: it first takes every right away, then gives each
-- role what its work needs, so a right removed here is removed from the database too.
--
-- Writes that must keep an invariant (debits, oppositions, replacements, settlement, the audit
-- trail) go through SECURITY DEFINER functions owned by hdfpay_owner with search_path pinned; a
-- role writes a table directly only where the table holds its own working state (sessions,
-- login counters, the mail outbox, a bulk reload's progress).

-- Nothing for anyone, to begin with; functions created later start without EXECUTE for PUBLIC.
REVOKE ALL ON ALL TABLES IN SCHEMA public
    FROM PUBLIC, hdfpay_terminal, hdfpay_ops, hdfpay_portal, hdfpay_auditor, hdfpay_sealer;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public
    FROM PUBLIC, hdfpay_terminal, hdfpay_ops, hdfpay_portal, hdfpay_auditor, hdfpay_sealer;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public
    FROM PUBLIC, hdfpay_terminal, hdfpay_ops, hdfpay_portal, hdfpay_auditor, hdfpay_sealer;
ALTER DEFAULT PRIVILEGES FOR ROLE hdfpay_owner IN SCHEMA public REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO hdfpay_terminal, hdfpay_ops, hdfpay_portal, hdfpay_auditor, hdfpay_sealer;

-- Every process checks at start that the schema is the one it ships with (check_schema()),
-- and reads business time and the school calendar.
GRANT SELECT ON schema_migrations, schema_repeatables, clock_override, rules
    TO hdfpay_terminal, hdfpay_ops, hdfpay_portal, hdfpay_auditor, hdfpay_sealer;
GRANT EXECUTE ON FUNCTION
    business_now, business_time_zone, business_time_text, business_day_of, business_day_starts_at,
    school_year_of, school_year_starts_at, wallet_opens_at, wallet_closes_at, in_wallet_window,
    rights_renewal_opens_at, reload_school_year, first_card_requests_open_at,
    first_card_campaign_year, card_request_label
    TO hdfpay_terminal, hdfpay_ops, hdfpay_portal, hdfpay_auditor, hdfpay_sealer;

-- The terminal listener: the four authorization functions, and a terminal's partner category
-- for its metrics. It reads no card, wallet, beneficiary or transfer directly.
GRANT EXECUTE ON FUNCTION authorize_purchase, authorize_reversal, authorize_refund,
    close_terminal_batch TO hdfpay_terminal;
GRANT EXECUTE ON FUNCTION authorize_batch TO hdfpay_terminal;    -- group commit of the first three
-- The server's own void of a purchase it answered 91 or 96 (authorizer/server_voids.py).
GRANT EXECUTE ON FUNCTION server_void_purchase TO hdfpay_terminal;
GRANT SELECT (id, partner_id) ON terminals TO hdfpay_terminal;
GRANT SELECT (id, category) ON partners TO hdfpay_terminal;

-- Reading, for the operators (reports, the beneficiary page, settlement) and the auditors:
-- every table except the secrets below. An operator's password hash is read only through
-- charge_operator_login(), one account at a time, each read charged as a failed attempt.
DO $$
DECLARE t record;
BEGIN
    FOR t IN SELECT c.oid::regclass AS name FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v')
               AND c.relname NOT IN ('operators', 'student_accounts', 'student_sessions',
                                     'student_password_resets', 'operator_sessions',
                                     'renewal_drafts')
    LOOP
        EXECUTE format('GRANT SELECT ON %s TO hdfpay_ops, hdfpay_auditor', t.name);
    END LOOP;
    -- The same tables without their secret columns.
    FOR t IN SELECT c.oid::regclass AS name,
                    string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) AS columns
             FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
             WHERE c.relnamespace = 'public'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
               AND c.relname IN ('operators', 'student_accounts', 'operator_sessions',
                                 'student_sessions', 'student_password_resets')
               AND a.attname NOT IN ('password_hash', 'token_hash')
             GROUP BY c.oid
    LOOP
        EXECUTE format('GRANT SELECT (%s) ON %s TO hdfpay_auditor', t.columns, t.name);
        IF t.name::text IN ('operators', 'student_accounts') THEN
            EXECUTE format('GRANT SELECT (%s) ON %s TO hdfpay_ops', t.columns, t.name);
        END IF;
    END LOOP;
END $$;
GRANT EXECUTE ON FUNCTION ledger_violations, audit_row_bytes TO hdfpay_ops, hdfpay_auditor;

-- The operator API, the back-office pages and the operators' commands.
GRANT EXECUTE ON FUNCTION append_audit, charge_operator_login, oppose_card, replace_card, request_card_replacement,
    advance_card_request, submit_card_request, add_partner, update_partner, set_partner_status,
    reload_wallet, bulk_reload_chunk, refresh_wallet_statistics, expire_school_year, settle_through
    TO hdfpay_ops;
-- Their own accounts and sessions: the login counters, password changes, session tokens.
GRANT SELECT, INSERT, UPDATE, DELETE ON operator_sessions TO hdfpay_ops;
GRANT INSERT, UPDATE ON operators TO hdfpay_ops;
-- Working state the operators' own tools keep.
GRANT INSERT, UPDATE ON bulk_reload_runs, reload_programmes, rules, payout_files TO hdfpay_ops;
GRANT INSERT ON rights TO hdfpay_ops;
GRANT EXECUTE ON FUNCTION default_programme TO hdfpay_ops;   -- rights' trigger, run as the inserter
GRANT UPDATE (payee_name, iban, bic) ON partners TO hdfpay_ops;
-- Only for the row lock a payout file's maker takes (FOR UPDATE needs an UPDATE right):
-- settlement_is_immutable refuses every change to a run.
GRANT UPDATE (id) ON settlement_runs TO hdfpay_ops;
GRANT INSERT, UPDATE (status) ON terminals TO hdfpay_ops;
GRANT INSERT ON terminal_keys TO hdfpay_ops;
GRANT USAGE ON SEQUENCE terminal_key_derivation_id TO hdfpay_ops;
GRANT UPDATE ON card_applications TO hdfpay_ops;
-- A renewal file between its dry run and "Appliquer": the operator's own, nobody else's to read.
GRANT SELECT, INSERT, DELETE ON renewal_drafts TO hdfpay_ops;
GRANT INSERT, UPDATE ON mail_outbox TO hdfpay_ops;

-- The students' space: its accounts, sessions and password resets, the applications it
-- receives, the mails it sends; cards are opposed or replaced through the functions. It reads
-- what a student's pages show.
GRANT EXECUTE ON FUNCTION oppose_card, request_card_replacement, submit_card_request,
    submit_card_application TO hdfpay_portal;
GRANT SELECT, INSERT, UPDATE, DELETE ON student_accounts, student_sessions, student_password_resets
    TO hdfpay_portal;
GRANT SELECT, INSERT, UPDATE ON card_applications, mail_outbox TO hdfpay_portal;
GRANT SELECT ON beneficiaries, establishments, rights, cards, card_statuses, accounts, wallets,
    transfers, authorizations, partners, terminals, pending_fees, reload_programmes, card_replacements,
    card_requests, card_request_history, card_request_states, card_replacement_requests,
    account_journal
    TO hdfpay_portal;

-- The journal's sealer (`hdfpay ledger seal`, hdfpay-seal.timer): reads the two streams, reads
-- the transfers' sequence for its horizon, appends seals (journal_seals_are_append_only.sql
-- refuses any other change), audits the making of its key. No other role may add a seal.
GRANT SELECT ON transfers, audit_log, audit_head, journal_seals TO hdfpay_sealer;
GRANT INSERT ON journal_seals TO hdfpay_sealer;
GRANT EXECUTE ON FUNCTION append_audit TO hdfpay_sealer;
DO $$
BEGIN
    EXECUTE format('GRANT SELECT ON SEQUENCE %s TO hdfpay_sealer',
                   pg_get_serial_sequence('transfers', 'id'));
END $$;
