-- Business time: the database clock, unless tests or the demo pinned it.
CREATE OR REPLACE FUNCTION business_now() RETURNS timestamptz LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT pinned_at FROM clock_override), now())
$$;

-- Business timestamps default to business time, for writers that do not set them (set here,
-- after the function exists: numbered migrations run before the function files).
ALTER TABLE rights ALTER COLUMN renewed_at SET DEFAULT business_now();
ALTER TABLE cards ALTER COLUMN issued_at SET DEFAULT business_now();
ALTER TABLE pending_fees ALTER COLUMN created_at SET DEFAULT business_now();
ALTER TABLE transfers ALTER COLUMN created_at SET DEFAULT business_now();
ALTER TABLE operators ALTER COLUMN created_at SET DEFAULT business_now();
ALTER TABLE mail_outbox ALTER COLUMN created_at SET DEFAULT business_now();
ALTER TABLE renewal_drafts ALTER COLUMN kept_at SET DEFAULT business_now();
