//! API keys: a random secret shown once, stored as its SHA-256 with a short
//! public prefix; a role, an owner, an optional expiry, revocation. Several
//! keys per user make rotation seamless. Each row also says where its power
//! came from (origin, who granted and approved it, and every user it
//! derives from), which is what an approval's independence is judged on
//! (`power`). Admin keys are made here only on the host (`api keys create`,
//! `BOOTSTRAP_ADMIN_KEY`); over HTTP they are grants (`grants`).

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};

use crate::domain::access::users::require_user;
use crate::domain::ops::{alerts, audit};
use crate::error::{Error, ErrorCode, FieldError, Problem, Result};
use crate::ids::{AdminGrantId, ApiKeyId, UserId};
use crate::principal::{Principal, Role};

/// The alert every admin grant raises: requested, approved or made on the host.
pub const ADMIN_GRANTED: &str = "ADMIN_GRANTED";

const KEY_PREFIX_LEN: usize = 11;

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub prefix: String,
    pub role: String,
    pub user_id: UserId,
    pub name: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    /// Where the key came from: `api`, `host` (`api keys create`),
    /// `bootstrap` (`BOOTSTRAP_ADMIN_KEY`) or `legacy` (made before grants).
    pub origin: String,
    /// The admin who made it over the API, or who requested its grant.
    pub granted_by: Option<UserId>,
    /// The second admin who approved its grant.
    pub approved_by: Option<UserId>,
    pub grant_id: Option<AdminGrantId>,
}

/// The columns of [`ApiKey`], never the hash.
const KEY_COLUMNS: &str = "id, prefix, role, user_id, name, expires_at, created_at, revoked_at, last_used_at, origin, granted_by, approved_by, grant_id";

/// A key just created: the only time the secret is seen.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    pub id: ApiKeyId,
    pub prefix: String,
    pub key: String,
    pub role: String,
    pub user_id: UserId,
    pub name: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct NewKey {
    pub user_id: UserId,
    pub role: Role,
    pub name: String,
    pub expires_at: Option<DateTime<Utc>>,
}

pub fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

pub(crate) fn prefix_of(secret: &str) -> String {
    secret.chars().take(KEY_PREFIX_LEN).collect()
}

pub(crate) fn generate_secret() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rng();
    let body: String = (0..40).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect();
    format!("kb_{body}")
}

/// Where a key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Over HTTP: by an admin, and for an admin key through an approved grant.
    Api,
    /// `api keys create` on the host (it needs the database's credentials).
    Host,
    /// `BOOTSTRAP_ADMIN_KEY` at start.
    Bootstrap,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Origin::Api => "api",
            Origin::Host => "host",
            Origin::Bootstrap => "bootstrap",
        }
    }
}

/// A user acting with one of their keys: the admin who made or requested a
/// key, or the one who approved it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Maker {
    pub user: UserId,
    pub key: ApiKeyId,
}

impl From<&Principal> for Maker {
    fn from(p: &Principal) -> Self {
        Maker { user: p.user_id, key: p.key_id }
    }
}

/// Where a new key's power comes from, written with its row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Provenance {
    pub origin: Origin,
    pub granted_by: Option<Maker>,
    pub approved_by: Option<Maker>,
    pub grant_id: Option<AdminGrantId>,
}

impl Provenance {
    fn host(origin: Origin) -> Self {
        Provenance { origin, granted_by: None, approved_by: None, grant_id: None }
    }
}

/// The stored half of a secret: its public prefix and its hash.
pub(crate) struct Stored<'a> {
    pub prefix: &'a str,
    pub hash: &'a [u8],
}

/// Inserts a key row. `derived_from` is computed here, once: the granter,
/// the approver, and whatever the keys they acted with derive from, so the
/// independence of any later approval is one array lookup (`power`).
pub(crate) async fn insert(
    conn: &mut PgConnection,
    new: &NewKey,
    stored: Stored<'_>,
    from: &Provenance,
) -> Result<ApiKey> {
    let row: ApiKey = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO api_keys (id, user_id, prefix, key_hash, role, name, expires_at, origin, granted_by, approved_by,
                               grant_id, derived_from)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,
                 ARRAY(SELECT DISTINCT u FROM unnest(
                       ARRAY[$9, $10]::uuid[]
                       || coalesce((SELECT derived_from FROM api_keys WHERE id = $12), '{{}}')
                       || coalesce((SELECT derived_from FROM api_keys WHERE id = $13), '{{}}')) AS u
                       WHERE u IS NOT NULL))
         RETURNING {KEY_COLUMNS}"
    )))
    .bind(ApiKeyId::new())
    .bind(new.user_id)
    .bind(stored.prefix)
    .bind(stored.hash)
    .bind(new.role.as_str())
    .bind(&new.name)
    .bind(new.expires_at)
    .bind(from.origin.as_str())
    .bind(from.granted_by.map(|m| m.user))
    .bind(from.approved_by.map(|m| m.user))
    .bind(from.grant_id)
    .bind(from.granted_by.map(|m| m.key))
    .bind(from.approved_by.map(|m| m.key))
    .fetch_one(conn)
    .await?;
    Ok(row)
}

