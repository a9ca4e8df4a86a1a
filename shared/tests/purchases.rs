//! Domain tests for purchases on a fresh database each: the rule called
//! directly over transactions, no HTTP and no Redis. Parallel transactions
//! against one mandate never overspend it, and a mandate sealed to one
//! sender is invisible to purchases naming another.

mod common;

use rust_decimal::Decimal;
use shared::db;
use shared::domain::spend::purchases::{self, PurchaseV1};
use shared::ids::{ApiKeyId, CategoryId, JobId, MandateId, MerchantId, UserId};
use shared::jobs::{End, Outcome};
use shared::principal::{Principal, Role};
use shared::{Error, ErrorCode};
use sqlx::PgPool;

struct Fixture {
    sender: UserId,
    beneficiary: Principal,
    merchant: MerchantId,
    mandate: MandateId,
}

async fn fixture(pool: &PgPool, total: &str) -> Fixture {
    let sender = UserId::new();
    let beneficiary = UserId::new();
    for (id, name) in [(sender, "alice"), (beneficiary, "bob")] {
        sqlx::query("INSERT INTO users (id, username, email) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(name)
            .bind(format!("{name}@example.test"))
            .execute(pool)
            .await
            .expect("user");
    }
    let category = CategoryId::new();
    sqlx::query("INSERT INTO spend_categories (id, code, label) VALUES ($1, 'FOOD', 'Food')")
        .bind(category)
        .execute(pool)
        .await
        .expect("category");
    let merchant = MerchantId::new();
    sqlx::query("INSERT INTO merchants (id, name, category_id, is_certified) VALUES ($1, 'Market', $2, true)")
        .bind(merchant)
        .bind(category)
        .execute(pool)
        .await
        .expect("merchant");
    let mandate = MandateId::new();
    sqlx::query("INSERT INTO mandates (id, sender_id, beneficiary_id, total_amount, currency, expires_at) VALUES ($1, $2, $3, $4::numeric, 'USD', now() + interval '1 day')")
        .bind(mandate)
        .bind(sender)
        .bind(beneficiary)
        .bind(total)
        .execute(pool)
        .await
        .expect("mandate");
    Fixture {
        sender,
        beneficiary: Principal { user_id: beneficiary, key_id: ApiKeyId::new(), role: Role::Beneficiary },
        merchant,
        mandate,
    }
}

fn cmd(f: &Fixture, sender: UserId, amount: i64) -> PurchaseV1 {
    PurchaseV1 {
        sender_id: sender,
        beneficiary_id: f.beneficiary.user_id,
        merchant_id: f.merchant,
        money: common::money(&amount.to_string(), "USD"),
        category_id: None,
    }
}

async fn buy(pool: &PgPool, who: Principal, cmd: PurchaseV1) -> Result<(), ErrorCode> {
    let ctx = (who, cmd);
    // Each purchase in its own SERIALIZABLE transaction, retried on 40001.
    let r =
        db::serializable(pool, &ctx, |tx, (who, cmd)| Box::pin(purchases::execute(tx, who, JobId::new(), cmd))).await;
    match r {
        Ok(Outcome { end: End::Succeeded(_), .. }) => Ok(()),
        Ok(Outcome { end: End::Refused(p), .. }) | Err(Error::Problem(p)) => Err(p.code),
        Ok(Outcome { end: End::Continue(_), .. }) => panic!("a purchase makes no outside call"),
        Err(e) => panic!("infrastructure error: {e}"),
    }
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn thirty_parallel_transactions_never_overspend_a_mandate(pool: PgPool) {
    let f = fixture(&pool, "100.00").await;
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let pool = pool.clone();
        let c = cmd(&f, f.sender, 7);
        let who = f.beneficiary;
        tasks.push(tokio::spawn(async move { buy(&pool, who, c).await }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(()) => ok += 1,
            Err(code) => assert_eq!(code, ErrorCode::MandateExhausted),
        }
    }
    assert_eq!(ok, 14, "14 × 7.00 fit in 100.00, a 15th would not");
    let (spent, sum): (Decimal, Decimal) = sqlx::query_as(
        "SELECT spent_amount, (SELECT coalesce(sum(amount), 0) FROM purchases) FROM mandates WHERE id = $1",
    )
    .bind(f.mandate)
    .fetch_one(&pool)
    .await
    .expect("read");
    assert_eq!(spent, sum);
    assert_eq!(spent, Decimal::new(9800, 2));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_purchase_naming_another_sender_never_finds_the_mandate(pool: PgPool) {
    let f = fixture(&pool, "100.00").await;
    let other = UserId::new();
    sqlx::query("INSERT INTO users (id, username, email) VALUES ($1, 'mallory', 'm@example.test')")
        .bind(other)
        .execute(&pool)
        .await
        .expect("user");
    assert_eq!(buy(&pool, f.beneficiary, cmd(&f, other, 10)).await, Err(ErrorCode::MandateRequired));
    assert_eq!(buy(&pool, f.beneficiary, cmd(&f, f.sender, 10)).await, Ok(()));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_database_refuses_a_mandate_spent_past_its_total(pool: PgPool) {
    let f = fixture(&pool, "100.00").await;
    // Even hand-written SQL cannot overspend: a CHECK guards the row.
    let r = sqlx::query("UPDATE mandates SET spent_amount = 100.01 WHERE id = $1").bind(f.mandate).execute(&pool).await;
    let err = r.expect_err("the CHECK refuses");
    assert!(err.to_string().contains("mandates_spent_within_total"), "{err}");
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_purchase_is_refused_once_its_sender_or_beneficiary_is_inactive(pool: PgPool) {
    let f = fixture(&pool, "100.00").await;
    let active = |id: UserId, on: bool| {
        let pool = pool.clone();
        async move {
            sqlx::query("UPDATE users SET is_active = $2 WHERE id = $1")
                .bind(id)
                .bind(on)
                .execute(&pool)
                .await
                .expect("user");
        }
    };
    active(f.sender, false).await;
    assert_eq!(buy(&pool, f.beneficiary, cmd(&f, f.sender, 10)).await, Err(ErrorCode::Forbidden));
    active(f.sender, true).await;
    active(f.beneficiary.user_id, false).await;
    assert_eq!(buy(&pool, f.beneficiary, cmd(&f, f.sender, 10)).await, Err(ErrorCode::Forbidden));
    let spent: Decimal = sqlx::query_scalar("SELECT spent_amount FROM mandates WHERE id = $1")
        .bind(f.mandate)
        .fetch_one(&pool)
        .await
        .expect("m");
    assert_eq!(spent, Decimal::ZERO, "nothing was spent");
    active(f.beneficiary.user_id, true).await;
    assert_eq!(buy(&pool, f.beneficiary, cmd(&f, f.sender, 10)).await, Ok(()));
}
