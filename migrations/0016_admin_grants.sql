-- Four eyes on admin power (DOMAIN.md, "Users, roles, API keys").
--
-- Over HTTP an admin key is a request (`admin_grants`) that a second,
-- independent active admin approves; only then does its `api_keys` row
-- exist. Every key records where its power came from, so an approval can
-- tell whether the approver got their power from the requester:
--   origin        'api' (made over HTTP), 'host' (`api keys create`),
--                 'bootstrap' (`BOOTSTRAP_ADMIN_KEY`), 'legacy' (made before
--                 this migration by a path the audit trail does not name);
--   granted_by    the admin who made it over HTTP (or requested its grant);
--   approved_by   the second admin who approved its grant;
--   grant_id      that grant;
--   derived_from  every user this key's power comes from, transitively:
--                 granted_by, approved_by and the derived_from of the keys
--                 they used. Written once with the row, never updated.

CREATE TABLE admin_grants (
    id                  uuid PRIMARY KEY,
    -- The grantee and the key the grant makes once approved.
    user_id             uuid NOT NULL REFERENCES users (id),
    role                text NOT NULL DEFAULT 'admin' CHECK (role = 'admin'),
    name                text NOT NULL,
    expires_at          timestamptz,
    -- The secret was shown once, to the requester; only its hash is kept.
    prefix              text NOT NULL,
    key_hash            bytea NOT NULL CONSTRAINT admin_grants_hash_key UNIQUE,
    status              text NOT NULL
                        CHECK (status IN ('PENDING_APPROVAL', 'APPROVED', 'REJECTED', 'EXPIRED')),
    requested_by        uuid NOT NULL REFERENCES users (id),
    requested_by_key    uuid NOT NULL REFERENCES api_keys (id),
    approved_by         uuid REFERENCES users (id),
    approved_by_key     uuid REFERENCES api_keys (id),
    rejected_by         uuid REFERENCES users (id),
    decision_note       text,
    key_id              uuid REFERENCES api_keys (id),
    created_at          timestamptz NOT NULL DEFAULT now(),
    request_expires_at  timestamptz NOT NULL,
    decided_at          timestamptz,
    -- The second approval, in the database too: never the requester, never
    -- the grantee, and an approved grant names its approver and its key.
    CONSTRAINT admin_grants_not_self_approved
        CHECK (approved_by IS NULL OR (approved_by <> requested_by AND approved_by <> user_id)),
    CONSTRAINT admin_grants_approved
        CHECK ((status = 'APPROVED') = (approved_by IS NOT NULL AND approved_by_key IS NOT NULL AND key_id IS NOT NULL)),
    CONSTRAINT admin_grants_decided CHECK ((status = 'PENDING_APPROVAL') = (decided_at IS NULL)),
    CONSTRAINT admin_grants_one_key UNIQUE (key_id)
);
CREATE INDEX admin_grants_pending ON admin_grants (request_expires_at) WHERE status = 'PENDING_APPROVAL';

ALTER TABLE api_keys
    ADD COLUMN origin text NOT NULL DEFAULT 'legacy' CHECK (origin IN ('api', 'host', 'bootstrap', 'legacy')),
    ADD COLUMN granted_by uuid REFERENCES users (id),
    ADD COLUMN approved_by uuid REFERENCES users (id),
    ADD COLUMN grant_id uuid REFERENCES admin_grants (id),
    ADD COLUMN derived_from uuid[] NOT NULL DEFAULT '{}',
    ADD CONSTRAINT api_keys_one_per_grant UNIQUE (grant_id),
    -- An admin key made over HTTP from now on went through an approved grant.
    ADD CONSTRAINT api_keys_admin_via_grant
        CHECK (role <> 'admin' OR origin <> 'api' OR (grant_id IS NOT NULL AND approved_by IS NOT NULL)),
    ADD CONSTRAINT api_keys_not_self_approved
        CHECK (approved_by IS NULL OR (approved_by <> granted_by AND approved_by <> user_id));

-- Backfill from the audit trail (append-only, written in the transaction
-- that made each key). A key made over HTTP has an API_KEY_CREATED row
-- whose actor is `user:<id>` of the admin who made it: that admin granted
-- it. Admin keys made that way before this migration went through no
-- second admin: they stay 'legacy' (the check above does not apply to
-- them) with their maker as granted_by, so they are never independent of
-- the admin who made them.
UPDATE api_keys k
   SET granted_by = substr(a.actor, 6)::uuid,
       origin = CASE WHEN k.role = 'admin' THEN 'legacy' ELSE 'api' END
  FROM audit_log a
 WHERE a.action = 'API_KEY_CREATED' AND a.entity = 'api_key' AND a.entity_id = k.id::text
   AND a.actor ~ '^user:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
   AND EXISTS (SELECT 1 FROM users u WHERE u.id = substr(a.actor, 6)::uuid);

-- `api keys create` audits as `cli`.
UPDATE api_keys k SET origin = 'host'
  FROM audit_log a
 WHERE a.action = 'API_KEY_CREATED' AND a.entity = 'api_key' AND a.entity_id = k.id::text AND a.actor = 'cli';

-- The bootstrap key was audited under its owner's id, with `bootstrap: true`.
UPDATE api_keys k SET origin = 'bootstrap'
  FROM audit_log a
 WHERE k.origin = 'legacy' AND k.granted_by IS NULL AND k.role = 'admin' AND k.name = 'bootstrap'
   AND a.action = 'API_KEY_CREATED' AND a.actor = 'system' AND a.entity_id = k.user_id::text
   AND a.data ->> 'bootstrap' = 'true';

-- derived_from of the keys made over HTTP: their maker, and whatever the
-- maker's admin keys of that time derived from (which key the maker used
-- is not recorded, so all of them: the stricter reading). In creation
-- order, so a maker's own keys are filled in before the keys they made.
DO $$
DECLARE
    k record;
BEGIN
    FOR k IN SELECT id, granted_by, created_at FROM api_keys WHERE granted_by IS NOT NULL ORDER BY created_at, id LOOP
        UPDATE api_keys SET derived_from = ARRAY(
            SELECT DISTINCT u FROM (
                SELECT k.granted_by AS u
                UNION
                SELECT unnest(o.derived_from) FROM api_keys o
                 WHERE o.user_id = k.granted_by AND o.role = 'admin' AND o.created_at < k.created_at
            ) s WHERE u IS NOT NULL)
         WHERE id = k.id;
    END LOOP;
END
$$;

-- From now on every insert says where its key comes from.
ALTER TABLE api_keys ALTER COLUMN origin DROP DEFAULT, ALTER COLUMN derived_from DROP DEFAULT;

-- "Active admins": active users holding a live admin key.
CREATE INDEX api_keys_admin ON api_keys (user_id) WHERE role = 'admin' AND revoked_at IS NULL;