/// A fresh secret stored as a key row; the created key with its secret.
async fn insert_new(conn: &mut PgConnection, new: &NewKey, secret: &str, from: &Provenance) -> Result<CreatedKey> {
    let row = insert(conn, new, Stored { prefix: &prefix_of(secret), hash: &hash(secret) }, from).await?;
    Ok(CreatedKey::shown_once(row, secret))
}

impl CreatedKey {
    pub(crate) fn shown_once(row: ApiKey, secret: &str) -> Self {
        CreatedKey {
            id: row.id,
            prefix: row.prefix,
            key: secret.to_string(),
            role: row.role,
            user_id: row.user_id,
            name: row.name,
            expires_at: row.expires_at,
            created_at: row.created_at,
        }
    }
}

/// Refuses a key expiry that is not in the future.
pub(crate) fn check_expiry(expires_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Result<()> {
    if expires_at.is_some_and(|at| at <= now) {
        return Err(Problem::fields(
            ErrorCode::ValidationError,
            vec![FieldError::new("expires_at", "must be in the future")],
        )
        .into());
    }
    Ok(())
}

/// `ADMIN_GRANTED`, raised for every admin grant: requested, approved, or
/// made on the host.
pub(crate) async fn alert_admin_granted(
    conn: &mut PgConnection,
    actor: Option<UserId>,
    message: &str,
    payload: serde_json::Value,
) -> Result<()> {
    alerts::raise(conn, ADMIN_GRANTED, message, actor, payload).await?;
    Ok(())
}

/// A key made over HTTP by an admin, for any role but admin: admin power
/// over HTTP is a grant a second admin approves (`grants::issue` routes it).
pub async fn create(conn: &mut PgConnection, by: &Principal, new: &NewKey) -> Result<CreatedKey> {
    if new.role == Role::Admin {
        return Err(Error::problem(
            ErrorCode::Forbidden,
            "an admin key over the API is a grant a second admin approves, never made at once",
        ));
    }
    require_user(conn, new.user_id).await?;
    check_expiry(new.expires_at, Utc::now())?;
    let from = Provenance { origin: Origin::Api, granted_by: Some(by.into()), approved_by: None, grant_id: None };
    let created = insert_new(conn, new, &generate_secret(), &from).await?;
    audit::write(
        conn,
        &by.actor(),
        "API_KEY_CREATED",
        "api_key",
        created.id,
        serde_json::json!({"user_id": created.user_id, "role": created.role, "prefix": created.prefix}),
    )
    .await?;
    Ok(created)
}

/// Resolves a presented secret to its principal: unknown, expired, revoked
/// or inactive-owner keys are all `AUTH_INVALID`.
pub async fn authenticate(pool: &PgPool, presented: &str) -> Result<Principal> {
    type KeyRow = (ApiKeyId, UserId, String, Option<DateTime<Utc>>, Option<DateTime<Utc>>, bool, Option<DateTime<Utc>>);
    let row: Option<KeyRow> = sqlx::query_as(
        "SELECT k.id, k.user_id, k.role, k.expires_at, k.revoked_at, u.is_active, k.last_used_at
           FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.key_hash = $1",
    )
    .bind(hash(presented))
    .fetch_optional(pool)
    .await?;
    let invalid = || Error::problem(ErrorCode::AuthInvalid, "the API key is unknown, expired or revoked");
    let Some((key_id, user_id, role, expires_at, revoked_at, active, last_used_at)) = row else {
        return Err(invalid());
    };
    let now = Utc::now();
    if revoked_at.is_some() || expires_at.is_some_and(|at| at <= now) || !active {
        return Err(invalid());
    }
    let role = Role::parse(&role).ok_or_else(invalid)?;
    // Touch last_used_at at most once a minute: a write per request would
    // cost more than the request.
    if last_used_at.is_none_or(|at| now - at > chrono::Duration::seconds(60)) {
        sqlx::query("UPDATE api_keys SET last_used_at = now() WHERE id = $1").bind(key_id).execute(pool).await?;
    }
    Ok(Principal { user_id, key_id, role })
}

/// Whether a presented secret is the key of an admin grant still waiting
/// for its second admin: refused today, a working key once approved, so a
/// cache of bad keys must not remember it.
pub async fn is_pending_grant(pool: &PgPool, presented: &str) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM admin_grants WHERE key_hash = $1 AND status = 'PENDING_APPROVAL')",
    )
    .bind(hash(presented))
    .fetch_one(pool)
    .await?)
}

