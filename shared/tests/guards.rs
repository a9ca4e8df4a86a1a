//! The database as the last guard: what hand-written SQL cannot do to the
//! audit log and the SAKA ledger.

mod common;

use common::user;
use shared::db;
use shared::domain::ops::audit;
use shared::domain::saka::{self, HarvestReason, NewAdjustment};
use shared::ids::JobId;
use shared::jobs::{End, Outcome};
use shared::money::Grains;
use shared::principal::Role;
use sqlx::PgPool;

fn constraint(e: &sqlx::Error) -> Option<String> {
    e.as_database_error().and_then(|d| d.constraint()).map(str::to_string)
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn the_audit_log_refuses_update_delete_and_truncate(pool: PgPool) {
    let mut conn = pool.acquire().await.expect("conn");
    audit::write(&mut conn, "user:x", "ESCROW_RELEASED", "escrow", "e1", serde_json::json!({"by": "client"}))
        .await
        .expect("append");
    for sql in [
        "UPDATE audit_log SET actor = 'someone else'",
        "UPDATE audit_log SET data = '{}' WHERE entity_id = 'e1'",
        "DELETE FROM audit_log",
        "DELETE FROM audit_log WHERE entity_id = 'nothing matches'",
        "TRUNCATE audit_log",
    ] {
        let e = sqlx::query(sql).execute(&pool).await.expect_err(sql);
        assert_eq!(constraint(&e).as_deref(), Some("audit_log_append_only"), "{sql}");
    }
    let rows: Vec<(String, serde_json::Value)> =
        sqlx::query_as("SELECT actor, data FROM audit_log").fetch_all(&pool).await.expect("rows");
    assert_eq!(rows, vec![("user:x".to_string(), serde_json::json!({"by": "client"}))]);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_hand_written_ledger_insert_mints_nothing(pool: PgPool) {
    let me = user(&pool, Role::Beneficiary).await.user_id;
    sqlx::query("INSERT INTO saka_wallets (user_id) VALUES ($1)").bind(me).execute(&pool).await.expect("wallet");
    let insert = |direction: &'static str, reason: &'static str, amount: i64, adjustment: Option<uuid::Uuid>| {
        let pool = pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO saka_ledger (id, user_id, direction, reason, amount, adjustment_id)
                 VALUES (gen_random_uuid(), $1, $2, $3, $4, $5)",
            )
            .bind(me)
            .bind(direction)
            .bind(reason)
            .bind(amount)
            .bind(adjustment)
            .execute(&pool)
            .await
        }
    };
    // A harvest row of any amount but its reason's reward.
    for reason in HarvestReason::ALL {
        let reward = reason.reward().0;
        for amount in [1_000_000, reward + 1, reward - 1, 1] {
            if amount == reward {
                continue;
            }
            let e = insert("EARN", reason.as_str(), amount, None).await.expect_err("refused");
            assert_eq!(constraint(&e).as_deref(), Some("saka_ledger_harvest_reward"), "{} {amount}", reason.as_str());
        }
    }
    // A manual credit without an adjustment, with an unknown one, with a
    // pending one, or replaying an applied one.
    assert!(insert("EARN", "MANUAL_ADJUST", 100, None).await.is_err());
    assert!(insert("EARN", "MANUAL_ADJUST", 100, Some(uuid::Uuid::new_v4())).await.is_err());
    let admin = user(&pool, Role::Admin).await;
    let pending = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO saka_adjustments (id, user_id, amount, note, status, requested_by, expires_at)
         VALUES ($1, $2, 700, 'pending', 'PENDING_APPROVAL', $3, now() + interval '1 day')",
    )
    .bind(pending)
    .bind(me)
    .bind(admin.user_id)
    .execute(&pool)
    .await
    .expect("pending adjustment");
    let e = insert("EARN", "MANUAL_ADJUST", 700, Some(pending)).await.expect_err("not applied");
    assert_eq!(constraint(&e).as_deref(), Some("saka_ledger_adjustment_applied"));
    let balance: i64 = sqlx::query_scalar("SELECT balance FROM saka_wallets WHERE user_id = $1")
        .bind(me)
        .fetch_one(&pool)
        .await
        .expect("w");
    assert_eq!(balance, 0, "not one grain minted");
    // An adjustment applied by the rule credits once; its row replayed by hand is refused.
    let new = NewAdjustment { user_id: me, amount: Grains(100), note: "gesture".into() };
    let applied = db::serializable(&pool, &(admin, new), |tx, (who, new)| {
        Box::pin(saka::request_adjustment(tx, who, JobId::new(), new, chrono::Utc::now(), chrono_tz::UTC))
    })
    .await
    .expect("applied");
    let Outcome { end: End::Succeeded(applied), .. } = applied else { panic!("applied at once: {applied:?}") };
    let id: uuid::Uuid = applied["id"].as_str().and_then(|s| s.parse().ok()).expect("adjustment id");
    let e = insert("EARN", "MANUAL_ADJUST", 100, Some(id)).await.expect_err("replayed");
    assert_eq!(constraint(&e).as_deref(), Some("saka_ledger_adjustment_key"));
    // The reward itself still goes through (the rule's own insert).
    for reason in HarvestReason::ALL {
        insert("EARN", reason.as_str(), reason.reward().0, None).await.expect("the fixed reward");
    }
    let balance: i64 = sqlx::query_scalar("SELECT balance FROM saka_wallets WHERE user_id = $1")
        .bind(me)
        .fetch_one(&pool)
        .await
        .expect("w");
    assert_eq!(balance, 100 + 165);
}
