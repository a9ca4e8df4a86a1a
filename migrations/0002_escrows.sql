-- Escrows, milestones, proofs, payments (payouts through the PSP), PSP
-- webhook events, restricted transfers, alerts and usage payees.

CREATE TABLE escrows (
    id                  uuid PRIMARY KEY,
    client_id           uuid NOT NULL REFERENCES users (id),
    provider_id         uuid NOT NULL REFERENCES users (id),
    amount_total        numeric(18, 2) NOT NULL CHECK (amount_total > 0),
    currency            text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status              text NOT NULL DEFAULT 'DRAFT'
                        CHECK (status IN ('DRAFT', 'FUNDED', 'RELEASABLE', 'RELEASED', 'REFUNDED', 'CANCELLED')),
    funded_amount       numeric(18, 2) NOT NULL DEFAULT 0,
    -- Sum of payments PENDING, SENT or SETTLED: what the balance no longer holds.
    reserved_amount     numeric(18, 2) NOT NULL DEFAULT 0,
    -- Sum of SETTLED payments.
    paid_amount         numeric(18, 2) NOT NULL DEFAULT 0,
    release_conditions  jsonb NOT NULL DEFAULT '{}'::jsonb,
    deadline_at         timestamptz NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT escrows_not_self CHECK (client_id <> provider_id),
    CONSTRAINT escrows_funded_within_total CHECK (funded_amount >= 0 AND funded_amount <= amount_total),
    -- The balance (funded - reserved) is never negative.
    CONSTRAINT escrows_reserved_within_funded CHECK (reserved_amount >= 0 AND reserved_amount <= funded_amount),
    CONSTRAINT escrows_paid_within_reserved CHECK (paid_amount >= 0 AND paid_amount <= reserved_amount)
);
CREATE INDEX escrows_deadline ON escrows (deadline_at) WHERE status IN ('FUNDED', 'RELEASABLE');

