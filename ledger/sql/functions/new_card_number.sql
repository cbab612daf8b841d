CREATE OR REPLACE FUNCTION new_card_number() RETURNS text LANGUAGE sql VOLATILE AS $$
    SELECT payload || luhn_check_digit(payload)
      FROM (SELECT '6331' || lpad(nextval('card_number_sequence')::text, 11, '0') AS payload) p
$$;
