-- Under SERIALIZABLE a sequential scan takes a predicate lock on the whole
-- table, so every concurrent writer of it looks like a conflict. These
-- indexes (with `enable_seqscan = off` in job transactions) keep the reads
-- of a purchase on index pages of its own rows.
CREATE INDEX mandates_triple ON mandates (sender_id, beneficiary_id, currency, id);
CREATE INDEX allowed_usage_owner ON allowed_usage (owner_id);
