//! Escrows end to end with the real PSP simulator: deposits, transitions,
//! payouts settled by signed webhooks, refunds, failures and re-drives.

use std::time::Duration;

use e2e::env::eventually;
use e2e::scenario::{deal, person};
use e2e::{Env, EnvOptions};
use serde_json::json;

async fn wait_escrow(deal: &e2e::scenario::Deal, status: &str, paid: &str) -> anyhow::Result<serde_json::Value> {
    eventually(Duration::from_secs(30), || async {
        let e = deal.escrow().await?;
        Ok((e.s("status") == status && e.s("paid_amount") == paid).then_some(e.body))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposits_fund_an_escrow_and_never_over_fund_it() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let deal = deal(&env, "100.00").await?;
    let r = deal.deposit("d1", "60.00").await?;
    assert_eq!(
        (r.s("status").as_str(), r.body.pointer("/result/status")),
        ("succeeded", Some(&json!("DRAFT"))),
        "{}",
        r.text
    );
    let r = deal.deposit("d2", "40.01").await?;
    assert_eq!(r.code(), "ESCROW_OVERFUNDED", "{}", r.text);
    let r = deal.deposit("d3", "40.00").await?;
    assert_eq!(r.body.pointer("/result/status"), Some(&json!("FUNDED")), "{}", r.text);
    assert_eq!(r.body.pointer("/result/balance"), Some(&json!("100.00")));
    let r = deal.deposit("d4", "0.01").await?;
    assert_eq!(r.code(), "ESCROW_OVERFUNDED");
    // Only the client (or admin) deposits; the provider cannot.
    let r = deal
        .provider
        .client
        .job(&format!("/escrows/{}/deposit", deal.escrow_id), "p", json!({"amount": "1"}), 20)
        .await?;
    assert_eq!(r.status, 403);
    let r = deal.deposit("d5", "-1").await?;
    assert_eq!((r.status, r.code().as_str()), (422, "AMOUNT_INVALID"));
    // Strangers do not see the escrow.
    let stranger = person(&env, "stranger", "sender").await?;
    assert_eq!(stranger.client.get(&format!("/escrows/{}", deal.escrow_id)).await?.code(), "ESCROW_NOT_FOUND");
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM escrow_events WHERE escrow_id = $1::uuid AND kind IN ('DEPOSITED', 'FUNDED')",
    )
    .bind(&deal.escrow_id)
    .fetch_one(&env.pool)
    .await?;
    assert_eq!(events, 3);
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn milestones_are_sequenced_and_never_exceed_the_total() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let deal = deal(&env, "100.00").await?;
    assert_eq!(deal.milestone(1, "60.00", "PHOTO", Some((5.35, -4.0, 100.0))).await?.status, 201);
    let r = deal.milestone(3, "10.00", "PHOTO", None).await?;
    assert_eq!((r.status, r.code().as_str()), (422, "VALIDATION_ERROR"));
    let r = deal.milestone(2, "40.01", "DOCUMENT", None).await?;
    assert_eq!((r.status, r.code().as_str()), (422, "MILESTONE_SUM_EXCEEDS_TOTAL"));
    assert_eq!(deal.milestone(2, "40.00", "DOCUMENT", None).await?.status, 201);
    let r = deal.milestone(3, "1.00", "SELFIE", None).await?;
    assert_eq!(r.status, 422);
    let r = deal.client.client.post(&format!("/escrows/{}/milestones", deal.escrow_id), json!({"idx": 3, "label": "x", "amount": "1", "proof_type": "PHOTO", "geofence": {"lat": 95, "lng": 0, "radius_m": 10}})).await?;
    assert_eq!(r.status, 422);
    let e = deal.escrow().await?;
    assert_eq!(e.body["milestones"].as_array().map(Vec::len), Some(2));
    assert_eq!(e.body["milestones"][0]["geofence"]["radius_m"], json!(100.0));
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_without_milestones_pays_the_balance_and_the_webhook_settles_it() -> anyhow::Result<()> {
    let env = Env::with(EnvOptions::default().psp()).await?;
    let deal = deal(&env, "250.00").await?;
    deal.deposit("d", "250.00").await?;
    // Illegal transitions change nothing.
    let r =
        deal.client.client.job(&format!("/escrows/{}/mark-delivered", deal.escrow_id), "md0", json!({}), 20).await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.code(), "FORBIDDEN");
    let r = deal
        .provider
        .client
        .job(&format!("/escrows/{}/mark-delivered", deal.escrow_id), "md1", json!({"note": "done"}), 20)
        .await?;
    assert_eq!(r.body.pointer("/result/status"), Some(&json!("RELEASABLE")), "{}", r.text);
    let r =
        deal.provider.client.job(&format!("/escrows/{}/mark-delivered", deal.escrow_id), "md2", json!({}), 20).await?;
    assert_eq!(r.code(), "ESCROW_INVALID_TRANSITION");
    let r = deal.client.client.job(&format!("/escrows/{}/client-approve", deal.escrow_id), "ok", json!({}), 20).await?;
    assert_eq!(r.body.pointer("/result/status"), Some(&json!("RELEASED")), "{}", r.text);
    let e = wait_escrow(&deal, "RELEASED", "250.00").await?;
    assert_eq!(e["payments"][0]["status"], json!("SETTLED"));
    assert_eq!(e["payments"][0]["kind"], json!("RELEASE"));
    assert_eq!(e["balance"], json!("0.00"));
    // The simulator got exactly one payout for it.
    let sim: serde_json::Value =
        reqwest::get(format!("{}/sim/payouts", env.psp_url.clone().unwrap_or_default())).await?.json().await?;
    assert_eq!(sim.as_array().map(Vec::len), Some(1), "{sim}");
    let r =
        deal.client.client.job(&format!("/escrows/{}/client-reject", deal.escrow_id), "late", json!({}), 20).await?;
    assert_eq!(r.code(), "ESCROW_INVALID_TRANSITION");
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejection_refunds_the_unspent_balance_and_a_draft_is_cancelled() -> anyhow::Result<()> {
    let env = Env::with(EnvOptions::default().psp()).await?;
    let deal = deal(&env, "80.00").await?;
    deal.deposit("d", "80.00").await?;
    let r = deal
        .client
        .client
        .job(&format!("/escrows/{}/client-reject", deal.escrow_id), "no", json!({"note": "not delivered"}), 20)
        .await?;
    assert_eq!(r.body.pointer("/result/status"), Some(&json!("REFUNDED")), "{}", r.text);
    let e = wait_escrow(&deal, "REFUNDED", "80.00").await?;
    assert_eq!(e["payments"][0]["kind"], json!("REFUND"));
    assert_eq!(e["payments"][0]["status"], json!("SETTLED"));
    let draft = e2e::scenario::deal(&env, "10.00").await;
    // A second deal with the same usernames fails; make one by hand.
    assert!(draft.is_err());
    let c = person(&env, "c2", "sender").await?;
    let p = person(&env, "p2", "beneficiary").await?;
    let e = c.client.post("/escrows", json!({"client_id": c.id, "provider_id": p.id, "amount_total": "10", "currency": "USD", "deadline_at": "2100-01-01T00:00:00Z"})).await?;
    let r = c.client.job(&format!("/escrows/{}/client-reject", e.s("id")), "x", json!({}), 20).await?;
    assert_eq!(r.body.pointer("/result/status"), Some(&json!("CANCELLED")), "{}", r.text);
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_payout_frees_the_balance_and_can_be_paid_again() -> anyhow::Result<()> {
    let env = Env::with(EnvOptions::default().psp().var("PSP_SIM_FAIL_AMOUNTS", "70.00")).await?;
    let deal = deal(&env, "70.00").await?;
    deal.deposit("d", "70.00").await?;
    deal.client.client.job(&format!("/escrows/{}/client-approve", deal.escrow_id), "ok", json!({}), 20).await?;
    // The simulator reports payment.failed: the payment is ERROR and the balance is back.
    let failed = eventually(Duration::from_secs(60), || async {
        let e = deal.escrow().await?;
        Ok((e.body["payments"][0]["status"] == json!("ERROR")).then_some(e.body))
    })
    .await;
    let e = match failed {
        Ok(e) => e,
        Err(err) => anyhow::bail!("{err}: the payment never became ERROR\n{}", env.diagnosis().await),
    };
    assert_eq!(e["balance"], json!("70.00"));
    assert_eq!(e["paid_amount"], json!("0.00"));
    let payment = e["payments"][0]["id"].as_str().unwrap_or("").to_string();
    // Re-drive: admin only.
    assert_eq!(
        deal.client.client.job(&format!("/payments/execute/{payment}"), "mine", json!({}), 0).await?.status,
        403
    );
    // The PSP accepts 70.00 again; the re-drive pays it, once, in full.
    let psp = env.psp_url.clone().unwrap_or_default();
    reqwest::Client::new().post(format!("{psp}/sim/config")).json(&json!({"fail_amounts": []})).send().await?;
    let r = env
        .admin()
        .send(
            reqwest::Client::new()
                .post(format!("{}/payments/execute/{payment}", env.api_url))
                .bearer_auth(&env.admin_key)
                .header("Idempotency-Key", "redrive-1")
                .header("Prefer", "wait=20"),
        )
        .await?;
    assert_eq!(r.s("status"), "succeeded", "{}", r.text);
    // Found by the chaos soak: the same request replayed (a client that lost
    // the answer) gets its first receipt, though the payment is no longer ERROR.
    let replay = env
        .admin()
        .send(
            reqwest::Client::new()
                .post(format!("{}/payments/execute/{payment}", env.api_url))
                .bearer_auth(&env.admin_key)
                .header("Idempotency-Key", "redrive-1"),
        )
        .await?;
    assert_eq!((replay.status, replay.s("job_id")), (200, r.s("job_id")), "{}", replay.text);
    let e = wait_escrow(&deal, "RELEASED", "70.00").await?;
    assert_eq!(e["balance"], json!("0.00"));
    assert_eq!(e["payments"].as_array().map(Vec::len), Some(1), "the same payment, paid again: {e}");
    let p = deal.client.client.get(&format!("/payments/{payment}")).await?;
    assert_eq!(p.s("status"), "SETTLED", "{}", p.text);
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_verified_stored_once_and_never_move_a_payment_backwards() -> anyhow::Result<()> {
    let env =
        Env::with(EnvOptions::default().var("PSP_WEBHOOK_SECRETS", "old-secret-0123456789,new-secret-0123456789"))
            .await?;
    let now = chrono::Utc::now().timestamp();
    let body = json!({"id": "evt-1", "type": "something.new", "data": {}}).to_string();
    let w = |b: &str, id: Option<&str>, secret: Option<&str>, ts: i64| {
        let b = b.to_string();
        let id = id.map(str::to_string);
        let secret = secret.map(str::to_string);
        let env = &env;
        async move { e2e::scenario::webhook(env, &b, id.as_deref(), secret.as_deref(), ts).await }
    };
    let r = w(&body, None, None, now).await?;
    assert_eq!((r.status, r.code().as_str()), (401, "WEBHOOK_SIGNATURE_MISSING"));
    let r = w(&body, None, Some("wrong-secret-0123456789"), now).await?;
    assert_eq!((r.status, r.code().as_str()), (401, "WEBHOOK_SIGNATURE_INVALID"));
    let r = w(&body, None, Some("old-secret-0123456789"), now - 301).await?;
    assert_eq!((r.status, r.code().as_str()), (401, "WEBHOOK_TIMESTAMP_SKEW"));
    let r = w(&body, None, Some("old-secret-0123456789"), now + 301).await?;
    assert_eq!(r.code(), "WEBHOOK_TIMESTAMP_SKEW");
    let r = w("not json", Some("e0"), Some("new-secret-0123456789"), now).await?;
    assert_eq!((r.status, r.code().as_str()), (400, "WEBHOOK_PAYLOAD_INVALID"));
    let r = w("[1,2]", Some("e0"), Some("new-secret-0123456789"), now).await?;
    assert_eq!(r.code(), "WEBHOOK_PAYLOAD_INVALID");
    let r = w(&json!({"type": "x"}).to_string(), None, Some("new-secret-0123456789"), now).await?;
    assert_eq!(r.code(), "WEBHOOK_PAYLOAD_INVALID");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM psp_webhook_events").fetch_one(&env.pool).await?;
    assert_eq!(stored, 0, "nothing is stored for a refused call");
    // Both rotated secrets sign; the event id comes from the body here.
    let r = w(&body, None, Some("old-secret-0123456789"), now).await?;
    assert_eq!((r.status, r.body["duplicate"].clone()), (200, json!(false)), "{}", r.text);
    let r = w(&body, None, Some("new-secret-0123456789"), now).await?;
    assert_eq!((r.status, r.body["duplicate"].clone(), r.s("event_id")), (200, json!(true), "evt-1".to_string()));
    let jobs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = 'psp_webhook'").fetch_one(&env.pool).await?;
    assert_eq!(jobs, 1, "a replay enqueues nothing");
    // A bad timestamp header.
    let http = reqwest::Client::new();
    let r = env
        .anonymous()
        .send(
            http.post(format!("{}/psp/webhook", env.api_url))
                .header("X-PSP-Timestamp", "yesterday")
                .header("X-PSP-Signature", "00")
                .body(body.clone()),
        )
        .await?;
    assert_eq!(r.code(), "WEBHOOK_TIMESTAMP_INVALID");
    env.stop().await
}

/// The `psp_webhook` job of an event, once it ended: its status and result.
async fn event_applied(env: &Env, event_id: &str) -> anyhow::Result<serde_json::Value> {
    eventually(Duration::from_secs(20), || async {
        let row: Option<(String, Option<serde_json::Value>)> = sqlx::query_as(
            "SELECT status, result FROM jobs WHERE kind = 'psp_webhook' AND payload->>'event_id' = $1
               AND status IN ('succeeded', 'failed', 'dead')",
        )
        .bind(event_id)
        .fetch_optional(&env.pool)
        .await?;
        Ok(row.map(|(status, result)| json!({"status": status, "result": result})))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_webhooks_never_undo_a_settlement() -> anyhow::Result<()> {
    let env = Env::with(EnvOptions::default().psp().var("PSP_SIM_WEBHOOK_DELAY_MS", "300000")).await?;
    let deal = deal(&env, "30.00").await?;
    deal.deposit("d", "30.00").await?;
    deal.client.client.job(&format!("/escrows/{}/client-approve", deal.escrow_id), "ok", json!({}), 20).await?;
    let e = eventually(Duration::from_secs(30), || async {
        let e = deal.escrow().await?;
        Ok((e.body["payments"][0]["status"] == json!("SENT")).then_some(e.body))
    })
    .await?;
    let payment = e["payments"][0]["id"].as_str().unwrap_or("").to_string();
    let secret = env.var("PSP_WEBHOOK_SECRETS").unwrap_or("").to_string();
    let now = chrono::Utc::now().timestamp();
    let settled = json!({"id": "s1", "type": "payment.settled", "data": {"payment_id": payment}}).to_string();
    let failed =
        json!({"id": "f1", "type": "payment.failed", "data": {"payment_id": payment, "reason": "late"}}).to_string();
    e2e::scenario::webhook(&env, &settled, None, Some(&secret), now).await?;
    wait_escrow(&deal, "RELEASED", "30.00").await?;
    let r = e2e::scenario::webhook(&env, &failed, None, Some(&secret), now).await?;
    assert_eq!((r.status, r.body["duplicate"].clone()), (200, json!(false)), "{}", r.text);
    // Its job ran, and moved nothing.
    let job = event_applied(&env, "f1").await?;
    assert_eq!(job["status"], json!("succeeded"), "{job}");
    assert_eq!(job["result"]["applied"], json!(false), "the late failure did not move the payment: {job}");
    let p = deal.client.client.get(&format!("/payments/{payment}")).await?;
    assert_eq!(p.s("status"), "SETTLED");
    let e = deal.escrow().await?;
    assert_eq!((e.s("paid_amount").as_str(), e.s("balance").as_str()), ("30.00", "0.00"));
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn funding_succeeded_deposits_once_per_event() -> anyhow::Result<()> {
    let env = Env::start().await?;
    // Room for several deposits: a second credit of one event would show.
    let deal = deal(&env, "100.00").await?;
    let secret = env.var("PSP_WEBHOOK_SECRETS").unwrap_or("").to_string();
    let event = |id: &str| {
        json!({"id": id, "type": "funding.succeeded", "data": {"escrow_id": deal.escrow_id, "amount": "40.00", "currency": "USD"}})
            .to_string()
    };
    let now = chrono::Utc::now().timestamp();
    let first = e2e::scenario::webhook(&env, &event("fund-1"), None, Some(&secret), now).await?;
    assert_eq!(first.body["duplicate"], json!(false), "{}", first.text);
    // The same event again, plainly and under its id header: duplicates.
    for header in [None, Some("fund-1")] {
        let again = e2e::scenario::webhook(&env, &event("fund-1"), header, Some(&secret), now).await?;
        assert_eq!((again.status, again.body["duplicate"].clone()), (200, json!(true)), "{}", again.text);
    }
    assert_eq!(event_applied(&env, "fund-1").await?["status"], json!("succeeded"));
    let e = deal.escrow().await?;
    assert_eq!((e.s("funded_amount").as_str(), e.s("status").as_str()), ("40.00", "DRAFT"), "{}", e.text);
    // Another event is another deposit.
    e2e::scenario::webhook(&env, &event("fund-2"), None, Some(&secret), now).await?;
    assert_eq!(event_applied(&env, "fund-2").await?["status"], json!("succeeded"));
    let e = deal.escrow().await?;
    assert_eq!(e.s("funded_amount"), "80.00", "{}", e.text);
    let deposits: i64 = sqlx::query_scalar("SELECT count(*) FROM escrow_deposits WHERE escrow_id = $1::uuid")
        .bind(&deal.escrow_id)
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(deposits, 2);
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_are_refused_with_an_alert_then_allowed() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let alice = person(&env, "alice", "sender").await?;
    let bob = person(&env, "bob", "beneficiary").await?;
    let carol = person(&env, "carol", "beneficiary").await?;
    let body = |to: &str| json!({"sender_id": alice.id, "receiver_id": to, "amount": "15.00", "currency": "EUR"});
    let r = alice.client.job("/transactions", "t1", body(&bob.id), 20).await?;
    assert_eq!((r.s("status").as_str(), r.code().as_str()), ("failed", "UNAUTHORIZED_TRANSFER"), "{}", r.text);
    let alerts = admin.get("/alerts?type=UNAUTHORIZED_TRANSFER_ATTEMPT").await?;
    assert_eq!(alerts.body["items"].as_array().map(Vec::len), Some(1), "{}", alerts.text);
    assert_eq!(alice.client.get("/alerts").await?.status, 403);
    alice.client.post("/allowlist", json!({"owner_id": alice.id, "recipient_id": bob.id})).await?;
    let r = alice.client.job("/transactions", "t2", body(&bob.id), 20).await?;
    assert_eq!(r.s("status"), "succeeded", "{}", r.text);
    let tx_id = r.body.pointer("/result/id").and_then(|v| v.as_str()).unwrap_or("").to_string();
    assert_eq!(bob.client.get(&format!("/transactions/{tx_id}")).await?.s("amount"), "15.00");
    assert_eq!(carol.client.get(&format!("/transactions/{tx_id}")).await?.status, 404);
    // Certified receivers need no allowlist entry.
    admin.post("/certified", json!({"user_id": carol.id, "level": "BASIC"})).await?;
    let r = alice.client.job("/transactions", "t3", body(&carol.id), 20).await?;
    assert_eq!(r.s("status"), "succeeded");
    // A sender transfers only their own money.
    let r = bob
        .client
        .job(
            "/transactions",
            "t4",
            json!({"sender_id": alice.id, "receiver_id": bob.id, "amount": "1", "currency": "EUR"}),
            20,
        )
        .await?;
    assert_eq!(r.status, 403);
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payee_limits_hold_exactly_and_refuse_beyond() -> anyhow::Result<()> {
    let env = Env::with(EnvOptions::default().psp()).await?;
    let deal = deal(&env, "500.00").await?;
    let c = &deal.client.client;
    let r = c.post("/spend/allowed", json!({"escrow_id": deal.escrow_id, "payee_ref": "shop-1", "label": "Shop", "daily_limit": "50.00", "total_limit": "120.00"})).await?;
    assert_eq!(r.status, 201, "{}", r.text);
    let r =
        c.post("/spend/allowed", json!({"escrow_id": deal.escrow_id, "payee_ref": "shop-1", "label": "Again"})).await?;
    assert_eq!((r.status, r.code().as_str()), (409, "PAYEE_ALREADY_ALLOWED"));
    let r =
        c.post("/spend/allowed", json!({"escrow_id": uuid::Uuid::new_v4(), "payee_ref": "x", "label": "x"})).await?;
    assert_eq!(r.code(), "ESCROW_NOT_FOUND");
    let spend = |key: &'static str, payee: &'static str, amount: &'static str| {
        let c = c.clone();
        let body = json!({"escrow_id": deal.escrow_id, "payee_ref": payee, "amount": amount});
        async move { c.job("/spend", key, body, 20).await }
    };
    let r = spend("s0", "shop-1", "10.00").await?;
    assert_eq!(r.code(), "ESCROW_NOT_ACTIVE", "{}", r.text);
    deal.deposit("d", "500.00").await?;
    assert_eq!(spend("s1", "nobody", "1.00").await?.code(), "PAYEE_NOT_ALLOWED");
    assert_eq!(spend("s2", "shop-1", "30.00").await?.s("status"), "succeeded");
    assert_eq!(spend("s3", "shop-1", "20.01").await?.code(), "DAILY_LIMIT_REACHED");
    let r = spend("s4", "shop-1", "20.00").await?;
    assert_eq!(r.s("status"), "succeeded", "reaching the daily limit exactly is allowed: {}", r.text);
    assert_eq!(spend("s5", "shop-1", "0.01").await?.code(), "DAILY_LIMIT_REACHED");
    // Tomorrow (the stored counter is from yesterday): the daily limit is free
    // again, the total limit still counts.
    sqlx::query("UPDATE allowed_payees SET spent_day = spent_day - 1").execute(&env.pool).await?;
    assert_eq!(spend("s6", "shop-1", "50.00").await?.s("status"), "succeeded");
    sqlx::query("UPDATE allowed_payees SET spent_day = spent_day - 1").execute(&env.pool).await?;
    assert_eq!(spend("s7", "shop-1", "20.01").await?.code(), "TOTAL_LIMIT_REACHED");
    assert_eq!(spend("s8", "shop-1", "20.00").await?.s("status"), "succeeded");
    // Balance: 500 - 120 = 380 left; an unlimited payee cannot take more.
    c.post("/spend/allowed", json!({"escrow_id": deal.escrow_id, "payee_ref": "big", "label": "Big"})).await?;
    assert_eq!(spend("s9", "big", "380.01").await?.code(), "INSUFFICIENT_ESCROW_BALANCE");
    assert_eq!(spend("s10", "big", "380.00").await?.s("status"), "succeeded");
    let e = eventually(Duration::from_secs(30), || async {
        let e = deal.escrow().await?;
        Ok((e.s("paid_amount") == "500.00").then_some(e))
    })
    .await?;
    assert_eq!(e.s("balance"), "0.00");
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_parallel_usage_spends_never_overdraw_the_escrow_or_a_payee_limit() -> anyhow::Result<()> {
    let env = Env::with(EnvOptions::default().psp().workers(2)).await?;
    let deal = deal(&env, "100.00").await?;
    deal.deposit("d", "100.00").await?;
    let c = &deal.client.client;
    c.post(
        "/spend/allowed",
        json!({"escrow_id": deal.escrow_id, "payee_ref": "a", "label": "A", "daily_limit": "30.00"}),
    )
    .await?;
    c.post("/spend/allowed", json!({"escrow_id": deal.escrow_id, "payee_ref": "b", "label": "B"})).await?;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let c = c.clone();
        let payee = if i % 2 == 0 { "a" } else { "b" };
        let body = json!({"escrow_id": deal.escrow_id, "payee_ref": payee, "amount": "10.00"});
        tasks.push(tokio::spawn(async move { c.job("/spend", &format!("p{i}"), body, 0).await }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await??.s("job_id"));
    }
    let mut ok_a = 0;
    let mut ok = 0;
    for id in &ids {
        let r = c.finished(id, 60).await?;
        if r.s("status") == "succeeded" {
            ok += 1;
            if r.body.pointer("/result/payee_ref") == Some(&json!("a")) {
                ok_a += 1;
            }
        } else {
            assert!(["DAILY_LIMIT_REACHED", "INSUFFICIENT_ESCROW_BALANCE"].contains(&r.code().as_str()), "{}", r.text);
        }
    }
    assert_eq!(ok_a, 3, "payee a's daily limit of 30.00 allows exactly three spends of 10.00");
    assert_eq!(ok, 10, "the escrow of 100.00 allows exactly ten spends of 10.00");
    let (reserved, funded, spent_a): (String, String, String) = sqlx::query_as(
        "SELECT e.reserved_amount::text, e.funded_amount::text, (SELECT spent_total::text FROM allowed_payees WHERE payee_ref = 'a') FROM escrows e",
    )
    .fetch_one(&env.pool)
    .await?;
    assert_eq!((reserved.as_str(), funded.as_str(), spent_a.as_str()), ("100.00", "100.00", "30.00"));
    let live: String = sqlx::query_scalar(
        "SELECT coalesce(sum(amount), 0)::text FROM payments WHERE status IN ('PENDING', 'SENT', 'SETTLED')",
    )
    .fetch_one(&env.pool)
    .await?;
    assert_eq!(live, "100.00");
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_past_deadline_releases_unless_a_milestone_is_in_review() -> anyhow::Result<()> {
    let env = Env::with(EnvOptions::default().psp().var("ESCROW_DEADLINES_CRON", "*/2 * * * * *")).await?;
    let admin = env.admin();
    let deal = deal(&env, "40.00").await?;
    deal.milestone(1, "40.00", "DOCUMENT", None).await?;
    deal.deposit("d", "40.00").await?;
    // Before the deadline the check changes nothing; only an admin may ask.
    let r = admin.job(&format!("/escrows/{}/check-deadline", deal.escrow_id), "c0", json!({}), 20).await?;
    assert_eq!(r.body.pointer("/result/status"), Some(&json!("FUNDED")), "{}", r.text);
    assert_eq!(
        deal.client
            .client
            .job(&format!("/escrows/{}/check-deadline", deal.escrow_id), "c1", json!({}), 20)
            .await?
            .code(),
        "FORBIDDEN"
    );
    // A document in review holds the release even past the deadline.
    let up =
        deal.provider.client.upload_proof("doc", &deal.escrow_id, 1, "app", b"%PDF-1.4 report".to_vec(), 20).await?;
    assert_eq!(up.body.pointer("/result/status"), Some(&json!("PENDING_REVIEW")), "{}", up.text);
    sqlx::query("UPDATE escrows SET deadline_at = now() - interval '1 minute' WHERE id = $1::uuid")
        .bind(&deal.escrow_id)
        .execute(&env.pool)
        .await?;
    let r = admin.job(&format!("/escrows/{}/check-deadline", deal.escrow_id), "c2", json!({}), 20).await?;
    assert_eq!(r.body.pointer("/result/status"), Some(&json!("FUNDED")), "{}", r.text);
    // Rejected, the milestone waits again: the cron job releases the escrow as if approved.
    let d = deal
        .client
        .client
        .job(&format!("/proofs/{}/decision", up.s("proof_id")), "no", json!({"decision": "reject"}), 20)
        .await?;
    assert_eq!(d.body.pointer("/result/status"), Some(&json!("REJECTED")), "{}", d.text);
    let e = wait_escrow(&deal, "RELEASED", "40.00").await?;
    assert_eq!(e["milestones"][0]["status"], json!("PAID"));
    // Released by the one job the sweep made for this escrow.
    let by_cron: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs c JOIN jobs p ON p.id = c.parent_job_id
          WHERE p.kind = 'escrow_deadlines' AND c.kind = 'escrow_transition' AND c.status = 'succeeded'",
    )
    .fetch_one(&env.pool)
    .await?;
    assert_eq!(by_cron, 1);
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_milestone_whose_payout_failed_is_paid_on_the_redrive() -> anyhow::Result<()> {
    let env = Env::with(EnvOptions::default().psp().var("PSP_SIM_FAIL_AMOUNTS", "25.00")).await?;
    let deal = deal(&env, "25.00").await?;
    deal.milestone(1, "25.00", "DOCUMENT", None).await?;
    deal.deposit("d", "25.00").await?;
    let up = deal
        .provider
        .client
        .upload_proof("doc", &deal.escrow_id, 1, "app", b"%PDF-1.4 delivery note".to_vec(), 20)
        .await?;
    env.admin()
        .job(&format!("/proofs/{}/decision", up.s("proof_id")), "ok", json!({"decision": "approve"}), 20)
        .await?;
    let failed = eventually(Duration::from_secs(60), || async {
        let e = deal.escrow().await?;
        Ok((e.body["payments"][0]["status"] == json!("ERROR")).then_some(e.body))
    })
    .await;
    let e = match failed {
        Ok(e) => e,
        Err(err) => anyhow::bail!("{err}: the payment never became ERROR\n{}", env.diagnosis().await),
    };
    assert_eq!(e["milestones"][0]["status"], json!("APPROVED"), "the milestone waits for a new payout");
    assert_eq!(e["balance"], json!("25.00"), "the failed payout's reservation is released");
    let payment = e["payments"][0]["id"].as_str().unwrap_or("").to_string();
    // The PSP accepts now; the admin re-drives the same payment.
    let psp = env.psp_url.clone().unwrap_or_default();
    reqwest::Client::new().post(format!("{psp}/sim/config")).json(&json!({"fail_amounts": []})).send().await?;
    let r = env
        .admin()
        .send(
            reqwest::Client::new()
                .post(format!("{}/payments/execute/{payment}", env.api_url))
                .bearer_auth(&env.admin_key)
                .header("Idempotency-Key", "redrive-1")
                .header("Prefer", "wait=20"),
        )
        .await?;
    assert_eq!(r.s("status"), "succeeded", "{}", r.text);
    let e = wait_escrow(&deal, "RELEASED", "25.00").await?;
    assert_eq!(
        (e["milestones"][0]["status"].clone(), e["payments"][0]["status"].clone()),
        (json!("PAID"), json!("SETTLED"))
    );
    assert_eq!(e["payments"].as_array().map(Vec::len), Some(1), "the same payment, not a second one");
    // A settled payment cannot be driven again.
    let r = env.admin().job(&format!("/payments/execute/{payment}"), "redrive-2", json!({}), 0).await?;
    assert_eq!((r.status, r.code().as_str()), (409, "PAYMENT_NOT_REDRIVABLE"));
    env.stop().await
}
