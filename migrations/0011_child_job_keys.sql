-- Follow-up jobs (payouts after an approval, the deadline sweep's
-- per-escrow jobs) get an idempotency namespace of their own: a client's
-- keys are unique per principal among jobs without a parent, children's
-- keys are unique among jobs with one. A client can no longer take the key
-- of a payout its own approval will need.
DROP INDEX jobs_idempotency;
CREATE UNIQUE INDEX jobs_idempotency ON jobs (actor_user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND parent_job_id IS NULL;
CREATE UNIQUE INDEX jobs_child_idempotency ON jobs (idempotency_key) WHERE parent_job_id IS NOT NULL;
