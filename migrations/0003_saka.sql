-- SAKA (engagement grains): wallets, an immutable ledger that is the only
-- thing able to move a balance, per-reason daily harvest counters and manual
-- adjustments with dual approval.
--
-- How the database refuses a balance change without its ledger row:
--   * every ledger row carries its wallet's state after it (`seq`,
--     `balance_after`, `total_harvested_after`, `total_spent_after`), computed
--     by a BEFORE INSERT trigger from the locked wallet row, whatever the
--     INSERT said;
--   * an AFTER INSERT trigger copies that state onto the wallet;
--   * a BEFORE UPDATE trigger on the wallet refuses any change of balance,
--     totals or `ledger_seq` unless the new values are exactly those of the
--     ledger row numbered `OLD.ledger_seq + 1` for this user. That row can
--     only exist if it was inserted (and so applied) through the ledger, so a
--     hand-written `UPDATE ... SET balance = balance + 100` fails, and so does
--     replaying an existing row or setting some session flag first.
-- By induction, for every wallet `balance = sum(EARN) - sum(SPEND)` and the
-- totals are the sums of their direction. The ledger refuses UPDATE, DELETE
-- and TRUNCATE. The day counters (`manual_adjust_today`, `manual_adjust_day`)
-- are not balances and stay freely updatable (the roll-over resets them).

