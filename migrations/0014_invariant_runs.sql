-- Each run of the invariants (DOMAIN.md, "Invariants and reconciliation"):
-- when, how many violating rows, and per invariant its count and a sample.
CREATE TABLE invariant_runs (
    id          uuid PRIMARY KEY,
    checked_at  timestamptz NOT NULL,
    violations  integer NOT NULL CHECK (violations >= 0),
    result      jsonb NOT NULL
);
CREATE INDEX invariant_runs_checked ON invariant_runs (checked_at DESC);
