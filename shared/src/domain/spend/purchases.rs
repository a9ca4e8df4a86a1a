//! Purchases (job `purchase`): a beneficiary spends a mandate sealed to
//! exactly (sender, beneficiary, currency) at an allowed merchant. The
//! mandate only moves through one guarded UPDATE, so parallel jobs and
//! replicas can never overspend it.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::domain::ops::audit;
use crate::error::{Error, ErrorCode, Problem, Result};
use crate::ids::{CategoryId, JobId, MandateId, MerchantId, PurchaseId, UserId};
use crate::jobs::Outcome;
use crate::money::{Money, display};
use crate::principal::{Principal, Role};

/// The `purchase` job payload, version 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PurchaseV1 {
    pub sender_id: UserId,
    pub beneficiary_id: UserId,
    pub merchant_id: MerchantId,
    /// `amount` and `currency`, checked again when the payload is read.
    #[serde(flatten)]
    pub money: Money,
    pub category_id: Option<CategoryId>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Purchase {
    pub id: PurchaseId,
    pub sender_id: UserId,
    pub beneficiary_id: UserId,
    pub merchant_id: MerchantId,
    pub category_id: Option<CategoryId>,
    pub mandate_id: MandateId,
    pub amount: Decimal,
    pub currency: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PurchaseOut {
    pub id: PurchaseId,
    pub sender_id: UserId,
    pub beneficiary_id: UserId,
    pub merchant_id: MerchantId,
    pub category_id: Option<CategoryId>,
    pub mandate_id: MandateId,
    pub amount: String,
    pub currency: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub href: String,
}

impl From<Purchase> for PurchaseOut {
    fn from(p: Purchase) -> Self {
        PurchaseOut {
            href: format!("/spend/purchases/{}", p.id),
            id: p.id,
            sender_id: p.sender_id,
            beneficiary_id: p.beneficiary_id,
            merchant_id: p.merchant_id,
            category_id: p.category_id,
            mandate_id: p.mandate_id,
            amount: display(p.amount, &p.currency),
            currency: p.currency,
            status: p.status,
            created_at: p.created_at,
        }
    }
}

const COLUMNS: &str =
    "id, sender_id, beneficiary_id, merchant_id, category_id, mandate_id, amount, currency, status, created_at";

/// Everything the rules decide on, read in one statement: the parties that
/// are not active, the merchant, the beneficiary's usage rule, and the
/// triple's mandate (the ACTIVE one, else its latest).
#[derive(Debug, sqlx::FromRow)]
struct Facts {
    inactive: Vec<UserId>,
    merchant_found: bool,
    merchant_category: Option<CategoryId>,
    certified: bool,
    usage_allowed: bool,
    mandate_id: Option<MandateId>,
    mandate_status: Option<String>,
    expires_at: Option<DateTime<Utc>>,
    allowed_merchant_id: Option<MerchantId>,
    allowed_category_id: Option<CategoryId>,
}

async fn facts(conn: &mut PgConnection, cmd: &PurchaseV1) -> Result<Facts> {
    Ok(sqlx::query_as(
        "SELECT coalesce((SELECT array_agg(u.id) FROM users u
                           WHERE u.id IN ($1, $2) AND NOT u.is_active), '{}') AS inactive,
                mr.id IS NOT NULL AS merchant_found, mr.category_id AS merchant_category,
                coalesce(mr.is_certified, false) AS certified,
                EXISTS (SELECT 1 FROM allowed_usage a
                         WHERE a.owner_id = $2
                           AND (a.merchant_id = $3 OR (mr.category_id IS NOT NULL AND a.category_id = mr.category_id)))
                    AS usage_allowed,
                md.id AS mandate_id, md.status AS mandate_status, md.expires_at,
                md.allowed_merchant_id, md.allowed_category_id
           FROM (SELECT 1) AS one
           LEFT JOIN merchants mr ON mr.id = $3
           LEFT JOIN LATERAL (
                SELECT id, status, expires_at, allowed_merchant_id, allowed_category_id FROM mandates
                 WHERE sender_id = $1 AND beneficiary_id = $2 AND currency = $4
                 ORDER BY (status = 'ACTIVE') DESC, id DESC LIMIT 1) md ON true",
    )
    .bind(cmd.sender_id)
    .bind(cmd.beneficiary_id)
    .bind(cmd.merchant_id)
    .bind(cmd.money.currency())
    .fetch_one(conn)
    .await?)
}

