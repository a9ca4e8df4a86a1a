//! Admin grants: four eyes on admin power. Over HTTP an admin key is a
//! request (`PENDING_APPROVAL`, answered `202 ADMIN_GRANT_PENDING`) that a
//! second, different, independent active admin approves; refused at once
//! while nobody could approve it (`ADMIN_GRANT_NEEDS_SECOND_ADMIN`).
//! States: `PENDING_APPROVAL` → `APPROVED` | `REJECTED` | `EXPIRED` (24 h,
//! expired lazily on approval and by the pending-approval expiry cron).
//!
//! The secret is made when the request is, and shown once to the requester
//! (as Vault's control groups hand the result to the requester): only its
//! hash and prefix are kept on the grant, and no `api_keys` row exists until
//! approval, so authentication cannot see it before. Every step raises
//! `ADMIN_GRANTED` for ops; made on the host, see `keys`.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use sqlx::PgConnection;

use crate::db::OnConstraint;
use crate::domain::access::keys::{self, CreatedKey, Maker, NewKey, Origin, Provenance, Stored};
use crate::domain::access::power;
use crate::domain::access::users::{require_active_user, require_user};
use crate::domain::ops::audit;
use crate::error::{Error, ErrorCode, FieldError, Problem, Result};
use crate::ids::{AdminGrantId, ApiKeyId, UserId};
use crate::page::{Page, PageRequest};
use crate::principal::{Principal, Role};

/// How long a request waits for its second admin.
pub const REQUEST_TTL_HOURS: i64 = 24;
/// The `code` of the 202 answer to a grant request: waiting, not refused
/// (so not an `ErrorCode`).
pub const PENDING_CODE: &str = "ADMIN_GRANT_PENDING";
const ENTITY: &str = "admin_grant";
const NOTE_MAX_CHARS: usize = 500;

/// Grant states.
pub mod status {
    pub const PENDING_APPROVAL: &str = "PENDING_APPROVAL";
    pub const APPROVED: &str = "APPROVED";
    pub const REJECTED: &str = "REJECTED";
    pub const EXPIRED: &str = "EXPIRED";
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct Grant {
    id: AdminGrantId,
    user_id: UserId,
    name: String,
    expires_at: Option<DateTime<Utc>>,
    prefix: String,
    key_hash: Vec<u8>,
    status: String,
    requested_by: UserId,
    requested_by_key: ApiKeyId,
    approved_by: Option<UserId>,
    rejected_by: Option<UserId>,
    decision_note: Option<String>,
    key_id: Option<ApiKeyId>,
    created_at: DateTime<Utc>,
    request_expires_at: DateTime<Utc>,
    decided_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, user_id, name, expires_at, prefix, key_hash, status, requested_by, requested_by_key, \
                       approved_by, rejected_by, decision_note, key_id, created_at, request_expires_at, decided_at";

/// An admin grant as clients see it: never the secret, nor its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct GrantOut {
    pub id: AdminGrantId,
    /// The grantee.
    pub user_id: UserId,
    /// Always `admin`.
    pub role: String,
    /// The name of the key the grant makes.
    pub name: String,
    /// When the key the grant makes expires (none: never).
    pub expires_at: Option<DateTime<Utc>>,
    /// `PENDING_APPROVAL`, `APPROVED`, `REJECTED` or `EXPIRED`.
    pub status: String,
    pub requested_by: UserId,
    pub approved_by: Option<UserId>,
    pub rejected_by: Option<UserId>,
    pub decision_note: Option<String>,
    /// The key made on approval.
    pub key_id: Option<ApiKeyId>,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    /// The request expires unapproved at this time (24 h).
    pub request_expires_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
    pub href: String,
}

impl From<Grant> for GrantOut {
    fn from(g: Grant) -> Self {
        GrantOut {
            href: format!("/admin-grants/{}", g.id),
            id: g.id,
            user_id: g.user_id,
            role: Role::Admin.as_str().to_string(),
            name: g.name,
            expires_at: g.expires_at,
            status: g.status,
            requested_by: g.requested_by,
            approved_by: g.approved_by,
            rejected_by: g.rejected_by,
            decision_note: g.decision_note,
            key_id: g.key_id,
            prefix: g.prefix,
            created_at: g.created_at,
            request_expires_at: g.request_expires_at,
            decided_at: g.decided_at,
        }
    }
}

/// The answer to a grant request: the grant, `code: ADMIN_GRANT_PENDING`,
/// and the secret, shown this once, to the requester (it works only once a
/// second admin approves).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GrantRequested {
    #[serde(flatten)]
    pub grant: GrantOut,
    /// `ADMIN_GRANT_PENDING`
    pub code: String,
    pub key: String,
}

