-- A job's end changes its status, so it is never a HOT update: every index
-- of `jobs` gets a new entry for it, and each entry is work inside the
-- job's one commit. Two indexes served only listings, retention and a
-- metrics scan; they go. The listings that matter get partial indexes that
-- a succeeded job never enters, and retention one over the few scheduled
-- kinds it deletes.
DROP INDEX jobs_status_kind;
DROP INDEX jobs_finished_at;
CREATE INDEX jobs_dead ON jobs (kind, id) WHERE status = 'dead';
CREATE INDEX jobs_failed ON jobs (kind, id) WHERE status = 'failed';
CREATE INDEX jobs_scheduled ON jobs (id)
    WHERE kind IN ('job_relay', 'retention', 'mandate_expiry', 'saka_day_rollover', 'saka_approval_expiry',
                   'escrow_deadlines');
