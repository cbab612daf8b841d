CREATE OR REPLACE FUNCTION luhn_check_digit(p_digits text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT ((10 - sum(CASE WHEN (length(p_digits) - i) % 2 = 0
                           THEN (2 * d) / 10 + (2 * d) % 10 ELSE d END) % 10) % 10)::text
      FROM (SELECT i, substr(p_digits, i, 1)::integer AS d
              FROM generate_series(1, length(p_digits)) AS i) digits
$$;
