//! Purchases (job `purchase`): a beneficiary spends a mandate sealed to
//! exactly (sender, beneficiary, currency) at an allowed merchant. The
//! mandate only moves through one guarded UPDATE, so parallel jobs and
//! replicas can never overspend it.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::domain::mandates::{COLUMNS as MANDATE_COLUMNS, Mandate};
use crate::domain::{audit, refuse_inactive};
use crate::error::{Error, ErrorCode, Problem, Result};
use crate::ids::{CategoryId, JobId, MandateId, MerchantId, PurchaseId, UserId};
use crate::jobs::Outcome;
use crate::money::display;
use crate::principal::{Principal, Role};

/// The `purchase` job payload, version 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PurchaseV1 {
    pub sender_id: UserId,
    pub beneficiary_id: UserId,
    pub merchant_id: MerchantId,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
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

#[derive(Debug, Clone, Serialize)]
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

/// Applies DOMAIN.md's purchase rules in order; the first that fails decides.
pub async fn execute(conn: &mut PgConnection, who: &Principal, job_id: JobId, cmd: &PurchaseV1) -> Result<Outcome> {
    // Both ends must still be active when the job runs.
    refuse_inactive(conn, &[(cmd.sender_id, "sender_id"), (cmd.beneficiary_id, "beneficiary_id")]).await?;
    // 1. The merchant exists.
    let merchant: Option<(Option<CategoryId>, bool)> =
        sqlx::query_as("SELECT category_id, is_certified FROM merchants WHERE id = $1")
            .bind(cmd.merchant_id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some((merchant_category, certified)) = merchant else {
        return Err(Error::problem(ErrorCode::MerchantNotFound, "merchant not found"));
    };
    // 2. The category is the merchant's; a different one is never trusted.
    if cmd.category_id.is_some() && cmd.category_id != merchant_category {
        return Err(Error::problem(ErrorCode::CategoryMismatch, "the category does not match the merchant's category"));
    }
    let category = merchant_category;
    // 3. The mandate sealed to exactly this sender, beneficiary and currency,
    //    used by that beneficiary (or an admin).
    if !(who.is_admin() || (who.role == Role::Beneficiary && who.user_id == cmd.beneficiary_id)) {
        return Err(Error::problem(ErrorCode::MandateRequired, "only the mandate's beneficiary may spend it"));
    }
    // The ACTIVE mandate of the triple, else its latest one: a mandate used
    // up by earlier purchases answers MANDATE_EXHAUSTED (the client learns
    // the money is spent), an expired one MANDATE_EXPIRED; a revoked one or
    // none at all, MANDATE_REQUIRED.
    let mandate: Option<Mandate> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MANDATE_COLUMNS} FROM mandates
          WHERE sender_id = $1 AND beneficiary_id = $2 AND currency = $3
          ORDER BY (status = 'ACTIVE') DESC, id DESC LIMIT 1"
    )))
    .bind(cmd.sender_id)
    .bind(cmd.beneficiary_id)
    .bind(&cmd.currency)
    .fetch_optional(&mut *conn)
    .await?;
    let mandate = match mandate {
        Some(m) if m.status == "ACTIVE" => m,
        Some(m) if m.status == "CONSUMED" => {
            return Err(Error::problem(ErrorCode::MandateExhausted, "the mandate is fully spent"));
        }
        Some(m) if m.status == "EXPIRED" => {
            return Err(Error::problem(ErrorCode::MandateExpired, "the mandate has expired"));
        }
        _ => {
            return Err(Error::problem(
                ErrorCode::MandateRequired,
                "no active mandate from this sender to this beneficiary in this currency",
            ));
        }
    };
    if mandate.expires_at <= Utc::now() {
        // Expired in this same transaction, kept although the purchase is refused.
        sqlx::query(
            "UPDATE mandates SET status = 'EXPIRED', updated_at = now() WHERE id = $1 AND (status || '') = 'ACTIVE'",
        )
        .bind(mandate.id)
        .execute(&mut *conn)
        .await?;
        audit::write(
            conn,
            &who.actor(),
            "MANDATE_EXPIRED",
            "mandate",
            mandate.id,
            serde_json::json!({"by": "purchase", "job_id": job_id}),
        )
        .await?;
        let refusal = Problem::new(ErrorCode::MandateExpired, "the mandate has expired");
        audit::write(
            conn,
            &who.actor(),
            "PURCHASE_REFUSED",
            "purchase",
            job_id,
            serde_json::json!({
                "job_id": job_id, "code": refusal.code.as_str(), "detail": refusal.detail, "mandate_id": mandate.id,
            }),
        )
        .await?;
        return Ok(Outcome::Refused(refusal));
    }
    // 4. The mandate's own restrictions.
    if mandate.allowed_merchant_id.is_some_and(|m| m != cmd.merchant_id) {
        return Err(Error::problem(ErrorCode::MandateMerchantForbidden, "the mandate does not allow this merchant"));
    }
    if mandate.allowed_category_id.is_some() && mandate.allowed_category_id != category {
        return Err(Error::problem(ErrorCode::MandateCategoryForbidden, "the mandate does not allow this category"));
    }
    // 5. Usage: a rule for the merchant or its category, or a certified merchant.
    let allowed: bool = certified
        || sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM allowed_usage WHERE owner_id = $1 AND (merchant_id = $2 OR ($3::uuid IS NOT NULL AND category_id = $3)))",
        )
        .bind(cmd.beneficiary_id)
        .bind(cmd.merchant_id)
        .bind(category)
        .fetch_one(&mut *conn)
        .await?;
    if !allowed {
        return Err(Error::problem(ErrorCode::UnauthorizedUsage, "the beneficiary may not spend at this merchant"));
    }
    // 6. The guarded decrement: never read-modify-write.
    let after: Option<(Decimal, Decimal, String)> = sqlx::query_as(
        "UPDATE mandates SET spent_amount = spent_amount + $2,
                status = CASE WHEN spent_amount + $2 = total_amount THEN 'CONSUMED' ELSE status END,
                updated_at = now()
          WHERE id = $1 AND (status || '') = 'ACTIVE' AND spent_amount + $2 <= total_amount
          RETURNING spent_amount, total_amount, status",
    )
    .bind(mandate.id)
    .bind(cmd.amount)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((spent, total, status)) = after else {
        return Err(Error::problem(ErrorCode::MandateExhausted, "the mandate's remaining amount is too small"));
    };
    // 7. The purchase and its audit.
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
    .bind(mandate.id)
    .bind(cmd.amount)
    .bind(&cmd.currency)
    .fetch_one(&mut *conn)
    .await?;
    let actor = who.actor();
    let amount = display(cmd.amount, &cmd.currency);
    audit::write(conn, &actor, "PURCHASE_COMPLETED", "purchase", purchase.id, serde_json::json!({
        "mandate_id": mandate.id, "merchant_id": cmd.merchant_id, "amount": amount, "currency": cmd.currency, "job_id": job_id,
    })).await?;
    audit::write(
        conn,
        &actor,
        "MANDATE_CONSUMED",
        "mandate",
        mandate.id,
        serde_json::json!({
            "purchase_id": purchase.id, "amount": amount, "spent_amount": display(spent, &cmd.currency),
            "remaining_amount": display(total - spent, &cmd.currency), "status": status,
        }),
    )
    .await?;
    Ok(Outcome::Succeeded(serde_json::to_value(PurchaseOut::from(purchase))?))
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
