-- A signed PSP event whose JSON Postgres cannot hold as jsonb (U+0000
-- inside) is still acknowledged and kept as its raw text; its job refuses
-- it with an alert. The job reads the raw body, the signed truth, anyway.
ALTER TABLE psp_webhook_events ALTER COLUMN payload DROP NOT NULL;
