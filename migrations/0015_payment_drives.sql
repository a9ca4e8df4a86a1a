-- One payment, at most one payout the PSP pays. Each drive of a payment
-- (its first call to the PSP, and each re-drive after a failure) is a row
-- here under its own PSP idempotency key, with the `psp_ref` the PSP gave
-- it and what the PSP said of it. `payments.drive` names the payment's
-- current drive: a settlement that names another one moves nothing and
-- raises `PSP_DOUBLE_PAYOUT`.
ALTER TABLE payments ADD COLUMN drive integer NOT NULL DEFAULT 0;

CREATE TABLE payment_drives (
    payment_id       uuid NOT NULL REFERENCES payments (id),
    drive            integer NOT NULL CHECK (drive >= 0),
    idempotency_key  text NOT NULL CONSTRAINT payment_drives_key UNIQUE,
    psp_ref          text,
    -- What the PSP said of this drive: NULL (asked, no answer recorded yet),
    -- `accepted`, `refused`, `failed`, `settled`, or `not_sent` (an earlier
    -- drive was adopted instead).
    psp_status       text CHECK (psp_status IN ('accepted', 'refused', 'failed', 'settled', 'not_sent')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (payment_id, drive)
);
CREATE INDEX payment_drives_psp_ref ON payment_drives (psp_ref) WHERE psp_ref IS NOT NULL;

-- Payments from before: their current drive is their last re-drive.
UPDATE payments SET drive = redrives;
INSERT INTO payment_drives (payment_id, drive, idempotency_key, psp_ref, psp_status)
SELECT id, redrives, CASE WHEN redrives = 0 THEN id::text ELSE id::text || '-r' || redrives END, psp_ref,
       CASE status WHEN 'SENT' THEN 'accepted' WHEN 'SETTLED' THEN 'settled' WHEN 'ERROR' THEN 'failed' END
  FROM payments
 WHERE attempts > 0 OR psp_ref IS NOT NULL;

-- The PSP's health as the payout path sees it: `auth_failing_since` is set
-- by the first 401/403 of an outage (which raises one `PSP_AUTH_FAILED`
-- alert) and cleared by the next answer that is not one.
CREATE TABLE psp_health (
    id                  integer PRIMARY KEY CHECK (id = 1),
    auth_failing_since  timestamptz,
    last_auth_error     text
);
INSERT INTO psp_health (id) VALUES (1);
