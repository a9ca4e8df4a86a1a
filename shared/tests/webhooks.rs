//! Domain tests for PSP events on a fresh database each, no HTTP: a signed
//! event is stored with its job once whatever the number of deliveries
//! (eight at once), and its job applies it from the raw body: a funding in
//! the escrow's currency at its minor unit, an unknown payment alerted and
//! ignored, a body Postgres cannot hold refused with an alert.

mod common;

use common::*;
use shared::ErrorCode;
use shared::db;
use shared::domain::psp::events;
use shared::domain::psp::webhooks::{PspWebhookV1, envelope};
use shared::intake;
use shared::jobs::Outcome;
use sqlx::PgPool;

/// Receives a body as the api does: its envelope, then the event and its job.
async fn receive(pool: &PgPool, body: &str) -> intake::Received {
    let env = envelope(body.as_bytes(), None).expect("a valid envelope");
    intake::webhook(pool, &env, body).await.expect("stored")
}

async fn apply(pool: &PgPool, event_id: &str) -> shared::Result<Outcome> {
    let cmd = PspWebhookV1 { event_id: event_id.into() };
    db::serializable(pool, &cmd, |tx, cmd| Box::pin(events::apply(tx, cmd))).await
}

/// A `funding.succeeded` body for `escrow`.
fn funding_event(id: &str, escrow: impl std::fmt::Display, amount: &str) -> String {
    format!(
        r#"{{"id": "{id}", "type": "funding.succeeded", "data": {{"escrow_id": "{escrow}", "amount": "{amount}"}}}}"#
    )
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string())).fetch_one(pool).await.expect("count")
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn eight_deliveries_of_one_event_at_once_store_it_and_its_job_once(pool: PgPool) {
    let body = r#"{"id": "evt-1", "type": "something.new", "data": {}}"#;
    let receipts = at_once(8, |_| {
        let pool = pool.clone();
        async move { receive(&pool, body).await.duplicate }
    })
    .await;
    assert_eq!(receipts.iter().filter(|duplicate| **duplicate).count(), 7);
    assert_eq!(count(&pool, "SELECT count(*) FROM psp_webhook_events").await, 1);
    assert_eq!(count(&pool, "SELECT count(*) FROM jobs WHERE kind = 'psp_webhook'").await, 1);
    assert_eq!(count(&pool, "SELECT count(*) FROM audit_log WHERE action = 'WEBHOOK_RECEIVED'").await, 1);
    let r = apply(&pool, "evt-1").await;
    assert_eq!(succeeded(r)["ignored"], true, "an unknown type is stored and ignored");
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_funding_is_read_in_the_escrow_currency_and_an_unknown_payment_is_alerted(pool: PgPool) {
    let d = deal(&pool, "5000", "XOF", &[]).await;
    let funding = |id: &str, amount: &str| funding_event(id, d.escrow, amount);
    receive(&pool, &funding("f-cents", "100.50")).await;
    assert_eq!(code(&apply(&pool, "f-cents").await), Some(ErrorCode::AmountInvalid), "XOF has no cents");
    receive(&pool, &funding("f-ok", "100.00")).await;
    assert_eq!(succeeded(apply(&pool, "f-ok").await)["status"], "DRAFT");
    assert_eq!(d.money(&pool).await.0, dec("100"));
    receive(&pool, r#"{"id": "f-bad", "type": "funding.succeeded", "data": {"amount": "1"}}"#).await;
    assert_eq!(code(&apply(&pool, "f-bad").await), Some(ErrorCode::WebhookPayloadInvalid));
    let unknown =
        r#"{"id": "s-1", "type": "payment.settled", "data": {"payment_id": "0190a3c6-0000-7000-8000-000000000000"}}"#;
    receive(&pool, unknown).await;
    assert_eq!(succeeded(apply(&pool, "s-1").await)["reason"], "unknown payment");
    assert_eq!(count(&pool, "SELECT count(*) FROM alerts WHERE type = 'PSP_UNKNOWN_PAYMENT'").await, 1);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn an_event_postgres_cannot_hold_is_kept_raw_and_refused_with_an_alert(pool: PgPool) {
    let body = r#"{"id": "nul-1", "type": "funding.succeeded", "data": {"note": "a\u0000b"}}"#;
    let received = receive(&pool, body).await;
    assert!(!received.duplicate);
    let raw: (Option<serde_json::Value>, String) =
        sqlx::query_as("SELECT payload, raw_body FROM psp_webhook_events WHERE event_id = 'nul-1'")
            .fetch_one(&pool)
            .await
            .expect("stored");
    assert_eq!(raw, (None, body.to_string()));
    assert_eq!(code(&apply(&pool, "nul-1").await), Some(ErrorCode::WebhookPayloadInvalid));
    assert_eq!(count(&pool, "SELECT count(*) FROM alerts WHERE type = 'WEBHOOK_PAYLOAD_INVALID'").await, 1);
}

/// Found by the chaos soak's review: a PSP funding no escrow can take (over
/// its total, or an escrow that ended) was refused with nothing to tell ops
/// that the sender's money sat at the PSP, credited nowhere.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_psp_funding_no_escrow_can_take_is_refused_with_an_alert_and_credits_nothing(pool: PgPool) {
    let d = deal(&pool, "100.00", "USD", &[]).await;
    let funding = |id: &str, amount: &str| funding_event(id, d.escrow, amount);
    receive(&pool, &funding("f-1", "80.00")).await;
    assert_eq!(succeeded(apply(&pool, "f-1").await)["status"], "DRAFT");
    receive(&pool, &funding("f-2", "30.00")).await;
    assert_eq!(code(&apply(&pool, "f-2").await), Some(ErrorCode::EscrowOverfunded));
    assert_eq!(d.money(&pool).await.0, dec("80.00"), "nothing credited past the total");
    let alert: (i64, Option<String>) =
        sqlx::query_as("SELECT count(*), max(payload->>'event_id') FROM alerts WHERE type = 'PSP_FUNDING_REFUSED'")
            .fetch_one(&pool)
            .await
            .expect("alerts");
    assert_eq!(alert, (1, Some("f-2".to_string())));
    assert_eq!(count(&pool, "SELECT count(*) FROM audit_log WHERE action = 'WEBHOOK_REFUSED'").await, 1);
    // A funding with no escrow to read is refused and alerted the same way.
    receive(&pool, r#"{"id": "f-3", "type": "funding.succeeded", "data": {"amount": "1.00"}}"#).await;
    assert_eq!(code(&apply(&pool, "f-3").await), Some(ErrorCode::WebhookPayloadInvalid));
    assert_eq!(count(&pool, "SELECT count(*) FROM alerts WHERE type = 'PSP_FUNDING_REFUSED'").await, 2);
}
