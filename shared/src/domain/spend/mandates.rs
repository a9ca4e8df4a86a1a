//! Usage mandates: money a sender seals to one beneficiary, in one currency,
//! optionally to one merchant or category, until it expires. At most one
//! ACTIVE mandate per (sender, beneficiary, currency), by a partial unique
//! index. Terminal states never change again.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgConnection;

use crate::db::OnConstraint;
use crate::domain::access::users::require_active_user;
use crate::domain::ops::audit;
use crate::domain::spend::catalogue::check_refs;
use crate::error::{Error, ErrorCode, Result};
use crate::ids::{CategoryId, MandateId, MerchantId, UserId};
use crate::money::{Money, display};
use crate::page::{Page, PageRequest};
use crate::principal::{Principal, Role};

pub(crate) const COLUMNS: &str = "id, sender_id, beneficiary_id, total_amount, spent_amount, currency, allowed_merchant_id, allowed_category_id, expires_at, status, created_at";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Mandate {
    pub id: MandateId,
    pub sender_id: UserId,
    pub beneficiary_id: UserId,
    pub total_amount: Decimal,
    pub spent_amount: Decimal,
    pub currency: String,
    pub allowed_merchant_id: Option<MerchantId>,
    pub allowed_category_id: Option<CategoryId>,
    pub expires_at: DateTime<Utc>,
    pub status: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MandateOut {
    pub id: MandateId,
    pub sender_id: UserId,
    pub beneficiary_id: UserId,
    pub total_amount: String,
    pub spent_amount: String,
    pub remaining_amount: String,
    pub currency: String,
    pub allowed_merchant_id: Option<MerchantId>,
    pub allowed_category_id: Option<CategoryId>,
    pub expires_at: DateTime<Utc>,
    pub status: String,
    pub created_at: DateTime<Utc>,
}

impl From<Mandate> for MandateOut {
    fn from(m: Mandate) -> Self {
        MandateOut {
            id: m.id,
            sender_id: m.sender_id,
            beneficiary_id: m.beneficiary_id,
            total_amount: display(m.total_amount, &m.currency),
            spent_amount: display(m.spent_amount, &m.currency),
            remaining_amount: display(m.total_amount - m.spent_amount, &m.currency),
            allowed_merchant_id: m.allowed_merchant_id,
            allowed_category_id: m.allowed_category_id,
            expires_at: m.expires_at,
            status: m.status,
            created_at: m.created_at,
            currency: m.currency,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewMandate {
    pub sender_id: UserId,
    pub beneficiary_id: UserId,
    pub total: Money,
    pub allowed_merchant_id: Option<MerchantId>,
    pub allowed_category_id: Option<CategoryId>,
    pub expires_at: DateTime<Utc>,
}

pub async fn create(conn: &mut PgConnection, by: &Principal, new: &NewMandate) -> Result<MandateOut> {
    by.require_self_or_admin(new.sender_id, &[Role::Sender])?;
    if new.sender_id == new.beneficiary_id {
        return Err(Error::problem(ErrorCode::MandateSelf, "sender and beneficiary must be different users"));
    }
    if new.expires_at <= Utc::now() {
        return Err(Error::problem(ErrorCode::MandateExpiresInPast, "expires_at must be in the future"));
    }
    require_active_user(conn, new.sender_id, "sender_id").await?;
    require_active_user(conn, new.beneficiary_id, "beneficiary_id").await?;
    check_refs(conn, new.allowed_merchant_id, new.allowed_category_id).await?;
    let m: Mandate = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO mandates (id, sender_id, beneficiary_id, total_amount, currency, allowed_merchant_id, allowed_category_id, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {COLUMNS}"
    )))
    .bind(MandateId::new())
    .bind(new.sender_id)
    .bind(new.beneficiary_id)
    .bind(new.total.amount())
    .bind(new.total.currency())
    .bind(new.allowed_merchant_id)
    .bind(new.allowed_category_id)
    .bind(new.expires_at)
    .fetch_one(&mut *conn)
    .await
    .on_constraint("mandates_one_active_per_pair", ErrorCode::ActiveMandateExists, "an ACTIVE mandate already exists for this sender, beneficiary and currency")?;
    audit::write(
        conn,
        &by.actor(),
        "MANDATE_CREATED",
        "mandate",
        m.id,
        serde_json::json!({
            "sender_id": m.sender_id, "beneficiary_id": m.beneficiary_id,
            "total_amount": display(m.total_amount, &m.currency), "currency": m.currency, "expires_at": m.expires_at,
        }),
    )
    .await?;
    Ok(m.into())
}

/// Its sender, its beneficiary, support and admin see a mandate; for anyone
/// else it does not exist.
pub async fn get_for(conn: &mut PgConnection, id: MandateId, who: &Principal) -> Result<MandateOut> {
    let m: Option<Mandate> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM mandates WHERE id = $1 AND ($2 OR sender_id = $3 OR beneficiary_id = $3)"
    )))
    .bind(id)
    .bind(who.reads_all())
    .bind(who.user_id)
    .fetch_optional(conn)
    .await?;
    m.map(Into::into).ok_or_else(|| Error::not_found(ErrorCode::MandateNotFound, "mandate"))
}

