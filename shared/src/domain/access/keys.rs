//! API keys: a random secret shown once, stored as its SHA-256 with a short
//! public prefix; a role, an owner, an optional expiry, revocation. Several
//! keys per user make rotation seamless.

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};

use crate::domain::access::users::require_user;
use crate::domain::ops::audit;
use crate::error::{Error, ErrorCode, FieldError, Problem, Result};
use crate::ids::{ApiKeyId, UserId};
use crate::principal::{Principal, Role};

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
}

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

fn prefix_of(secret: &str) -> String {
    secret.chars().take(KEY_PREFIX_LEN).collect()
}

fn generate_secret() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rng();
    let body: String = (0..40).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect();
    format!("kb_{body}")
}

async fn insert(conn: &mut PgConnection, new: &NewKey, secret: &str) -> Result<CreatedKey> {
    let row: ApiKey = sqlx::query_as(
        "INSERT INTO api_keys (id, user_id, prefix, key_hash, role, name, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)
         RETURNING id, prefix, role, user_id, name, expires_at, created_at, revoked_at, last_used_at",
    )
    .bind(ApiKeyId::new())
    .bind(new.user_id)
    .bind(prefix_of(secret))
    .bind(hash(secret))
    .bind(new.role.as_str())
    .bind(&new.name)
    .bind(new.expires_at)
    .fetch_one(conn)
    .await?;
    Ok(CreatedKey {
        id: row.id,
        prefix: row.prefix,
        key: secret.to_string(),
        role: row.role,
        user_id: row.user_id,
        name: row.name,
        expires_at: row.expires_at,
        created_at: row.created_at,
    })
}

pub async fn create(conn: &mut PgConnection, by: &Principal, new: &NewKey) -> Result<CreatedKey> {
    require_user(conn, new.user_id).await?;
    if new.expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(Problem::fields(
            ErrorCode::ValidationError,
            vec![FieldError::new("expires_at", "must be in the future")],
        )
        .into());
    }
    let created = insert(conn, new, &generate_secret()).await?;
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

pub async fn list(conn: &mut PgConnection, user: Option<UserId>) -> Result<Vec<ApiKey>> {
    Ok(sqlx::query_as(
        "SELECT id, prefix, role, user_id, name, expires_at, created_at, revoked_at, last_used_at FROM api_keys
          WHERE ($1::uuid IS NULL OR user_id = $1) ORDER BY id DESC LIMIT 500",
    )
    .bind(user)
    .fetch_all(conn)
    .await?)
}

/// One key, never its secret.
pub async fn get(conn: &mut PgConnection, id: ApiKeyId) -> Result<Option<ApiKey>> {
    Ok(sqlx::query_as(
        "SELECT id, prefix, role, user_id, name, expires_at, created_at, revoked_at, last_used_at FROM api_keys WHERE id = $1",
    )
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
/// secret becomes the first admin key, owned by user `admin`.
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
    insert(conn, &NewKey { user_id: user, role: Role::Admin, name: "bootstrap".into(), expires_at: None }, secret)
        .await?;
    audit::write(conn, "system", "API_KEY_CREATED", "api_key", user, serde_json::json!({"bootstrap": true})).await?;
    Ok(true)
}

/// `api keys create --user NAME --role ROLE`: creates the user if needed.
pub async fn create_for_username(conn: &mut PgConnection, username: &str, role: Role) -> Result<CreatedKey> {
    let user = ensure_user(conn, username, &format!("{username}@kobatela.local")).await?;
    let created =
        insert(conn, &NewKey { user_id: user, role, name: "cli".into(), expires_at: None }, &generate_secret()).await?;
    audit::write(
        conn,
        "cli",
        "API_KEY_CREATED",
        "api_key",
        created.id,
        serde_json::json!({"user_id": user, "role": role.as_str()}),
    )
    .await?;
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
