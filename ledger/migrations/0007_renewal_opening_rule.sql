-- When rights renewal opens for the next school year, as a month and day of business time (20
-- June by the region's documents): a rule the database holds like the others (it was an
-- environment variable, so two servers could disagree). rights_renewal_opens_at() reads it.
ALTER TABLE rules
    ADD COLUMN rights_renewal_opens_month smallint NOT NULL DEFAULT 6
        CHECK (rights_renewal_opens_month BETWEEN 1 AND 6),
    ADD COLUMN rights_renewal_opens_day smallint NOT NULL DEFAULT 20
        CHECK (rights_renewal_opens_day BETWEEN 1 AND 30);