pub async fn list(conn: &mut PgConnection, user: Option<UserId>) -> Result<Vec<ApiKey>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {KEY_COLUMNS} FROM api_keys WHERE ($1::uuid IS NULL OR user_id = $1) ORDER BY id DESC LIMIT 500"
    )))
    .bind(user)
    .fetch_all(conn)
    .await?)
}

/// One key, never its secret.
pub async fn get(conn: &mut PgConnection, id: ApiKeyId) -> Result<Option<ApiKey>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1")))
        .bind(id)
        .fetch_optional(conn)
        .await?)
}

pub async fn revoke(conn: &mut PgConnection, by: &Principal, id: ApiKeyId) -> Result<()> {
    let done = sqlx::query("UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() == 0 {
        return Err(Error::not_found(ErrorCode::NotFound, "API key"));
    }
    audit::write(conn, &by.actor(), "API_KEY_REVOKED", "api_key", id, serde_json::json!({})).await?;
    Ok(())
}

/// `BOOTSTRAP_ADMIN_KEY`: when no usable admin key exists, the configured
/// secret becomes the first admin key, owned by user `admin`. Host power
/// (whoever sets the variable runs the api): raises `ADMIN_GRANTED`.
pub async fn bootstrap_admin(conn: &mut PgConnection, secret: &str) -> Result<bool> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM api_keys WHERE role = 'admin' AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now()))",
    )
    .fetch_one(&mut *conn)
    .await?;
    if exists {
        return Ok(false);
    }
    let user = ensure_user(conn, "admin", "admin@kobatela.local").await?;
    let new = NewKey { user_id: user, role: Role::Admin, name: "bootstrap".into(), expires_at: None };
    let created = insert_new(conn, &new, secret, &Provenance::host(Origin::Bootstrap)).await?;
    let data = serde_json::json!({"bootstrap": true, "user_id": user, "role": "admin", "prefix": created.prefix});
    audit::write(conn, "system", "API_KEY_CREATED", "api_key", created.id, data).await?;
    let payload = serde_json::json!({
        "via": "host", "origin": "bootstrap", "user_id": user, "username": "admin", "key_id": created.id,
        "prefix": created.prefix,
    });
    alert_admin_granted(conn, None, "admin key installed from BOOTSTRAP_ADMIN_KEY for user admin", payload).await?;
    Ok(true)
}

/// `api keys create --user NAME --role ROLE`: creates the user if needed.
/// Host power, immediate; an admin key raises `ADMIN_GRANTED`.
pub async fn create_for_username(conn: &mut PgConnection, username: &str, role: Role) -> Result<CreatedKey> {
    let user = ensure_user(conn, username, &format!("{username}@kobatela.local")).await?;
    let new = NewKey { user_id: user, role, name: "cli".into(), expires_at: None };
    let created = insert_new(conn, &new, &generate_secret(), &Provenance::host(Origin::Host)).await?;
    audit::write(
        conn,
        "cli",
        "API_KEY_CREATED",
        "api_key",
        created.id,
        serde_json::json!({"user_id": user, "role": role.as_str(), "prefix": created.prefix}),
    )
    .await?;
    if role == Role::Admin {
        let payload = serde_json::json!({
            "via": "host", "origin": "cli", "user_id": user, "username": username, "key_id": created.id,
            "prefix": created.prefix,
        });
        let message = format!("admin key made on the host (api keys create) for user {username}");
        alert_admin_granted(conn, None, &message, payload).await?;
    }
    Ok(created)
}

async fn ensure_user(conn: &mut PgConnection, username: &str, email: &str) -> Result<UserId> {
    let existing: Option<UserId> = sqlx::query_scalar("SELECT id FROM users WHERE username = $1")
        .bind(username)
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(id) = existing {
        return Ok(id);
    }
    let id = UserId::new();
    sqlx::query("INSERT INTO users (id, username, email) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(username)
        .bind(email)
        .execute(conn)
        .await?;
    Ok(id)
}