/// What `POST /api-keys` made: a key at once, or, for the admin role, a
/// grant waiting for a second admin.
#[derive(Debug)]
pub enum Issued {
    Key(CreatedKey),
    Requested(GrantRequested),
}

/// An approval's end. `Refused` keeps what the transaction wrote (a grant
/// found past its time is marked `EXPIRED` and stays so); an `Err` rolls
/// everything back.
#[derive(Debug)]
pub enum Approval {
    Approved(Box<GrantOut>),
    Refused(Problem),
}

/// `POST /api-keys`: any role but admin is made at once (`keys::create`);
/// the admin role is a grant request.
pub async fn issue(conn: &mut PgConnection, by: &Principal, new: &NewKey, now: DateTime<Utc>) -> Result<Issued> {
    by.require(&[Role::Admin])?;
    if new.role == Role::Admin {
        Ok(Issued::Requested(request(conn, by, new, now).await?))
    } else {
        Ok(Issued::Key(keys::create(conn, by, new).await?))
    }
}

/// Requests admin power for `new.user_id`: a pending grant and its secret.
/// Refused with `ADMIN_GRANT_NEEDS_SECOND_ADMIN` while no active admin but
/// the requester (and the grantee, who may not approve their own power)
/// exists to approve it: nothing is written then.
#[tracing::instrument(skip_all, fields(user_id = %new.user_id))]
pub async fn request(
    conn: &mut PgConnection,
    by: &Principal,
    new: &NewKey,
    now: DateTime<Utc>,
) -> Result<GrantRequested> {
    by.require(&[Role::Admin])?;
    require_user(conn, new.user_id).await?;
    keys::check_expiry(new.expires_at, now)?;
    if power::active_admins_besides(conn, &[by.user_id, new.user_id]).await? == 0 {
        return Err(Error::problem(
            ErrorCode::AdminGrantNeedsSecondAdmin,
            "there is no second active admin to approve this grant; the operator creates further admins on \
             the host with `api keys create --user NAME --role admin` (it needs the database's credentials)",
        ));
    }
    let secret = keys::generate_secret();
    let grant: Grant = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO admin_grants (id, user_id, name, expires_at, prefix, key_hash, status, requested_by,
                                   requested_by_key, created_at, request_expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, 'PENDING_APPROVAL', $7, $8, $9, $10) RETURNING {COLUMNS}"
    )))
    .bind(AdminGrantId::new())
    .bind(new.user_id)
    .bind(&new.name)
    .bind(new.expires_at)
    .bind(keys::prefix_of(&secret))
    .bind(keys::hash(&secret))
    .bind(by.user_id)
    .bind(by.key_id)
    .bind(now)
    .bind(now + Duration::hours(REQUEST_TTL_HOURS))
    .fetch_one(&mut *conn)
    .await?;
    let data = serde_json::json!({
        "user_id": grant.user_id, "role": "admin", "prefix": grant.prefix, "requested_by": grant.requested_by,
        "request_expires_at": grant.request_expires_at,
    });
    audit::write(conn, &by.actor(), "ADMIN_GRANT_REQUESTED", ENTITY, grant.id, data).await?;
    let payload = serde_json::json!({
        "via": "api", "stage": "requested", "status": status::PENDING_APPROVAL, "grant_id": grant.id,
        "user_id": grant.user_id, "requested_by": grant.requested_by,
    });
    let message = format!("admin power requested by {} for {}, waiting for a second admin", by.user_id, new.user_id);
    keys::alert_admin_granted(conn, Some(by.user_id), &message, payload).await?;
    Ok(GrantRequested { grant: grant.into(), code: PENDING_CODE.to_string(), key: secret })
}

async fn lock(conn: &mut PgConnection, id: AdminGrantId) -> Result<Grant> {
    let grant: Option<Grant> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM admin_grants WHERE id = $1 FOR UPDATE")))
            .bind(id)
            .fetch_optional(conn)
            .await?;
    grant.ok_or_else(not_found)
}

fn not_found() -> Error {
    Error::not_found(ErrorCode::NotFound, "admin grant")
}

fn not_pending(g: &Grant) -> Error {
    Error::problem(ErrorCode::AdminGrantNotPending, format!("the admin grant is {}, no longer pending", g.status))
}

