CREATE OR REPLACE FUNCTION rights_default_programme() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    SELECT default_programme(e.kind) INTO NEW.programme
      FROM beneficiaries b JOIN establishments e ON e.id = b.establishment_id
     WHERE b.id = NEW.beneficiary_id;
    RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER rights_default_programme BEFORE INSERT ON rights
    FOR EACH ROW WHEN (NEW.programme IS NULL) EXECUTE FUNCTION rights_default_programme();
