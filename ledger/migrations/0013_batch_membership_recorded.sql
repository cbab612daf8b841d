-- A batch close counted the terminal's authorizations by id range (from the previous close to
-- its own row). Ids are drawn at insert and transactions commit in another order, so a message
-- with a lower id that committed after the close was in no batch at all (issue 15 §1.6). Each
-- authorization now records the batch it was counted in: the close marks the terminal's
-- committed, not yet counted rows, and a row committed later is still unmarked for the next one.
ALTER TABLE authorizations ADD COLUMN batch_number integer CHECK (batch_number > 0);

-- Rows already counted keep the batch their id range put them in (the close's own row included).
UPDATE authorizations a SET batch_number = b.batch_number
  FROM terminal_batches b
 WHERE a.terminal_id = b.terminal_id AND a.request_hash IS NOT NULL
   AND a.id BETWEEN b.first_authorization_id AND b.close_authorization_id;

-- What a close reads: the terminal's messages not yet in a batch (batch_number IS NULL), which it
-- marks, then those of the batch it marked. (terminal_id, request_id) alone made it read every
-- row the terminal ever sent.
CREATE INDEX authorizations_batch ON authorizations (terminal_id, batch_number);

-- batch_totals() now reads a batch by its number, no longer an id range.
DROP FUNCTION IF EXISTS batch_totals(text, bigint, bigint);

COMMENT ON COLUMN terminal_batches.first_authorization_id IS
    'The lowest authorization id counted in the batch (the close''s own id when it counted none). '
    'The batch itself is the authorizations whose batch_number is this one (migration 0013).';