/// What the rules decided before any money moves.
enum Decision {
    Spend {
        mandate: MandateId,
        category: Option<CategoryId>,
    },
    /// The mandate is past `expires_at`: expire it, refuse the purchase.
    Expire(MandateId),
}

/// DOMAIN.md's purchase rules 1 to 5, in order; the first that fails decides.
fn decide(who: &Principal, cmd: &PurchaseV1, f: &Facts, now: DateTime<Utc>) -> Result<Decision> {
    let refuse = |code, detail: &str| Err(Error::problem(code, detail));
    // Both ends must still be active when the job runs.
    for (id, field) in [(cmd.sender_id, "sender_id"), (cmd.beneficiary_id, "beneficiary_id")] {
        if f.inactive.contains(&id) {
            return Err(Error::problem(ErrorCode::Forbidden, format!("{field} is not an active user")));
        }
    }
    // 1. The merchant exists.
    if !f.merchant_found {
        return refuse(ErrorCode::MerchantNotFound, "merchant not found");
    }
    // 2. The category is the merchant's; a different one is never trusted.
    if cmd.category_id.is_some() && cmd.category_id != f.merchant_category {
        return refuse(ErrorCode::CategoryMismatch, "the category does not match the merchant's category");
    }
    // 3. The mandate sealed to exactly this sender, beneficiary and currency,
    //    used by that beneficiary (or an admin). A mandate used up answers
    //    MANDATE_EXHAUSTED (the client learns the money is spent), an
    //    expired one MANDATE_EXPIRED; a revoked one or none, MANDATE_REQUIRED.
    if !(who.is_admin() || (who.role == Role::Beneficiary && who.user_id == cmd.beneficiary_id)) {
        return refuse(ErrorCode::MandateRequired, "only the mandate's beneficiary may spend it");
    }
    let mandate = match (f.mandate_id, f.mandate_status.as_deref()) {
        (Some(id), Some("ACTIVE")) => id,
        (Some(_), Some("CONSUMED")) => return refuse(ErrorCode::MandateExhausted, "the mandate is fully spent"),
        (Some(_), Some("EXPIRED")) => return refuse(ErrorCode::MandateExpired, "the mandate has expired"),
        _ => {
            return refuse(
                ErrorCode::MandateRequired,
                "no active mandate from this sender to this beneficiary in this currency",
            );
        }
    };
    if f.expires_at.is_some_and(|at| at <= now) {
        return Ok(Decision::Expire(mandate));
    }
    // 4. The mandate's own restrictions.
    if f.allowed_merchant_id.is_some_and(|m| m != cmd.merchant_id) {
        return refuse(ErrorCode::MandateMerchantForbidden, "the mandate does not allow this merchant");
    }
    if f.allowed_category_id.is_some() && f.allowed_category_id != f.merchant_category {
        return refuse(ErrorCode::MandateCategoryForbidden, "the mandate does not allow this category");
    }
    // 5. Usage: a rule for the merchant or its category, or a certified merchant.
    if !(f.certified || f.usage_allowed) {
        return refuse(ErrorCode::UnauthorizedUsage, "the beneficiary may not spend at this merchant");
    }
    Ok(Decision::Spend { mandate, category: f.merchant_category })
}

/// Applies DOMAIN.md's purchase rules in order; the first that fails decides.
/// One statement reads every fact the rules need, then the guarded decrement,
/// the purchase and its two audit rows: four statements in all.
pub async fn execute(conn: &mut PgConnection, who: &Principal, job_id: JobId, cmd: &PurchaseV1) -> Result<Outcome> {
    let facts = facts(&mut *conn, cmd).await?;
    match decide(who, cmd, &facts, Utc::now())? {
        Decision::Expire(mandate) => expire(conn, who, job_id, mandate).await,
        Decision::Spend { mandate, category } => spend(conn, who, job_id, cmd, mandate, category).await,
    }
}

