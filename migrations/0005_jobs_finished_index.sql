-- /metrics reads the latency of jobs finished in the last minutes.
CREATE INDEX jobs_finished_at ON jobs (finished_at) WHERE finished_at IS NOT NULL;
