-- A payment the PSP failed is driven again under a new PSP idempotency key
-- (`{payment_id}-r{n}`): with the bare id the PSP would replay its failure.
ALTER TABLE payments ADD COLUMN redrives integer NOT NULL DEFAULT 0;
