//! Invariants and PSP reconciliation end to end: a clean money flow through
//! the PSP simulator (funding, release, settlement) passes every invariant;
//! a deposit the PSP never made (a funding webhook forged with a valid
//! secret) and a payout recorded with another amount are caught, with both
//! sides in the sample; `api check` exits 1 on a violation.

use std::time::Duration;

use e2e::env::{bin, eventually};
use e2e::scenario::{deal, webhook};
use e2e::{Env, EnvOptions};
use serde_json::{Value, json};

/// Runs the invariants now through the API; (name → violations, the body).
async fn run_now(env: &Env) -> anyhow::Result<(std::collections::HashMap<String, u64>, Value)> {
    let r = env.admin().get("/ops/invariants?run=1").await?;
    anyhow::ensure!(r.status == 200, "GET /ops/invariants?run=1: {} {}", r.status, r.text);
    let counts = r.body["invariants"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| (i["name"].as_str().unwrap_or("").to_string(), i["violations"].as_u64().unwrap_or(0)))
        .collect();
    Ok((counts, r.body))
}

fn sample_of<'a>(body: &'a Value, name: &str) -> Vec<&'a Value> {
    body["invariants"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["name"] == name)
        .flat_map(|i| i["sample"].as_array().into_iter().flatten())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_flow_through_the_psp_passes_and_forged_or_altered_money_is_caught() -> anyhow::Result<()> {
    let env = Env::with(EnvOptions::default().psp()).await?;
    let deal = deal(&env, "50.00").await?;
    let psp = env.psp_url.clone().unwrap_or_default();
    // A sender's funding reaches the PSP, which announces it by webhook.
    let funding = reqwest::Client::new()
        .post(format!("{psp}/fundings"))
        .json(&json!({"escrow_id": deal.escrow_id, "amount": "50.00", "currency": "USD"}))
        .send()
        .await?;
    assert_eq!(funding.status().as_u16(), 201);
    eventually(Duration::from_secs(30), || async {
        let e = deal.escrow().await?;
        Ok((e.s("status") == "FUNDED").then_some(()))
    })
    .await?;
    let r = deal.client.client.job(&format!("/escrows/{}/client-approve", deal.escrow_id), "ok", json!({}), 20).await?;
    assert_eq!(r.s("status"), "succeeded", "{}", r.text);
    eventually(Duration::from_secs(30), || async {
        let e = deal.escrow().await?;
        Ok((e.s("paid_amount") == "50.00").then_some(()))
    })
    .await?;
    let (clean, body) = run_now(&env).await?;
    assert_eq!(clean.len(), 7, "{body}");
    assert!(clean.values().all(|n| *n == 0), "a clean flow violates nothing: {body}");

    // A funding webhook forged with a valid secret: the deposit is made, but
    // the PSP never took that money.
    let other = e2e::scenario::person(&env, "c2", "sender").await?;
    let provider = e2e::scenario::person(&env, "p2", "beneficiary").await?;
    let e = other
        .client
        .post(
            "/escrows",
            json!({"client_id": other.id, "provider_id": provider.id, "amount_total": "30.00",
                                 "currency": "USD", "release_conditions": {}, "deadline_at": "2100-01-01T00:00:00Z"}),
        )
        .await?;
    let escrow_id = e.s("id");
    let forged = json!({"id": "forged-1", "type": "funding.succeeded", "created_at": "2026-11-30T00:00:00Z",
                        "data": {"escrow_id": escrow_id, "amount": "30.00", "currency": "USD"}})
    .to_string();
    let now = chrono::Utc::now().timestamp();
    assert_eq!(webhook(&env, &forged, None, Some(&env.webhook_secret), now).await?.status, 200);
    eventually(Duration::from_secs(30), || async {
        let funded: Option<String> = sqlx::query_scalar("SELECT funded_amount::text FROM escrows WHERE id = $1::uuid")
            .bind(&escrow_id)
            .fetch_optional(&env.pool)
            .await?;
        Ok((funded.as_deref() == Some("30.00")).then_some(()))
    })
    .await?;
    // And a settled payout whose amount we altered after the fact.
    sqlx::query("UPDATE payments SET amount = amount - 1 WHERE escrow_id = $1::uuid")
        .bind(&deal.escrow_id)
        .execute(&env.pool)
        .await?;
    let (found, body) = run_now(&env).await?;
    assert!(found["psp_reconciliation"] >= 2, "{body}");
    let sample = sample_of(&body, "psp_reconciliation");
    let forged_row = sample.iter().find(|r| r["ours"]["event_id"] == "forged-1");
    assert_eq!(forged_row.map(|r| r["problem"].clone()), Some(json!("deposit without a PSP funding")), "{body}");
    let altered = sample.iter().find(|r| r["problem"] == "payment differs at the PSP");
    let altered = altered.ok_or_else(|| anyhow::anyhow!("no altered payment in {body}"))?;
    assert_eq!((altered["ours"]["amount"].as_str(), altered["psp"]["amount"].as_str()), (Some("49.00"), Some("50.00")));
    // Our own books disagree too: the escrow's paid amount is no longer its payouts.
    assert!(found["escrow_balance"] >= 1, "{body}");
    // One alert per violating row, and the run is what GET shows next.
    let alerts: i64 = sqlx::query_scalar("SELECT count(*) FROM alerts WHERE type = 'INVARIANT_VIOLATED'")
        .fetch_one(&env.pool)
        .await?;
    assert!(alerts >= 3, "{alerts} alerts");
    let last = env.admin().get("/ops/invariants").await?;
    assert_eq!(last.body["run_id"], body["run_id"]);
    // Support reads it; a sender may not.
    assert_eq!(env.client(&other.key).get("/ops/invariants").await?.status, 403);

    // `api check` says the same, with its exit code.
    let out = tokio::process::Command::new(bin("api", "KOBATELA_API_BIN"))
        .arg("check")
        .env("DATABASE_URL", &env.db_url)
        .env("PSP_BASE_URL", &psp)
        .env("PSP_WEBHOOK_SECRETS", &env.webhook_secret)
        .env("LOG_FORMAT", "pretty")
        .env("RUST_LOG", "error")
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("psp_reconciliation") && text.contains("forged-1"), "{text}");
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_check_passes_on_a_fresh_database() -> anyhow::Result<()> {
    let env = Env::with(EnvOptions::default().workers(0)).await?;
    let out = tokio::process::Command::new(bin("api", "KOBATELA_API_BIN"))
        .args(["check", "--no-psp"])
        .env("DATABASE_URL", &env.db_url)
        .env("LOG_FORMAT", "pretty")
        .env("RUST_LOG", "error")
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("0 violating row(s)") && text.contains("not checked"), "{text}");
    env.stop().await
}
