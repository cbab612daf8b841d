-- authorize_batch() takes each message's time budget (sql/functions/authorize_batch.sql): the
-- old signature goes, the file creates the new one.
DROP FUNCTION IF EXISTS authorize_batch(text[], text[], text[], bytea[], integer[], bytea[],
    bigint[], timestamp[], boolean[], text[], bytea[], bigint[]);
