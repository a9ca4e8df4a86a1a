-- Foundation: users and keys, the job record, cron ticks, the audit trail,
-- the catalogue, mandates and purchases.

CREATE TABLE users (
    id          uuid PRIMARY KEY,
    username    text NOT NULL CONSTRAINT users_username_key UNIQUE,
    email       text NOT NULL,
    is_active   boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_username_len CHECK (char_length(username) BETWEEN 1 AND 64),
    CONSTRAINT users_email_len CHECK (char_length(email) BETWEEN 3 AND 254)
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

CREATE TABLE api_keys (
    id            uuid PRIMARY KEY,
    user_id       uuid NOT NULL REFERENCES users (id),
    prefix        text NOT NULL,
    key_hash      bytea NOT NULL CONSTRAINT api_keys_hash_key UNIQUE,
    role          text NOT NULL CHECK (role IN ('admin', 'support', 'sender', 'beneficiary', 'psp')),
    name          text NOT NULL,
    expires_at    timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    last_used_at  timestamptz
);
CREATE INDEX api_keys_user ON api_keys (user_id);

-- The job record. Postgres is the record, Redis only the transport.
CREATE TABLE jobs (
    id               uuid PRIMARY KEY,
    kind             text NOT NULL,
    payload          jsonb NOT NULL,
    actor_user_id    uuid NOT NULL,
    actor_key_id     uuid NOT NULL,
    actor_role       text NOT NULL,
    idempotency_key  text,
    request_hash     bytea,
    status           text NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'dead')),
    attempts         integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    pushed_at        timestamptz,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    locked_by        text,
    locked_until     timestamptz,
    result           jsonb,
    error            jsonb,
    last_error       text,
    CONSTRAINT jobs_idempotency_key_len CHECK (char_length(idempotency_key) BETWEEN 1 AND 255)
);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (actor_user_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_pending ON jobs (next_attempt_at) WHERE status IN ('queued', 'running');
CREATE INDEX jobs_status_kind ON jobs (status, kind, id);

-- One row per (schedule, tick): the replica whose insert wins runs the tick.
CREATE TABLE cron_ticks (
    schedule    text NOT NULL,
    tick        timestamptz NOT NULL,
    claimed_by  text NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT now(),
    job_id      uuid,
    PRIMARY KEY (schedule, tick)
);

CREATE TABLE audit_log (
    id         uuid PRIMARY KEY,
    actor      text NOT NULL,
    action     text NOT NULL,
    entity     text NOT NULL,
    entity_id  text NOT NULL,
    data       jsonb NOT NULL DEFAULT '{}'::jsonb,
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_entity ON audit_log (entity, entity_id);
CREATE INDEX audit_action ON audit_log (action);

CREATE TABLE spend_categories (
    id     uuid PRIMARY KEY,
    code   text NOT NULL CONSTRAINT spend_categories_code_key UNIQUE,
    label  text NOT NULL
);

CREATE TABLE merchants (
    id            uuid PRIMARY KEY,
    name          text NOT NULL CONSTRAINT merchants_name_key UNIQUE,
    category_id   uuid REFERENCES spend_categories (id),
    is_certified  boolean NOT NULL DEFAULT false
);

CREATE TABLE allowed_usage (
    id           uuid PRIMARY KEY,
    owner_id     uuid NOT NULL REFERENCES users (id),
    merchant_id  uuid REFERENCES merchants (id),
    category_id  uuid REFERENCES spend_categories (id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT allowed_usage_exactly_one CHECK ((merchant_id IS NULL) <> (category_id IS NULL))
);
CREATE UNIQUE INDEX allowed_usage_owner_merchant ON allowed_usage (owner_id, merchant_id) WHERE merchant_id IS NOT NULL;
CREATE UNIQUE INDEX allowed_usage_owner_category ON allowed_usage (owner_id, category_id) WHERE category_id IS NOT NULL;

CREATE TABLE allowlist (
    id            uuid PRIMARY KEY,
    owner_id      uuid NOT NULL REFERENCES users (id),
    recipient_id  uuid NOT NULL REFERENCES users (id),
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT allowlist_pair_key UNIQUE (owner_id, recipient_id)
);

CREATE TABLE certifications (
    user_id     uuid PRIMARY KEY REFERENCES users (id),
    level       text NOT NULL CHECK (level IN ('BASIC', 'GOLD')),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE mandates (
    id                   uuid PRIMARY KEY,
    sender_id            uuid NOT NULL REFERENCES users (id),
    beneficiary_id       uuid NOT NULL REFERENCES users (id),
    total_amount         numeric(18, 2) NOT NULL CHECK (total_amount > 0),
    spent_amount         numeric(18, 2) NOT NULL DEFAULT 0,
    currency             text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    allowed_merchant_id  uuid REFERENCES merchants (id),
    allowed_category_id  uuid REFERENCES spend_categories (id),
    expires_at           timestamptz NOT NULL,
    status               text NOT NULL DEFAULT 'ACTIVE'
                         CHECK (status IN ('ACTIVE', 'CONSUMED', 'EXPIRED', 'REVOKED')),
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT mandates_spent_within_total CHECK (spent_amount >= 0 AND spent_amount <= total_amount),
    CONSTRAINT mandates_not_self CHECK (sender_id <> beneficiary_id)
);
-- The audit's R1 and R2: one ACTIVE mandate per sealed pair and currency.
CREATE UNIQUE INDEX mandates_one_active_per_pair ON mandates (sender_id, beneficiary_id, currency) WHERE status = 'ACTIVE';
CREATE INDEX mandates_expiry ON mandates (expires_at) WHERE status = 'ACTIVE';

CREATE TABLE purchases (
    id              uuid PRIMARY KEY,
    job_id          uuid NOT NULL CONSTRAINT purchases_job_key UNIQUE,
    sender_id       uuid NOT NULL REFERENCES users (id),
    beneficiary_id  uuid NOT NULL REFERENCES users (id),
    merchant_id     uuid NOT NULL REFERENCES merchants (id),
    category_id     uuid REFERENCES spend_categories (id),
    mandate_id      uuid NOT NULL REFERENCES mandates (id),
    amount          numeric(18, 2) NOT NULL CHECK (amount > 0),
    currency        text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status          text NOT NULL CHECK (status IN ('COMPLETED')),
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX purchases_mandate ON purchases (mandate_id);
