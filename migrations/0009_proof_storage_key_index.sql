-- Retention asks which stored files a proof references, by key.
CREATE INDEX proofs_storage_key ON proofs (storage_key);
