//! Domain tests for PSP events on a fresh database each, no HTTP: a signed
//! event is stored with its job once whatever the number of deliveries
//! (eight at once), and its job applies it from the raw body: a funding in
//! the escrow's currency at its minor unit (any other currency, or none,
//! credits nothing and alerts ops), an unknown payment alerted and ignored,
//! a body Postgres cannot hold refused with an alert.

mod common;

use common::*;
use rust_decimal::Decimal;
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

/// A `funding.succeeded` body for `escrow`, in `currency`.
fn funding_event(id: &str, escrow: impl std::fmt::Display, amount: &str, currency: &str) -> String {
    format!(
        r#"{{"id": "{id}", "type": "funding.succeeded", "data": {{"escrow_id": "{escrow}", "amount": "{amount}", "currency": "{currency}"}}}}"#
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
    let funding = |id: &str, amount: &str| funding_event(id, d.escrow, amount, "XOF");
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
    let funding = |id: &str, amount: &str| funding_event(id, d.escrow, amount, "USD");
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

/// Found from outside (issue 15): a funding in another currency than the
/// escrow's was credited as if it were in the escrow's (5,000 XOF became
/// 5,000.00 USD), and one naming no currency or an unknown one too.
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_funding_in_another_currency_or_none_credits_nothing_and_alerts_ops_with_both_sides(pool: PgPool) {
    let usd = deal(&pool, "10000.00", "USD", &[]).await;
    let xof = deal(&pool, "100000", "XOF", &[]).await;
    let no_currency = format!(
        r#"{{"id": "f-none", "type": "funding.succeeded", "data": {{"escrow_id": "{}", "amount": "7.00"}}}}"#,
        usd.escrow
    );
    let number_currency = format!(
        r#"{{"id": "f-num", "type": "funding.succeeded", "data": {{"escrow_id": "{}", "amount": "7.00", "currency": 840}}}}"#,
        usd.escrow
    );
    let refused = [
        (funding_event("f-xof", usd.escrow, "5000", "XOF"), "f-xof"),
        (funding_event("f-eur", usd.escrow, "40", "EUR"), "f-eur"),
        (funding_event("f-usd", xof.escrow, "100", "USD"), "f-usd"),
        (funding_event("f-zzz", usd.escrow, "10.00", "ZZZ"), "f-zzz"),
        (funding_event("f-lower", usd.escrow, "10.00", "usd"), "f-lower"),
        (no_currency, "f-none"),
        (number_currency, "f-num"),
    ];
    for (body, id) in &refused {
        receive(&pool, body).await;
        assert_eq!(code(&apply(&pool, id).await), Some(ErrorCode::CurrencyMismatch), "{id}");
    }
    assert_eq!(usd.money(&pool).await.0, Decimal::ZERO, "nothing credited to the USD escrow");
    assert_eq!(xof.money(&pool).await.0, Decimal::ZERO, "nothing credited to the XOF escrow");
    assert_eq!(count(&pool, "SELECT count(*) FROM escrow_deposits").await, 0);
    assert_eq!(count(&pool, "SELECT count(*) FROM alerts WHERE type = 'PSP_FUNDING_REFUSED'").await, 7);
    // Each alert carries both sides: the funding's amount and currency, the
    // escrow's currency and amounts.
    let (amount, currency, escrow_currency, total): (String, String, String, String) = sqlx::query_as(
        "SELECT payload->>'amount', payload->>'currency', payload->'escrow'->>'currency', payload->'escrow'->>'amount_total'
           FROM alerts WHERE type = 'PSP_FUNDING_REFUSED' AND payload->>'event_id' = 'f-xof'",
    )
    .fetch_one(&pool)
    .await
    .expect("the alert");
    assert_eq!((amount.as_str(), currency.as_str()), ("5000", "XOF"));
    assert_eq!((escrow_currency.as_str(), total.as_str()), ("USD", "10000.00"));
    // The escrow's own currency still funds it.
    receive(&pool, &funding_event("f-ok", usd.escrow, "40.00", "USD")).await;
    assert_eq!(succeeded(apply(&pool, "f-ok").await)["status"], "DRAFT");
    assert_eq!(usd.money(&pool).await.0, dec("40.00"));
}