/// A mandate found past its expiry is expired in this same transaction,
/// kept although the purchase is refused.
async fn expire(conn: &mut PgConnection, who: &Principal, job_id: JobId, mandate: MandateId) -> Result<Outcome> {
    sqlx::query(
        "UPDATE mandates SET status = 'EXPIRED', updated_at = now() WHERE id = $1 AND (status || '') = 'ACTIVE'",
    )
    .bind(mandate)
    .execute(&mut *conn)
    .await?;
    let refusal = Problem::new(ErrorCode::MandateExpired, "the mandate has expired");
    let refused = serde_json::json!({
        "job_id": job_id, "code": refusal.code.as_str(), "detail": refusal.detail, "mandate_id": mandate,
    });
    audit::write_many(
        conn,
        &who.actor(),
        &[
            (
                "MANDATE_EXPIRED",
                "mandate",
                mandate.to_string(),
                serde_json::json!({"by": "purchase", "job_id": job_id}),
            ),
            ("PURCHASE_REFUSED", "purchase", job_id.to_string(), refused),
        ],
    )
    .await?;
    Ok(Outcome::refused(refusal))
}

/// Rules 6 and 7: the guarded decrement (never read-modify-write), then the
/// purchase and its audit rows.
async fn spend(
    conn: &mut PgConnection,
    who: &Principal,
    job_id: JobId,
    cmd: &PurchaseV1,
    mandate: MandateId,
    category: Option<CategoryId>,
) -> Result<Outcome> {
    let after: Option<(Decimal, Decimal, String)> = sqlx::query_as(
        "UPDATE mandates SET spent_amount = spent_amount + $2,
                status = CASE WHEN spent_amount + $2 = total_amount THEN 'CONSUMED' ELSE status END,
                updated_at = now()
          WHERE id = $1 AND (status || '') = 'ACTIVE' AND spent_amount + $2 <= total_amount
          RETURNING spent_amount, total_amount, status",
    )
    .bind(mandate)
    .bind(cmd.money.amount())
    .fetch_optional(&mut *conn)
    .await?;
    let Some((spent, total, status)) = after else {
        return Err(Error::problem(ErrorCode::MandateExhausted, "the mandate's remaining amount is too small"));
    };
    let purchase: Purchase = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO purchases (id, job_id, sender_id, beneficiary_id, merchant_id, category_id, mandate_id, amount, currency, status)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'COMPLETED') RETURNING {COLUMNS}"
    )))
    .bind(PurchaseId::new())
    .bind(job_id)
    .bind(cmd.sender_id)
    .bind(cmd.beneficiary_id)
    .bind(cmd.merchant_id)
    .bind(category)
    .bind(mandate)
    .bind(cmd.money.amount())
    .bind(cmd.money.currency())
    .fetch_one(&mut *conn)
    .await?;
    let currency = cmd.money.currency();
    let amount = display(cmd.money.amount(), currency);
    let completed = serde_json::json!({
        "mandate_id": mandate, "merchant_id": cmd.merchant_id, "amount": amount, "currency": currency, "job_id": job_id,
    });
    let consumed = serde_json::json!({
        "purchase_id": purchase.id, "amount": amount, "spent_amount": display(spent, currency),
        "remaining_amount": display(total - spent, currency), "status": status,
    });
    audit::write_many(
        conn,
        &who.actor(),
        &[
            ("PURCHASE_COMPLETED", "purchase", purchase.id.to_string(), completed),
            ("MANDATE_CONSUMED", "mandate", mandate.to_string(), consumed),
        ],
    )
    .await?;
    Ok(Outcome::succeeded(serde_json::to_value(PurchaseOut::from(purchase))?))
}

/// The parties, support and admin see a purchase.
pub async fn get_for(conn: &mut PgConnection, id: PurchaseId, who: &Principal) -> Result<PurchaseOut> {
    let p: Option<Purchase> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM purchases WHERE id = $1 AND ($2 OR sender_id = $3 OR beneficiary_id = $3)"
    )))
    .bind(id)
    .bind(who.reads_all())
    .bind(who.user_id)
    .fetch_optional(conn)
    .await?;
    p.map(Into::into).ok_or_else(|| Error::not_found(ErrorCode::PurchaseNotFound, "purchase"))
}
