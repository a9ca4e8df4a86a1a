//! PSP webhooks at the edge: a captured request replayed under new header
//! ids is the same event, never new money; a signed body Postgres cannot
//! hold is acknowledged, kept raw and refused by its job with an alert.

use std::time::Duration;

use e2e::env::eventually;
use e2e::scenario::{deal, webhook};
use e2e::{Env, Reply};
use serde_json::json;

async fn funded(env: &Env, escrow: &str) -> anyhow::Result<(String, String)> {
    Ok(sqlx::query_as("SELECT funded_amount::text, status FROM escrows WHERE id = $1::uuid")
        .bind(escrow)
        .fetch_one(&env.pool)
        .await?)
}

async fn webhook_jobs_done(env: &Env) -> anyhow::Result<Vec<(String, String)>> {
    eventually(Duration::from_secs(20), || async {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT status, coalesce(error->>'code', '') FROM jobs WHERE kind = 'psp_webhook' ORDER BY created_at",
        )
        .fetch_all(&env.pool)
        .await?;
        Ok(rows.iter().all(|(s, _)| s == "succeeded" || s == "failed" || s == "dead").then_some(rows))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_signed_bytes_replayed_under_new_header_ids_never_move_the_escrow() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let deal = deal(&env, "30.00").await?;
    let secret = env.var("PSP_WEBHOOK_SECRETS").unwrap_or("").to_string();
    let body =
        json!({"id": "fund-1", "type": "funding.succeeded", "data": {"escrow_id": deal.escrow_id, "amount": "10.00", "currency": "USD"}})
            .to_string();
    let now = chrono::Utc::now().timestamp();
    let first = webhook(&env, &body, Some("fund-1"), Some(&secret), now).await?;
    assert_eq!((first.status, first.body["duplicate"].clone()), (200, json!(false)), "{}", first.text);
    eventually(Duration::from_secs(20), || async {
        Ok((funded(&env, &deal.escrow_id).await?.0 == "10.00").then_some(()))
    })
    .await?;
    // The captured request, byte for byte, under fresh header ids: refused.
    for header in ["fund-2", "fund-3", "replay-ffff", "FUND-1"] {
        let r: Reply = webhook(&env, &body, Some(header), Some(&secret), now).await?;
        assert_eq!((r.status, r.code().as_str()), (400, "WEBHOOK_PAYLOAD_INVALID"), "{header}: {}", r.text);
    }
    // A header that is not even text is no id either.
    let ts = now.to_string();
    let raw_header = reqwest::header::HeaderValue::from_bytes(b"fund-1\xff")?;
    let r = env
        .anonymous()
        .send(
            reqwest::Client::new()
                .post(format!("{}/psp/webhook", env.api_url))
                .header("X-PSP-Timestamp", &ts)
                .header("X-PSP-Signature", shared::psp::signature::sign(&secret, &ts, body.as_bytes()))
                .header("X-PSP-Event-Id", raw_header)
                .body(body.clone()),
        )
        .await?;
    assert_eq!((r.status, r.code().as_str()), (400, "WEBHOOK_PAYLOAD_INVALID"), "{}", r.text);
    // Without the header, or with the body's id: the same event, a duplicate.
    for header in [None, Some("fund-1")] {
        let r = webhook(&env, &body, header, Some(&secret), now).await?;
        assert_eq!((r.status, r.body["duplicate"].clone(), r.s("event_id")), (200, json!(true), "fund-1".into()));
    }
    let jobs = webhook_jobs_done(&env).await?;
    assert_eq!(jobs.len(), 1, "one event, one job: {jobs:?}");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM psp_webhook_events").fetch_one(&env.pool).await?;
    let deposits: i64 = sqlx::query_scalar("SELECT count(*) FROM escrow_deposits").fetch_one(&env.pool).await?;
    assert_eq!((events, deposits), (1, 1));
    assert_eq!(
        funded(&env, &deal.escrow_id).await?,
        ("10.00".to_string(), "DRAFT".to_string()),
        "the money never moved"
    );
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_webhook_holding_u0000_is_acknowledged_kept_raw_and_refused_with_an_alert() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let deal = deal(&env, "30.00").await?;
    let secret = env.var("PSP_WEBHOOK_SECRETS").unwrap_or("").to_string();
    let now = chrono::Utc::now().timestamp();
    let body = format!(
        r#"{{"id": "nul-1", "type": "funding.succeeded", "data": {{"escrow_id": "{}", "amount": "30.00", "note": "a\u0000b"}}}}"#,
        deal.escrow_id
    );
    let r = webhook(&env, &body, None, Some(&secret), now).await?;
    assert_eq!((r.status, r.body["duplicate"].clone()), (200, json!(false)), "acknowledged, never a 5xx: {}", r.text);
    let raw: (Option<serde_json::Value>, String) =
        sqlx::query_as("SELECT payload, raw_body FROM psp_webhook_events WHERE event_id = 'nul-1'")
            .fetch_one(&env.pool)
            .await?;
    assert_eq!(raw, (None, body.clone()), "kept as its raw text");
    let jobs = webhook_jobs_done(&env).await?;
    assert_eq!(jobs, vec![("failed".to_string(), "WEBHOOK_PAYLOAD_INVALID".to_string())]);
    let alerts = env.admin().get("/alerts?type=WEBHOOK_PAYLOAD_INVALID").await?;
    assert_eq!(alerts.body["items"].as_array().map(Vec::len), Some(1), "{}", alerts.text);
    assert_eq!(alerts.body["items"][0]["payload"]["event_id"], json!("nul-1"));
    // The PSP's retry is a duplicate; the money never moved.
    let r = webhook(&env, &body, None, Some(&secret), now).await?;
    assert_eq!((r.status, r.body["duplicate"].clone()), (200, json!(true)));
    assert_eq!(funded(&env, &deal.escrow_id).await?, ("0.00".to_string(), "DRAFT".to_string()));
    // An id holding U+0000 cannot name an event: refused, nothing stored.
    let r = webhook(&env, r#"{"id": "a\u0000", "type": "x"}"#, None, Some(&secret), now).await?;
    assert_eq!((r.status, r.code().as_str()), (400, "WEBHOOK_PAYLOAD_INVALID"));
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM psp_webhook_events").fetch_one(&env.pool).await?;
    assert_eq!(events, 1);
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_funding_amount_is_read_from_its_literal_text() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let deal = deal(&env, "100000000000000.01").await?;
    let secret = env.var("PSP_WEBHOOK_SECRETS").unwrap_or("").to_string();
    let now = chrono::Utc::now().timestamp();
    let body = format!(
        r#"{{"id": "big-1", "type": "funding.succeeded", "data": {{"escrow_id": "{}", "amount": 100000000000000.01, "currency": "USD"}}}}"#,
        deal.escrow_id
    );
    assert_eq!(webhook(&env, &body, None, Some(&secret), now).await?.status, 200);
    let jobs = webhook_jobs_done(&env).await?;
    assert_eq!(jobs, vec![("succeeded".to_string(), String::new())]);
    assert_eq!(funded(&env, &deal.escrow_id).await?, ("100000000000000.01".to_string(), "FUNDED".to_string()));
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_webhook_naming_a_key_twice_is_refused_naming_it_and_stores_nothing() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let deal = deal(&env, "30.00").await?;
    let secret = env.var("PSP_WEBHOOK_SECRETS").unwrap_or("").to_string();
    let now = chrono::Utc::now().timestamp();
    // Properly signed: the signature covers the bytes, not what they mean.
    // We would read 30.00, a reader keeping the first value 1.00.
    let body = format!(
        r#"{{"id": "dup-1", "type": "funding.succeeded", "data": {{"escrow_id": "{}", "currency": "USD", "amount": "1.00", "amount": "30.00"}}}}"#,
        deal.escrow_id
    );
    let r = webhook(&env, &body, None, Some(&secret), now).await?;
    assert_eq!((r.status, r.code().as_str()), (400, "WEBHOOK_PAYLOAD_INVALID"), "{}", r.text);
    assert!(r.is_problem() && r.s("detail").contains("data.amount"), "the key is named: {}", r.text);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM psp_webhook_events").fetch_one(&env.pool).await?;
    let jobs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = 'psp_webhook'").fetch_one(&env.pool).await?;
    assert_eq!((events, jobs), (0, 0), "nothing stored, nothing queued");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(funded(&env, &deal.escrow_id).await?, ("0.00".to_string(), "DRAFT".to_string()), "no money moved");
    env.stop().await
}