CREATE TABLE escrow_deposits (
    id          uuid PRIMARY KEY,
    escrow_id   uuid NOT NULL REFERENCES escrows (id),
    amount      numeric(18, 2) NOT NULL CHECK (amount > 0),
    source      text NOT NULL CHECK (source IN ('api', 'psp')),
    job_id      uuid CONSTRAINT escrow_deposits_job_key UNIQUE,
    event_id    text CONSTRAINT escrow_deposits_event_key UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE escrow_events (
    id         uuid PRIMARY KEY,
    escrow_id  uuid NOT NULL REFERENCES escrows (id),
    kind       text NOT NULL,
    actor      text NOT NULL,
    data       jsonb NOT NULL DEFAULT '{}'::jsonb,
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX escrow_events_escrow ON escrow_events (escrow_id, at);

CREATE TABLE milestones (
    id                 uuid PRIMARY KEY,
    escrow_id          uuid NOT NULL REFERENCES escrows (id),
    idx                integer NOT NULL CHECK (idx >= 1),
    label              text NOT NULL,
    amount             numeric(18, 2) NOT NULL CHECK (amount > 0),
    proof_type         text NOT NULL CHECK (proof_type IN ('PHOTO', 'DOCUMENT')),
    geofence_lat       double precision CHECK (geofence_lat BETWEEN -90 AND 90),
    geofence_lng       double precision CHECK (geofence_lng BETWEEN -180 AND 180),
    geofence_radius_m  double precision CHECK (geofence_radius_m > 0),
    status             text NOT NULL DEFAULT 'WAITING'
                       CHECK (status IN ('WAITING', 'PENDING_REVIEW', 'APPROVED', 'PAYING', 'PAID')),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT milestones_escrow_idx_key UNIQUE (escrow_id, idx),
    CONSTRAINT milestones_geofence_whole CHECK ((geofence_lat IS NULL) = (geofence_lng IS NULL) AND (geofence_lat IS NULL) = (geofence_radius_m IS NULL))
);

CREATE TABLE proofs (
    id              uuid PRIMARY KEY,
    escrow_id       uuid NOT NULL REFERENCES escrows (id),
    milestone_id    uuid NOT NULL REFERENCES milestones (id),
    sha256          text NOT NULL CONSTRAINT proofs_sha256_key UNIQUE,
    storage_key     text NOT NULL,
    content_type    text,
    size_bytes      bigint NOT NULL,
    source          text NOT NULL,
    status          text NOT NULL DEFAULT 'PENDING'
                    CHECK (status IN ('PENDING', 'PENDING_REVIEW', 'APPROVED', 'REJECTED')),
    captured_at     timestamptz,
    gps_lat         double precision,
    gps_lng         double precision,
    distance_m      double precision,
    review_reasons  jsonb NOT NULL DEFAULT '[]'::jsonb,
    rejection_code  text,
    uploaded_by     uuid NOT NULL,
    uploaded_at     timestamptz NOT NULL DEFAULT now(),
    decided_by      uuid,
    decided_at      timestamptz,
    decision_note   text
);
CREATE INDEX proofs_milestone ON proofs (milestone_id);

CREATE TABLE payments (
    id               uuid PRIMARY KEY,
    escrow_id        uuid NOT NULL REFERENCES escrows (id),
    milestone_id     uuid REFERENCES milestones (id),
    kind             text NOT NULL CHECK (kind IN ('MILESTONE', 'RELEASE', 'REFUND', 'USAGE')),
    recipient        text NOT NULL,
    amount           numeric(18, 2) NOT NULL CHECK (amount > 0),
    currency         text NOT NULL,
    status           text NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'SENT', 'SETTLED', 'ERROR')),
    -- Deterministic: one payout per milestone, one release or refund per escrow.
    idempotency_key  text NOT NULL CONSTRAINT payments_idempotency_key UNIQUE,
    psp_ref          text CONSTRAINT payments_psp_ref_key UNIQUE,
    error_reason     text,
    attempts         integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payments_escrow ON payments (escrow_id);

CREATE TABLE psp_webhook_events (
    id           uuid PRIMARY KEY,
    event_id     text NOT NULL CONSTRAINT psp_webhook_events_event_key UNIQUE,
    type         text NOT NULL,
    payload      jsonb NOT NULL,
    raw_body     text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    job_id       uuid
);

CREATE TABLE transactions (
    id           uuid PRIMARY KEY,
    job_id       uuid NOT NULL CONSTRAINT transactions_job_key UNIQUE,
    sender_id    uuid NOT NULL REFERENCES users (id),
    receiver_id  uuid NOT NULL REFERENCES users (id),
    amount       numeric(18, 2) NOT NULL CHECK (amount > 0),
    currency     text NOT NULL,
    status       text NOT NULL CHECK (status IN ('COMPLETED')),
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE alerts (
    id             uuid PRIMARY KEY,
    type           text NOT NULL,
    message        text NOT NULL,
    actor_user_id  uuid,
    payload        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alerts_type ON alerts (type, id);

CREATE TABLE allowed_payees (
    id           uuid PRIMARY KEY,
    escrow_id    uuid NOT NULL REFERENCES escrows (id),
    payee_ref    text NOT NULL,
    label        text NOT NULL,
    daily_limit  numeric(18, 2) CHECK (daily_limit >= 0),
    total_limit  numeric(18, 2) CHECK (total_limit >= 0),
    spent_day    date,
    spent_today  numeric(18, 2) NOT NULL DEFAULT 0,
    spent_total  numeric(18, 2) NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT allowed_payees_ref_key UNIQUE (escrow_id, payee_ref),
    CONSTRAINT allowed_payees_daily_within CHECK (daily_limit IS NULL OR spent_today <= daily_limit),
    CONSTRAINT allowed_payees_total_within CHECK (total_limit IS NULL OR spent_total <= total_limit)
);

ALTER TABLE payments ADD COLUMN payee_id uuid REFERENCES allowed_payees (id);

-- Jobs a job creates inside its own transaction (payouts after an approval):
-- the executor pushes them right after the parent commits.
ALTER TABLE jobs ADD COLUMN parent_job_id uuid;
CREATE INDEX jobs_parent ON jobs (parent_job_id) WHERE parent_job_id IS NOT NULL;
