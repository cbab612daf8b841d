-- With no programme given, the establishment's kind decides (the usual case).
CREATE OR REPLACE FUNCTION default_programme(p_establishment_kind text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE p_establishment_kind WHEN 'LYCEE' THEN 'BOOKS' ELSE 'EQUIPMENT' END
$$;