#[derive(Debug, Default)]
pub struct MandateFilter {
    pub sender_id: Option<UserId>,
    pub beneficiary_id: Option<UserId>,
    pub status: Option<String>,
}

pub async fn list_for(
    conn: &mut PgConnection,
    who: &Principal,
    f: &MandateFilter,
    page: &PageRequest,
) -> Result<Page<MandateOut>> {
    let rows: Vec<Mandate> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM mandates
          WHERE ($1 OR sender_id = $2 OR beneficiary_id = $2)
            AND ($3::uuid IS NULL OR sender_id = $3) AND ($4::uuid IS NULL OR beneficiary_id = $4)
            AND ($5::text IS NULL OR status = $5) AND id < $6
          ORDER BY id DESC LIMIT $7"
    )))
    .bind(who.reads_all())
    .bind(who.user_id)
    .bind(f.sender_id)
    .bind(f.beneficiary_id)
    .bind(&f.status)
    .bind(page.before())
    .bind(page.fetch_limit())
    .fetch_all(conn)
    .await?;
    Ok(Page::from_rows(rows, page, |m| m.id.0).map(Into::into))
}

/// The sender (or admin) revokes an ACTIVE mandate; what was not spent is
/// released (nothing more can be spent from it).
pub async fn revoke(conn: &mut PgConnection, who: &Principal, id: MandateId) -> Result<MandateOut> {
    let m: Option<Mandate> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM mandates WHERE id = $1 AND ($2 OR sender_id = $3 OR beneficiary_id = $3) FOR UPDATE"
    )))
    .bind(id)
    .bind(who.reads_all())
    .bind(who.user_id)
    .fetch_optional(&mut *conn)
    .await?;
    let m = m.ok_or_else(|| Error::not_found(ErrorCode::MandateNotFound, "mandate"))?;
    if !(who.is_admin() || (who.role == Role::Sender && who.user_id == m.sender_id)) {
        return Err(Error::problem(ErrorCode::Forbidden, "only the mandate's sender or an admin may revoke it"));
    }
    if m.status != "ACTIVE" {
        return Err(Error::problem(ErrorCode::MandateNotActive, format!("the mandate is {}", m.status)));
    }
    let m: Mandate = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE mandates SET status = 'REVOKED', updated_at = now() WHERE id = $1 AND (status || '') = 'ACTIVE' RETURNING {COLUMNS}"
    )))
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    audit::write(
        conn,
        &who.actor(),
        "MANDATE_REVOKED",
        "mandate",
        m.id,
        serde_json::json!({
            "released_amount": display(m.total_amount - m.spent_amount, &m.currency), "currency": m.currency,
        }),
    )
    .await?;
    Ok(m.into())
}

/// Expires every ACTIVE mandate past its `expires_at` (the `mandate_expiry`
/// job). Returns how many.
pub async fn expire_due(conn: &mut PgConnection, actor: &str) -> Result<i64> {
    let ids: Vec<MandateId> = sqlx::query_scalar(
        "UPDATE mandates SET status = 'EXPIRED', updated_at = now() WHERE status = 'ACTIVE' AND expires_at <= now() RETURNING id",
    )
    .fetch_all(&mut *conn)
    .await?;
    for id in &ids {
        audit::write(conn, actor, "MANDATE_EXPIRED", "mandate", id, serde_json::json!({"by": "expiry_job"})).await?;
    }
    Ok(ids.len() as i64)
}