CREATE TABLE saka_wallets (
    user_id              uuid PRIMARY KEY REFERENCES users (id),
    balance              bigint NOT NULL DEFAULT 0,
    total_harvested      bigint NOT NULL DEFAULT 0,
    total_spent          bigint NOT NULL DEFAULT 0,
    -- Number of ledger rows applied to this wallet (the last row's `seq`).
    ledger_seq           bigint NOT NULL DEFAULT 0,
    -- Grains manually adjusted on `manual_adjust_day` (a SAKA day). A counter
    -- from an earlier day counts as zero in the guard itself.
    manual_adjust_today  bigint NOT NULL DEFAULT 0,
    manual_adjust_day    date,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT saka_wallets_balance_nonneg CHECK (balance >= 0),
    CONSTRAINT saka_wallets_totals_nonneg CHECK (total_harvested >= 0 AND total_spent >= 0 AND ledger_seq >= 0),
    CONSTRAINT saka_wallets_balance_is_totals CHECK (balance = total_harvested - total_spent),
    CONSTRAINT saka_wallets_manual_cap CHECK (manual_adjust_today BETWEEN 0 AND 1000)
);

CREATE TABLE saka_adjustments (
    id              uuid PRIMARY KEY,
    user_id         uuid NOT NULL REFERENCES users (id),
    amount          bigint NOT NULL,
    note            text NOT NULL,
    status          text NOT NULL
                    CHECK (status IN ('PENDING_APPROVAL', 'APPLIED', 'REJECTED', 'EXPIRED')),
    requested_by    uuid NOT NULL REFERENCES users (id),
    request_job_id  uuid,
    approved_by     uuid REFERENCES users (id),
    rejected_by     uuid REFERENCES users (id),
    decision_note   text,
    decided_at      timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz,
    CONSTRAINT saka_adjustments_amount_range CHECK (amount BETWEEN 1 AND 1000),
    CONSTRAINT saka_adjustments_note_len CHECK (char_length(note) BETWEEN 1 AND 1000),
    -- The second approval, in the database too: never the requester, and an
    -- adjustment above 500 is never APPLIED without it.
    CONSTRAINT saka_adjustments_not_self_approved CHECK (approved_by IS NULL OR approved_by <> requested_by),
    CONSTRAINT saka_adjustments_dual_approval CHECK (status <> 'APPLIED' OR amount <= 500 OR approved_by IS NOT NULL),
    CONSTRAINT saka_adjustments_pending_expires CHECK (status <> 'PENDING_APPROVAL' OR expires_at IS NOT NULL),
    CONSTRAINT saka_adjustments_decided CHECK ((status = 'PENDING_APPROVAL') = (decided_at IS NULL))
);
CREATE INDEX saka_adjustments_pending ON saka_adjustments (expires_at) WHERE status = 'PENDING_APPROVAL';
CREATE INDEX saka_adjustments_user ON saka_adjustments (user_id);

CREATE TABLE saka_ledger (
    id                     uuid PRIMARY KEY,
    user_id                uuid NOT NULL REFERENCES saka_wallets (user_id),
    -- Filled by the BEFORE INSERT trigger from the wallet, never by the caller.
    seq                    bigint NOT NULL,
    direction              text NOT NULL CHECK (direction IN ('EARN', 'SPEND')),
    reason                 text NOT NULL,
    amount                 bigint NOT NULL,
    balance_after          bigint NOT NULL,
    total_harvested_after  bigint NOT NULL,
    total_spent_after      bigint NOT NULL,
    -- One movement per job, one per adjustment: a replayed job or a second
    -- approval can never credit twice.
    job_id                 uuid CONSTRAINT saka_ledger_job_key UNIQUE,
    adjustment_id          uuid REFERENCES saka_adjustments (id) CONSTRAINT saka_ledger_adjustment_key UNIQUE,
    created_at             timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT saka_ledger_amount_positive CHECK (amount > 0),
    CONSTRAINT saka_ledger_balance_after_nonneg CHECK (balance_after >= 0),
    CONSTRAINT saka_ledger_user_seq_key UNIQUE (user_id, seq),
    CONSTRAINT saka_ledger_reason_len CHECK (char_length(reason) BETWEEN 1 AND 200),
    CONSTRAINT saka_ledger_earn_reason CHECK (
        direction = 'SPEND'
        OR reason IN ('CONTENT_READ', 'POLL_VOTE', 'INVITE_ACCEPTED', 'INVEST_BONUS', 'MANUAL_ADJUST')),
    -- A manual credit always names its (applied) adjustment, and only it does.
    CONSTRAINT saka_ledger_manual_adjust CHECK (
        (direction = 'EARN' AND reason = 'MANUAL_ADJUST') = (adjustment_id IS NOT NULL))
);

-- Per-reason harvest counts per SAKA day; checked and incremented by one
-- guarded upsert.
CREATE TABLE saka_harvest_counts (
    user_id  uuid NOT NULL REFERENCES users (id),
    reason   text NOT NULL,
    day      date NOT NULL,
    count    integer NOT NULL CHECK (count > 0),
    PRIMARY KEY (user_id, reason, day)
);

-- A wallet is born empty: grains only arrive through the ledger.
CREATE FUNCTION saka_wallets_before_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.balance <> 0 OR NEW.total_harvested <> 0 OR NEW.total_spent <> 0 OR NEW.ledger_seq <> 0
       OR NEW.manual_adjust_today <> 0 THEN
        RAISE EXCEPTION 'a SAKA wallet starts empty; grains move only through saka_ledger'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'saka_wallets_ledger_only';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER saka_wallets_before_insert BEFORE INSERT ON saka_wallets
    FOR EACH ROW EXECUTE FUNCTION saka_wallets_before_insert();

-- A balance (or total) changes only to the state recorded by the next ledger
-- row of this wallet.
CREATE FUNCTION saka_wallets_before_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.user_id <> OLD.user_id THEN
        RAISE EXCEPTION 'a SAKA wallet never changes owner'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'saka_wallets_ledger_only';
    END IF;
    IF (NEW.balance, NEW.total_harvested, NEW.total_spent, NEW.ledger_seq)
       IS DISTINCT FROM (OLD.balance, OLD.total_harvested, OLD.total_spent, OLD.ledger_seq) THEN
        IF NEW.ledger_seq IS DISTINCT FROM OLD.ledger_seq + 1 OR NOT EXISTS (
            SELECT 1 FROM saka_ledger l
             WHERE l.user_id = NEW.user_id AND l.seq = NEW.ledger_seq
               AND l.balance_after = NEW.balance
               AND l.total_harvested_after = NEW.total_harvested
               AND l.total_spent_after = NEW.total_spent) THEN
            RAISE EXCEPTION 'SAKA balances change only through a saka_ledger row'
                USING ERRCODE = 'check_violation', CONSTRAINT = 'saka_wallets_ledger_only';
        END IF;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER saka_wallets_before_update BEFORE UPDATE ON saka_wallets
    FOR EACH ROW EXECUTE FUNCTION saka_wallets_before_update();

-- Numbers the row and computes the wallet's state after it, from the wallet
-- row locked here (so concurrent movements of one wallet queue up, and a
-- serializable transaction that raced another one fails with 40001).
CREATE FUNCTION saka_ledger_before_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    w saka_wallets%ROWTYPE;
BEGIN
    SELECT * INTO w FROM saka_wallets WHERE user_id = NEW.user_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no SAKA wallet for user %', NEW.user_id
            USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'saka_ledger_user_id_fkey';
    END IF;
    NEW.seq := w.ledger_seq + 1;
    IF NEW.direction = 'EARN' THEN
        NEW.balance_after := w.balance + NEW.amount;
        NEW.total_harvested_after := w.total_harvested + NEW.amount;
        NEW.total_spent_after := w.total_spent;
    ELSE
        NEW.balance_after := w.balance - NEW.amount;
        NEW.total_harvested_after := w.total_harvested;
        NEW.total_spent_after := w.total_spent + NEW.amount;
    END IF;
    -- A manual credit needs its adjustment APPLIED (which, above 500, needs a
    -- second admin) for exactly this user and amount.
    IF NEW.adjustment_id IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM saka_adjustments a
         WHERE a.id = NEW.adjustment_id AND a.user_id = NEW.user_id
           AND a.amount = NEW.amount AND a.status = 'APPLIED') THEN
        RAISE EXCEPTION 'a manual SAKA credit needs its applied adjustment'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'saka_ledger_adjustment_applied';
    END IF;
    NEW.created_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER saka_ledger_before_insert BEFORE INSERT ON saka_ledger
    FOR EACH ROW EXECUTE FUNCTION saka_ledger_before_insert();