/// Approves a pending grant: one SERIALIZABLE transaction (the caller's)
/// that makes the `api_keys` row from the grant's hash, with its
/// provenance. In order: neither the requester nor the grantee may approve
/// (`ADMIN_SELF_APPROVAL`); the grant must be pending (`ADMIN_GRANT_NOT_PENDING`)
/// and within its time (else it is expired, kept, and refused); the
/// approver must be an active admin independent of the requester
/// (`power::require_independent`); the requester must still hold admin
/// power and the grantee must still be active (`FORBIDDEN`).
#[tracing::instrument(skip_all, fields(grant_id = %id))]
pub async fn approve(
    conn: &mut PgConnection,
    who: &Principal,
    id: AdminGrantId,
    now: DateTime<Utc>,
) -> Result<Approval> {
    who.require(&[Role::Admin])?;
    let g = lock(conn, id).await?;
    if g.requested_by == who.user_id {
        return Err(Error::problem(
            ErrorCode::AdminSelfApproval,
            "the requester cannot approve their own admin grant; a second admin must",
        ));
    }
    if g.user_id == who.user_id {
        return Err(Error::problem(ErrorCode::AdminSelfApproval, "an admin cannot approve admin power for themselves"));
    }
    if g.status != status::PENDING_APPROVAL {
        return Err(not_pending(&g));
    }
    if g.request_expires_at <= now || g.expires_at.is_some_and(|at| at <= now) {
        expire_one(conn, &who.actor(), &g, now).await?;
        return Ok(Approval::Refused(Problem::new(
            ErrorCode::AdminGrantNotPending,
            "the admin grant expired before it was approved; it is now EXPIRED",
        )));
    }
    power::require_independent(conn, who, g.requested_by, g.created_at).await?;
    if !power::is_active_admin(conn, g.requested_by).await? {
        return Err(Error::problem(ErrorCode::Forbidden, "the requester no longer holds admin power"));
    }
    require_active_user(conn, g.user_id, "user_id").await?;
    let new = NewKey { user_id: g.user_id, role: Role::Admin, name: g.name.clone(), expires_at: g.expires_at };
    let from = Provenance {
        origin: Origin::Api,
        granted_by: Some(Maker { user: g.requested_by, key: g.requested_by_key }),
        approved_by: Some(who.into()),
        grant_id: Some(g.id),
    };
    let key = keys::insert(conn, &new, Stored { prefix: &g.prefix, hash: &g.key_hash }, &from).await.on_constraint(
        "api_keys_one_per_grant",
        ErrorCode::AdminGrantNotPending,
        "the admin grant is already approved",
    )?;
    let approved: Option<Grant> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE admin_grants SET status = 'APPROVED', approved_by = $2, approved_by_key = $3, key_id = $4, decided_at = $5
          WHERE id = $1 AND status = 'PENDING_APPROVAL' RETURNING {COLUMNS}"
    )))
    .bind(g.id)
    .bind(who.user_id)
    .bind(who.key_id)
    .bind(key.id)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    // The row is locked since `lock`; this only guards the guard.
    let Some(approved) = approved else {
        return Err(not_pending(&g));
    };
    let actor = who.actor();
    audit::write_many(
        conn,
        &actor,
        &[
            (
                "ADMIN_GRANT_APPROVED",
                ENTITY,
                g.id.to_string(),
                serde_json::json!({
                    "user_id": g.user_id, "key_id": key.id, "requested_by": g.requested_by, "approved_by": who.user_id,
                }),
            ),
            (
                "API_KEY_CREATED",
                "api_key",
                key.id.to_string(),
                serde_json::json!({
                    "user_id": key.user_id, "role": key.role, "prefix": key.prefix, "grant_id": g.id,
                    "granted_by": g.requested_by, "approved_by": who.user_id,
                }),
            ),
        ],
    )
    .await?;
    let payload = serde_json::json!({
        "via": "api", "stage": "approved", "status": status::APPROVED, "grant_id": g.id, "user_id": g.user_id,
        "key_id": key.id, "requested_by": g.requested_by, "approved_by": who.user_id,
    });
    let message =
        format!("admin power for {} approved by {} (requested by {})", g.user_id, who.user_id, g.requested_by);
    keys::alert_admin_granted(conn, Some(who.user_id), &message, payload).await?;
    Ok(Approval::Approved(Box::new(approved.into())))
}

