-- Under SERIALIZABLE a sequential scan takes a predicate lock on the whole
-- table, so every concurrent writer of it looks like a conflict. These
-- indexes (with `enable_seqscan = off` in job transactions) keep the reads
-- of a purchase on index pages of its own rows.
CREATE INDEX mandates_triple ON mandates (sender_id, beneficiary_id, currency, id);
CREATE INDEX allowed_usage_owner ON allowed_usage (owner_id);

-- A partial index on the ACTIVE rows looked as cheap to the planner as the
-- primary key for `UPDATE … WHERE id = $1 AND status = 'ACTIVE'`, and
-- scanning it locks the range of every active mandate (or funded escrow):
-- the sweeps get full indexes on (status, time) instead.
DROP INDEX mandates_expiry;
CREATE INDEX mandates_status_expiry ON mandates (status, expires_at);
DROP INDEX escrows_deadline;
CREATE INDEX escrows_status_deadline ON escrows (status, deadline_at);