-- The only statement in the schema that moves a balance.
CREATE FUNCTION saka_ledger_apply() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE saka_wallets
       SET balance = NEW.balance_after,
           total_harvested = NEW.total_harvested_after,
           total_spent = NEW.total_spent_after,
           ledger_seq = NEW.seq,
           updated_at = now()
     WHERE user_id = NEW.user_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER saka_ledger_apply AFTER INSERT ON saka_ledger
    FOR EACH ROW EXECUTE FUNCTION saka_ledger_apply();

CREATE FUNCTION saka_ledger_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'saka_ledger is append-only (% refused)', TG_OP
        USING ERRCODE = 'restrict_violation', CONSTRAINT = 'saka_ledger_immutable';
END
$$;

CREATE TRIGGER saka_ledger_no_update BEFORE UPDATE OR DELETE ON saka_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION saka_ledger_immutable();
CREATE TRIGGER saka_ledger_no_truncate BEFORE TRUNCATE ON saka_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION saka_ledger_immutable();

-- Decisions are final and a request's facts never change.
CREATE FUNCTION saka_adjustments_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'SAKA adjustments are kept'
            USING ERRCODE = 'restrict_violation', CONSTRAINT = 'saka_adjustments_final';
    END IF;
    IF OLD.status <> 'PENDING_APPROVAL'
       OR (NEW.id, NEW.user_id, NEW.amount, NEW.note, NEW.requested_by, NEW.request_job_id, NEW.created_at, NEW.expires_at)
          IS DISTINCT FROM
          (OLD.id, OLD.user_id, OLD.amount, OLD.note, OLD.requested_by, OLD.request_job_id, OLD.created_at, OLD.expires_at) THEN
        RAISE EXCEPTION 'a decided SAKA adjustment never changes, nor does a request''s content'
            USING ERRCODE = 'restrict_violation', CONSTRAINT = 'saka_adjustments_final';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER saka_adjustments_guard BEFORE UPDATE OR DELETE ON saka_adjustments
    FOR EACH ROW EXECUTE FUNCTION saka_adjustments_guard();
