//! The catalogue: spend categories, merchants, allowed usage rules, the
//! transfer allowlist and certifications.

use serde::Serialize;
use sqlx::PgConnection;

use crate::db::OnConstraint;
use crate::domain::access::users::require_user;
use crate::domain::ops::audit;
use crate::error::{Error, ErrorCode, Result};
use crate::ids::{AllowlistId, CategoryId, MerchantId, UsageRuleId, UserId};
use crate::principal::Principal;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Category {
    pub id: CategoryId,
    pub code: String,
    pub label: String,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Merchant {
    pub id: MerchantId,
    pub name: String,
    pub category_id: Option<CategoryId>,
    pub is_certified: bool,
}

/// Whether an upsert added a row or found it there.
#[derive(Debug, Clone, Serialize)]
pub struct Upserted {
    pub id: uuid::Uuid,
    pub status: &'static str,
}

impl Upserted {
    pub fn created(&self) -> bool {
        self.status == "added" || self.status == "created"
    }
}

pub async fn create_category(conn: &mut PgConnection, by: &Principal, code: &str, label: &str) -> Result<Category> {
    let cat: Category =
        sqlx::query_as("INSERT INTO spend_categories (id, code, label) VALUES ($1, $2, $3) RETURNING id, code, label")
            .bind(CategoryId::new())
            .bind(code)
            .bind(label)
            .fetch_one(&mut *conn)
            .await
            .on_constraint(
                "spend_categories_code_key",
                ErrorCode::CategoryExists,
                "a category with this code exists",
            )?;
    audit::write(conn, &by.actor(), "CATEGORY_CREATED", "category", cat.id, serde_json::json!({"code": code})).await?;
    Ok(cat)
}

async fn require_category(conn: &mut PgConnection, id: CategoryId) -> Result<()> {
    let found: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM spend_categories WHERE id = $1").bind(id).fetch_optional(conn).await?;
    found.map(|_| ()).ok_or_else(|| Error::not_found(ErrorCode::CategoryNotFound, "category"))
}

async fn require_merchant(conn: &mut PgConnection, id: MerchantId) -> Result<()> {
    let found: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM merchants WHERE id = $1").bind(id).fetch_optional(conn).await?;
    found.map(|_| ()).ok_or_else(|| Error::not_found(ErrorCode::MerchantNotFound, "merchant"))
}

pub(crate) async fn check_refs(
    conn: &mut PgConnection,
    merchant: Option<MerchantId>,
    category: Option<CategoryId>,
) -> Result<()> {
    if let Some(m) = merchant {
        require_merchant(conn, m).await?;
    }
    if let Some(c) = category {
        require_category(conn, c).await?;
    }
    Ok(())
}

pub async fn create_merchant(
    conn: &mut PgConnection,
    by: &Principal,
    name: &str,
    category: Option<CategoryId>,
    certified: bool,
) -> Result<Merchant> {
    check_refs(conn, None, category).await?;
    let m: Merchant = sqlx::query_as(
        "INSERT INTO merchants (id, name, category_id, is_certified) VALUES ($1, $2, $3, $4) RETURNING id, name, category_id, is_certified",
    )
    .bind(MerchantId::new())
    .bind(name)
    .bind(category)
    .bind(certified)
    .fetch_one(&mut *conn)
    .await
    .on_constraint("merchants_name_key", ErrorCode::MerchantExists, "a merchant with this name exists")?;
    audit::write(
        conn,
        &by.actor(),
        "MERCHANT_CREATED",
        "merchant",
        m.id,
        serde_json::json!({"name": name, "is_certified": certified}),
    )
    .await?;
    Ok(m)
}

/// An allowed-usage rule: owner plus exactly one of merchant or category
/// (checked by the caller's parsing); a duplicate answers the existing rule.
pub async fn allow_usage(
    conn: &mut PgConnection,
    by: &Principal,
    owner: UserId,
    merchant: Option<MerchantId>,
    category: Option<CategoryId>,
) -> Result<Upserted> {
    require_user(conn, owner).await?;
    check_refs(conn, merchant, category).await?;
    let existing: Option<UsageRuleId> = sqlx::query_scalar(
        "SELECT id FROM allowed_usage WHERE owner_id = $1 AND merchant_id IS NOT DISTINCT FROM $2 AND category_id IS NOT DISTINCT FROM $3",
    )
    .bind(owner)
    .bind(merchant)
    .bind(category)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(id) = existing {
        return Ok(Upserted { id: id.0, status: "exists" });
    }
    let id = UsageRuleId::new();
    sqlx::query("INSERT INTO allowed_usage (id, owner_id, merchant_id, category_id) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(owner)
        .bind(merchant)
        .bind(category)
        .execute(&mut *conn)
        .await?;
    audit::write(
        conn,
        &by.actor(),
        "USAGE_ALLOWED",
        "user",
        owner,
        serde_json::json!({"rule_id": id, "merchant_id": merchant, "category_id": category}),
    )
    .await?;
    Ok(Upserted { id: id.0, status: "added" })
}

pub async fn add_to_allowlist(
    conn: &mut PgConnection,
    by: &Principal,
    owner: UserId,
    recipient: UserId,
) -> Result<Upserted> {
    require_user(conn, owner).await?;
    require_user(conn, recipient).await?;
    let inserted: Option<AllowlistId> = sqlx::query_scalar(
        "INSERT INTO allowlist (id, owner_id, recipient_id) VALUES ($1, $2, $3) ON CONFLICT ON CONSTRAINT allowlist_pair_key DO NOTHING RETURNING id",
    )
    .bind(AllowlistId::new())
    .bind(owner)
    .bind(recipient)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(id) = inserted {
        audit::write(
            conn,
            &by.actor(),
            "ALLOWLIST_ADDED",
            "user",
            owner,
            serde_json::json!({"recipient_id": recipient}),
        )
        .await?;
        return Ok(Upserted { id: id.0, status: "added" });
    }
    let id: AllowlistId = sqlx::query_scalar("SELECT id FROM allowlist WHERE owner_id = $1 AND recipient_id = $2")
        .bind(owner)
        .bind(recipient)
        .fetch_one(conn)
        .await?;
    Ok(Upserted { id: id.0, status: "exists" })
}

pub async fn certify(conn: &mut PgConnection, by: &Principal, user: UserId, level: &str) -> Result<Upserted> {
    require_user(conn, user).await?;
    let created: bool = sqlx::query_scalar(
        "INSERT INTO certifications (user_id, level) VALUES ($1, $2)
         ON CONFLICT (user_id) DO UPDATE SET level = EXCLUDED.level, updated_at = now()
         RETURNING (xmax = 0)",
    )
    .bind(user)
    .bind(level)
    .fetch_one(&mut *conn)
    .await?;
    audit::write(conn, &by.actor(), "USER_CERTIFIED", "user", user, serde_json::json!({"level": level})).await?;
    Ok(Upserted { id: user.0, status: if created { "created" } else { "updated" } })
}
