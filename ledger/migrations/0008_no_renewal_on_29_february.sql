-- Renewal opens every year on the same month and day: 29 February exists one year in four, and
-- rights_renewal_opens_at() would fail the other three.
ALTER TABLE rules ADD CONSTRAINT rules_renewal_opens_every_year
    CHECK ((rights_renewal_opens_month, rights_renewal_opens_day) <> (2, 29));
