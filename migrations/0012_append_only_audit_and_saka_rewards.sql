-- The database as the last guard.
--
-- The audit log is append-only, as the SAKA ledger is: no UPDATE, DELETE or
-- TRUNCATE, whoever asks.
CREATE FUNCTION audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP
        USING ERRCODE = 'restrict_violation', CONSTRAINT = 'audit_log_append_only';
END
$$;

CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

-- A harvest credit is exactly its reason's fixed reward (as in
-- `HarvestReason::reward`; a domain test keeps the two in step), so a
-- hand-written INSERT into the ledger mints nothing. A manual credit
-- already needs its applied adjustment (`saka_ledger_manual_adjust`, the
-- insert trigger and `saka_ledger_adjustment_key`). NOT VALID: rows already
-- written are the saka_ledger invariant's business; every new row is held
-- to it.
ALTER TABLE saka_ledger ADD CONSTRAINT saka_ledger_harvest_reward CHECK (
    direction <> 'EARN' OR CASE reason
        WHEN 'CONTENT_READ' THEN amount = 10
        WHEN 'POLL_VOTE' THEN amount = 5
        WHEN 'INVITE_ACCEPTED' THEN amount = 50
        WHEN 'INVEST_BONUS' THEN amount = 100
        ELSE true
    END) NOT VALID;