/// Rejects a pending grant (any admin; the requester may withdraw their
/// own). Final.
#[tracing::instrument(skip_all, fields(grant_id = %id))]
pub async fn reject(
    conn: &mut PgConnection,
    who: &Principal,
    id: AdminGrantId,
    note: Option<&str>,
    now: DateTime<Utc>,
) -> Result<GrantOut> {
    who.require(&[Role::Admin])?;
    let note = note.map(str::trim).filter(|n| !n.is_empty());
    if note.is_some_and(|n| n.chars().count() > NOTE_MAX_CHARS) {
        let why = FieldError::new("note", format!("must be at most {NOTE_MAX_CHARS} characters"));
        return Err(Problem::fields(ErrorCode::ValidationError, vec![why]).into());
    }
    let g = lock(conn, id).await?;
    if g.status != status::PENDING_APPROVAL {
        return Err(not_pending(&g));
    }
    if g.request_expires_at <= now {
        return Err(Error::problem(ErrorCode::AdminGrantNotPending, "the admin grant has expired"));
    }
    let rejected: Grant = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE admin_grants SET status = 'REJECTED', rejected_by = $2, decision_note = $3, decided_at = $4
          WHERE id = $1 RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(who.user_id)
    .bind(note)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    let data = serde_json::json!({"user_id": g.user_id, "requested_by": g.requested_by, "note": note});
    audit::write(conn, &who.actor(), "ADMIN_GRANT_REJECTED", ENTITY, id, data).await?;
    Ok(rejected.into())
}

async fn expire_one(conn: &mut PgConnection, actor: &str, g: &Grant, now: DateTime<Utc>) -> Result<()> {
    sqlx::query(
        "UPDATE admin_grants SET status = 'EXPIRED', decided_at = $2 WHERE id = $1 AND status = 'PENDING_APPROVAL'",
    )
    .bind(g.id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    audit::write(conn, actor, "ADMIN_GRANT_EXPIRED", ENTITY, g.id, expired_data(g)).await
}

fn expired_data(g: &Grant) -> serde_json::Value {
    serde_json::json!({
        "user_id": g.user_id, "requested_by": g.requested_by, "request_expires_at": g.request_expires_at,
        "expires_at": g.expires_at,
    })
}

/// Expires every pending grant whose 24 h have passed, or whose key would
/// already have expired (run by the pending-approval expiry cron). Returns
/// how many.
#[tracing::instrument(skip_all)]
pub async fn expire_pending(conn: &mut PgConnection, now: DateTime<Utc>) -> Result<i64> {
    let expired: Vec<Grant> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE admin_grants SET status = 'EXPIRED', decided_at = $1
          WHERE status = 'PENDING_APPROVAL' AND (request_expires_at <= $1 OR expires_at <= $1) RETURNING {COLUMNS}"
    )))
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    let actor = Principal::system().actor();
    for g in &expired {
        audit::write(conn, &actor, "ADMIN_GRANT_EXPIRED", ENTITY, g.id, expired_data(g)).await?;
    }
    Ok(expired.len() as i64)
}

/// A grant, for admin and support.
pub async fn get(conn: &mut PgConnection, who: &Principal, id: AdminGrantId) -> Result<GrantOut> {
    who.require(&[Role::Admin, Role::Support])?;
    let grant: Option<Grant> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM admin_grants WHERE id = $1")))
            .bind(id)
            .fetch_optional(conn)
            .await?;
    grant.map(Into::into).ok_or_else(not_found)
}

/// Grants, newest first, for admin and support; `status` filters (e.g.
/// those waiting for a second admin).
pub async fn list(
    conn: &mut PgConnection,
    who: &Principal,
    status_filter: Option<&str>,
    page: &PageRequest,
) -> Result<Page<GrantOut>> {
    who.require(&[Role::Admin, Role::Support])?;
    let known = [status::PENDING_APPROVAL, status::APPROVED, status::REJECTED, status::EXPIRED];
    if let Some(st) = status_filter
        && !known.contains(&st)
    {
        let why = FieldError::new("status", "must be PENDING_APPROVAL, APPROVED, REJECTED or EXPIRED");
        return Err(Problem::fields(ErrorCode::ValidationError, vec![why]).into());
    }
    let rows: Vec<Grant> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM admin_grants
          WHERE ($1::text IS NULL OR status = $1) AND id < $2 ORDER BY id DESC LIMIT $3"
    )))
    .bind(status_filter)
    .bind(page.before())
    .bind(page.fetch_limit())
    .fetch_all(conn)
    .await?;
    Ok(Page::from_rows(rows, page, |g| g.id.0).map(GrantOut::from))
}
