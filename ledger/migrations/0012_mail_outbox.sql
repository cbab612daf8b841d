-- The durable outbox of the e-mail the students' web space sends (account created, password
-- reset): queued in the transaction that makes the account or the reset link, sent later by
-- portal/mail_sender.py, retried until the SMTP server accepts it. The rules (body erased once
-- sent, recipient after MAIL_KEEP_SENT_DAYS) and the bounds' Python names are in
-- ledger/mail_outbox.py; the bounds below must stay equal to them.
--
-- created_at, next_attempt_at, leased_until and sent_at are business time (business_now(),
-- set by ledger/mail_outbox.py; created_at defaults to it in sql/functions/business_now.sql).

CREATE TABLE mail_outbox (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind             text NOT NULL CHECK (kind ~ '^[a-z][a-z0-9_]{0,39}$'),
    -- NULL once sent and past the retention period; one address, no display name, one line.
    recipient        text CHECK (length(recipient) BETWEEN 3 AND 254
                                 AND recipient ~ '^[^@[:space:]<>,;]+@[^@[:space:]<>,;]+$'),
    -- A fixed text per kind: no personal data, kept after sending for the operators.
    subject          text NOT NULL CHECK (length(subject) BETWEEN 1 AND 200
                                          AND subject !~ '[[:cntrl:]]'),
    -- NULL once sent: it may hold a provisional password or a reset link.
    body             text CHECK (length(body) BETWEEN 1 AND 20000),
    -- The left part of the Message-ID header (<message_id@sender's domain>): the same at every
    -- attempt, so that a mail sent twice after a crash can be recognised as one.
    message_id       uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    created_at       timestamptz NOT NULL,
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  timestamptz NOT NULL,
    -- What went wrong last: an error class and an SMTP code, never the body or the address.
    last_error       text CHECK (length(last_error) BETWEEN 1 AND 300),
    -- The sender holding the message, until leased_until (then another may take it over).
    leased_by        text CHECK (length(leased_by) BETWEEN 1 AND 100),
    leased_until     timestamptz,
    sent_at          timestamptz,
    CHECK ((leased_by IS NULL) = (leased_until IS NULL)),
    CHECK (sent_at IS NOT NULL OR (recipient IS NOT NULL AND body IS NOT NULL)),
    CHECK (sent_at IS NULL OR (body IS NULL AND leased_by IS NULL))
);

-- What a sender looks for, and what the retention rule looks for.
CREATE INDEX mail_outbox_due ON mail_outbox (next_attempt_at, id) WHERE sent_at IS NULL;
CREATE INDEX mail_outbox_sent_with_recipient ON mail_outbox (sent_at)
    WHERE sent_at IS NOT NULL AND recipient IS NOT NULL;
