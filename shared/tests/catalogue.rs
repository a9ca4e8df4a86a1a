//! Domain tests for the catalogue on a fresh database each, no HTTP:
//! categories and merchants are unique, usage rules, allowlist entries and
//! certifications are upserts that name existing users and references.

mod common;

use common::*;
use shared::ErrorCode;
use shared::db;
use shared::domain::spend::catalogue::{self, Upserted};
use shared::ids::{CategoryId, MerchantId, UserId};
use shared::principal::{Principal, Role};
use sqlx::PgPool;

async fn category(pool: &PgPool, by: Principal, code: &str) -> shared::Result<CategoryId> {
    let ctx = (by, code.to_string());
    db::serializable(pool, &ctx, |tx, (by, code)| Box::pin(catalogue::create_category(tx, by, code, "label")))
        .await
        .map(|c| c.id)
}

async fn merchant(
    pool: &PgPool,
    by: Principal,
    name: &str,
    category: Option<CategoryId>,
) -> shared::Result<MerchantId> {
    let ctx = (by, name.to_string(), category);
    db::serializable(pool, &ctx, |tx, (by, name, cat)| Box::pin(catalogue::create_merchant(tx, by, name, *cat, false)))
        .await
        .map(|m| m.id)
}

fn status(r: shared::Result<Upserted>) -> &'static str {
    r.expect("upserted").status
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn categories_and_merchants_are_unique_and_a_merchant_names_an_existing_category(pool: PgPool) {
    let support = user(&pool, Role::Support).await;
    let food = category(&pool, support, "FOOD").await.expect("category");
    assert_eq!(refusal(&category(&pool, support, "FOOD").await), Some(ErrorCode::CategoryExists));
    merchant(&pool, support, "Market", Some(food)).await.expect("merchant");
    assert_eq!(refusal(&merchant(&pool, support, "Market", None).await), Some(ErrorCode::MerchantExists));
    let unknown = Some(CategoryId::new());
    assert_eq!(refusal(&merchant(&pool, support, "Stall", unknown).await), Some(ErrorCode::CategoryNotFound));
    assert_eq!(audited(&pool, "CATEGORY_CREATED", food).await, 1);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn usage_rules_allowlist_entries_and_certifications_are_upserts_for_existing_users(pool: PgPool) {
    let admin = user(&pool, Role::Admin).await;
    let (owner, other) = (user(&pool, Role::Beneficiary).await, user(&pool, Role::Beneficiary).await);
    let food = category(&pool, admin, "FOOD").await.expect("category");
    let usage = |owner: UserId, cat: Option<CategoryId>| {
        let pool = pool.clone();
        async move {
            db::serializable(&pool, &(admin, owner, cat), |tx, (by, owner, cat)| {
                Box::pin(catalogue::allow_usage(tx, by, *owner, None, *cat))
            })
            .await
        }
    };
    assert_eq!(status(usage(owner.user_id, Some(food)).await), "added");
    assert_eq!(status(usage(owner.user_id, Some(food)).await), "exists");
    assert_eq!(refusal(&usage(UserId::new(), Some(food)).await), Some(ErrorCode::UserNotFound));
    assert_eq!(refusal(&usage(owner.user_id, Some(CategoryId::new())).await), Some(ErrorCode::CategoryNotFound));
    let allowlist = |recipient: UserId| {
        let pool = pool.clone();
        async move {
            db::serializable(&pool, &(admin, owner.user_id, recipient), |tx, (by, o, r)| {
                Box::pin(catalogue::add_to_allowlist(tx, by, *o, *r))
            })
            .await
        }
    };
    let added = allowlist(other.user_id).await.expect("added");
    let again = allowlist(other.user_id).await.expect("exists");
    assert_eq!((added.status, again.status, added.id), ("added", "exists", again.id));
    assert_eq!(refusal(&allowlist(UserId::new()).await), Some(ErrorCode::UserNotFound));
    let certify = |level: &'static str| {
        let pool = pool.clone();
        async move {
            db::serializable(&pool, &(admin, other.user_id), |tx, (by, u)| {
                Box::pin(catalogue::certify(tx, by, *u, level))
            })
            .await
        }
    };
    assert_eq!(status(certify("BASIC").await), "created");
    assert_eq!(status(certify("GOLD").await), "updated");
    let level: String = sqlx::query_scalar("SELECT level FROM certifications WHERE user_id = $1")
        .bind(other.user_id)
        .fetch_one(&pool)
        .await
        .expect("level");
    assert_eq!(level, "GOLD");
}
