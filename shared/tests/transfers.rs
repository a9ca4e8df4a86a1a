//! Domain tests for restricted transfers on a fresh database each, no
//! HTTP: refused with an alert that survives the refusal unless the
//! receiver is allow-listed or certified; a sender moves only their own
//! money, between active users; the parties, support and admin see it.

mod common;

use common::*;
use shared::ErrorCode;
use shared::db;
use shared::domain::spend::transfers::{self, TransferV1};
use shared::ids::{JobId, TransferId};
use shared::jobs::Outcome;
use shared::principal::{Principal, Role};
use sqlx::PgPool;

async fn transfer(pool: &PgPool, who: Principal, sender: &Principal, receiver: &Principal) -> shared::Result<Outcome> {
    let cmd = TransferV1 { sender_id: sender.user_id, receiver_id: receiver.user_id, money: money("15.00", "EUR") };
    db::serializable(pool, &(who, cmd), |tx, (who, cmd)| Box::pin(transfers::execute(tx, who, JobId::new(), cmd))).await
}

async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(pool)
        .await
        .expect("count")
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_transfer_to_a_stranger_is_refused_with_an_alert_that_survives_the_refusal(pool: PgPool) {
    let (alice, bob) = (user(&pool, Role::Sender).await, user(&pool, Role::Beneficiary).await);
    assert_eq!(code(&transfer(&pool, alice, &alice, &bob).await), Some(ErrorCode::UnauthorizedTransfer));
    assert_eq!((count(&pool, "transactions").await, count(&pool, "alerts").await), (0, 1));
    let refused: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'TRANSFER_REFUSED'")
        .fetch_one(&pool)
        .await
        .expect("audit");
    assert_eq!(refused, 1);
    // Allow-listed: it goes through, and only its parties (and support) see it.
    sqlx::query("INSERT INTO allowlist (id, owner_id, recipient_id) VALUES (gen_random_uuid(), $1, $2)")
        .bind(alice.user_id)
        .bind(bob.user_id)
        .execute(&pool)
        .await
        .expect("allow-listed");
    let done = succeeded(transfer(&pool, alice, &alice, &bob).await);
    assert_eq!((done["amount"].as_str(), done["status"].as_str()), (Some("15.00"), Some("COMPLETED")));
    let id: TransferId = serde_json::from_value(done["id"].clone()).expect("id");
    let (support, stranger) = (user(&pool, Role::Support).await, user(&pool, Role::Sender).await);
    let mut conn = pool.acquire().await.expect("conn");
    for who in [alice, bob, support] {
        assert!(transfers::get_for(&mut conn, id, &who).await.is_ok());
    }
    assert_eq!(refusal(&transfers::get_for(&mut conn, id, &stranger).await), Some(ErrorCode::NotFound));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_certified_receiver_needs_no_allowlist_but_the_sender_acts_for_themself_between_active_users(pool: PgPool) {
    let (alice, carol) = (user(&pool, Role::Sender).await, user(&pool, Role::Beneficiary).await);
    sqlx::query("INSERT INTO certifications (user_id, level) VALUES ($1, 'BASIC')")
        .bind(carol.user_id)
        .execute(&pool)
        .await
        .expect("certified");
    let mallory = user(&pool, Role::Sender).await;
    assert_eq!(code(&transfer(&pool, mallory, &alice, &carol).await), Some(ErrorCode::Forbidden));
    assert_eq!(code(&transfer(&pool, alice, &alice, &carol).await), None);
    let admin = user(&pool, Role::Admin).await;
    assert_eq!(code(&transfer(&pool, admin, &alice, &carol).await), None, "an admin acts for the sender");
    sqlx::query("UPDATE users SET is_active = false WHERE id = $1")
        .bind(carol.user_id)
        .execute(&pool)
        .await
        .expect("x");
    assert_eq!(code(&transfer(&pool, alice, &alice, &carol).await), Some(ErrorCode::Forbidden));
    assert_eq!(count(&pool, "transactions").await, 2);
}
