//! The money holes found from outside (issue 15), with the real PSP
//! simulator: a funding in another currency credits nothing, a PSP that pays
//! a drive it reported failed is noticed (or its payout adopted, never paid
//! twice), and the PSP's answers are classified as a PSP means them. Each
//! test asserts the money and the rows, not only the statuses.

use std::time::Duration;

use e2e::env::eventually;
use e2e::scenario::{deal, person, webhook};
use e2e::{Env, EnvOptions};
use serde_json::{Value, json};

async fn sim(env: &Env, path: &str, body: Value) -> anyhow::Result<Value> {
    let psp = env.psp_url.clone().unwrap_or_default();
    Ok(reqwest::Client::new().post(format!("{psp}{path}")).json(&body).send().await?.json().await?)
}

async fn sim_get(env: &Env, path: &str) -> anyhow::Result<(u16, Value)> {
    let psp = env.psp_url.clone().unwrap_or_default();
    let r = reqwest::get(format!("{psp}{path}")).await?;
    Ok((r.status().as_u16(), r.json().await.unwrap_or(Value::Null)))
}

async fn alerts(env: &Env, kind: &str) -> anyhow::Result<Vec<Value>> {
    let r = env.admin().get(&format!("/alerts?type={kind}&limit=500")).await?;
    Ok(r.body["items"].as_array().cloned().unwrap_or_default())
}

async fn one(env: &Env, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string())).fetch_one(&env.pool).await?)
}

/// Waits until every `psp_webhook` job has ended; answers their (status, error code).
async fn webhook_jobs(env: &Env, n: usize) -> anyhow::Result<Vec<(String, String)>> {
    eventually(Duration::from_secs(30), || async {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT status, coalesce(error->>'code', '') FROM jobs WHERE kind = 'psp_webhook'
               AND status IN ('succeeded', 'failed', 'dead') ORDER BY created_at",
        )
        .fetch_all(&env.pool)
        .await?;
        Ok((rows.len() >= n).then_some(rows))
    })
    .await
}

/// An escrow of `total` in `currency`, from a new client to a new provider.
async fn escrow(env: &Env, name: &str, total: &str, currency: &str) -> anyhow::Result<String> {
    let client = person(env, &format!("{name}-c"), "sender").await?;
    let provider = person(env, &format!("{name}-p"), "beneficiary").await?;
    let e = client
        .client
        .post(
            "/escrows",
            json!({"client_id": client.id, "provider_id": provider.id, "amount_total": total,
                                 "currency": currency, "deadline_at": "2100-01-01T00:00:00Z"}),
        )
        .await?;
    anyhow::ensure!(e.status == 201, "escrow: {}", e.text);
    Ok(e.s("id"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_funding_in_another_currency_credits_nothing_and_raises_an_alert() -> anyhow::Result<()> {
    let env = Env::with(EnvOptions::default().psp()).await?;
    let usd = escrow(&env, "u", "10000.00", "USD").await?;
    let xof = escrow(&env, "x", "100000", "XOF").await?;
    // psp-sim's own funding endpoint, as a sender's payment would reach it.
    let taken = sim(&env, "/fundings", json!({"escrow_id": usd, "amount": "5000", "currency": "XOF"})).await?;
    assert_eq!(taken["currency"], "XOF", "{taken}");
    // Hand-signed events, as the issue sent them.
    let now = chrono::Utc::now().timestamp();
    let events = [
        json!({"id": "eur", "type": "funding.succeeded", "data": {"escrow_id": usd, "amount": "40", "currency": "EUR"}}),
        json!({"id": "usd", "type": "funding.succeeded", "data": {"escrow_id": xof, "amount": "100", "currency": "USD"}}),
        json!({"id": "zzz", "type": "funding.succeeded", "data": {"escrow_id": usd, "amount": "10.00", "currency": "ZZZ"}}),
        json!({"id": "none", "type": "funding.succeeded", "data": {"escrow_id": usd, "amount": "7.00"}}),
    ];
    for event in &events {
        let r = webhook(&env, &event.to_string(), None, Some(&env.webhook_secret), now).await?;
        assert_eq!(r.status, 200, "acknowledged at once: {}", r.text);
    }
    let jobs = webhook_jobs(&env, 5).await?;
    assert_eq!(jobs.len(), 5);
    assert!(jobs.iter().all(|(st, code)| st == "failed" && code == "CURRENCY_MISMATCH"), "{jobs:?}");
    for id in [&usd, &xof] {
        let funded: String = sqlx::query_scalar("SELECT funded_amount::text FROM escrows WHERE id = $1::uuid")
            .bind(id)
            .fetch_one(&env.pool)
            .await?;
        assert_eq!(funded, "0.00", "nothing credited");
    }
    assert_eq!(one(&env, "SELECT count(*) FROM escrow_deposits").await?, 0);
    let refused = alerts(&env, "PSP_FUNDING_REFUSED").await?;
    assert_eq!(refused.len(), 5, "{refused:?}");
    let sim_one = refused.iter().find(|a| a["payload"]["currency"] == "XOF").expect("psp-sim's funding alerted");
    assert_eq!(sim_one["payload"]["escrow"]["currency"], "USD");
    assert_eq!(sim_one["payload"]["amount"], "5000");
    env.stop().await
}

/// (payment id, escrow) of a 70.00 release the simulator failed (ERROR).
async fn failed_release(env: &Env) -> anyhow::Result<(String, e2e::scenario::Deal)> {
    let deal = deal(env, "70.00").await?;
    deal.deposit("d", "70.00").await?;
    deal.client.client.job(&format!("/escrows/{}/client-approve", deal.escrow_id), "ok", json!({}), 20).await?;
    let payment = eventually(Duration::from_secs(60), || async {
        let e = deal.escrow().await?;
        Ok((e.body["payments"][0]["status"] == json!("ERROR"))
            .then(|| e.s("payments"))
            .map(|_| e.body["payments"][0]["id"].as_str().unwrap_or_default().to_string()))
    })
    .await?;
    Ok((payment, deal))
}

async fn redrive(env: &Env, payment: &str, key: &str) -> anyhow::Result<e2e::Reply> {
    env.admin().job(&format!("/payments/execute/{payment}"), key, json!({}), 20).await
}

async fn escrow_money(deal: &e2e::scenario::Deal) -> anyhow::Result<(String, String, String)> {
    let e = deal.escrow().await?;
    Ok((e.s("status"), e.s("paid_amount"), e.s("balance")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_psp_that_pays_a_failed_drive_after_a_paid_redrive_is_alerted_and_reconciliation_reports_it()
-> anyhow::Result<()> {
    let env = Env::with(EnvOptions::default().psp().var("PSP_SIM_FAIL_AMOUNTS", "70.00")).await?;
    let (payment, deal) = failed_release(&env).await?;
    sim(&env, "/sim/config", json!({"fail_amounts": []})).await?;
    let r = redrive(&env, &payment, "redrive-1").await?;
    assert_eq!(r.s("status"), "succeeded", "{}", r.text);
    let paid = eventually(Duration::from_secs(30), || async {
        let m = escrow_money(&deal).await?;
        Ok((m.0 == "RELEASED" && m.1 == "70.00").then_some(m))
    })
    .await?;
    assert_eq!(paid.2, "0.00");
    // The PSP now pays the first drive too, and says so.
    let late = sim(&env, &format!("/sim/payouts/{payment}/outcome"), json!({"outcome": "settled"})).await?;
    assert_eq!(late["delivered"], true, "{late}");
    let double = eventually(Duration::from_secs(30), || async {
        let a = alerts(&env, "PSP_DOUBLE_PAYOUT").await?;
        Ok((!a.is_empty()).then_some(a))
    })
    .await?;
    assert_eq!(double.len(), 1, "{double:?}");
    assert_eq!(double[0]["payload"]["other_drive"]["idempotency_key"], payment.as_str());
    assert_eq!(double[0]["payload"]["current_drive"]["idempotency_key"], format!("{payment}-r1"));
    assert_eq!(escrow_money(&deal).await?, paid, "nothing moved: counted once");
    let p = env.admin().get(&format!("/payments/{payment}")).await?;
    assert_eq!(p.s("status"), "SETTLED");
    // Reconciliation reads the PSP's log and reports the payment paid twice.
    let run = env.admin().get("/ops/invariants?run=1").await?;
    let recon = run.body["invariants"]
        .as_array()
        .and_then(|l| l.iter().find(|i| i["name"] == "psp_reconciliation").cloned())
        .unwrap_or_default();
    assert_eq!(recon["violations"], 1, "{recon}");
    assert_eq!(recon["sample"][0]["problem"], "payment with more than one payout the PSP did not fail", "{recon}");
    assert_eq!(recon["sample"][0]["payment_id"], payment.as_str());
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_adopts_the_drive_the_psp_paid_after_reporting_it_failed_and_pays_nothing_twice() -> anyhow::Result<()>
{
    let env = Env::with(EnvOptions::default().psp().var("PSP_SIM_FAIL_AMOUNTS", "70.00")).await?;
    let (payment, deal) = failed_release(&env).await?;
    // The PSP paid the first drive after all; its event is lost.
    sim(&env, &format!("/sim/payouts/{payment}/outcome"), json!({"outcome": "settled", "notify": false})).await?;
    let r = redrive(&env, &payment, "redrive-1").await?;
    assert_eq!(r.s("status"), "succeeded", "{}", r.text);
    assert_eq!(r.body.pointer("/result/status"), Some(&json!("SETTLED")), "{}", r.text);
    let first: (u16, Value) = sim_get(&env, &format!("/payouts/{payment}")).await?;
    assert_eq!(r.body.pointer("/result/psp_ref"), Some(&first.1["psp_ref"]), "the first drive's payout");
    let (status, _) = sim_get(&env, &format!("/payouts/{payment}-r1")).await?;
    assert_eq!(status, 404, "the re-drive never reached the PSP");
    assert_eq!(escrow_money(&deal).await?, ("RELEASED".into(), "70.00".into(), "0.00".into()));
    let run = env.admin().get("/ops/invariants?run=1").await?;
    let total: i64 = run.body["invariants"]
        .as_array()
        .map(|l| l.iter().filter_map(|i| i["violations"].as_i64()).sum())
        .unwrap_or(-1);
    assert_eq!(total, 0, "{}", run.text);
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psp_answers_that_decide_nothing_keep_the_payment_pending_and_reserved_until_the_psp_answers()
-> anyhow::Result<()> {
    let env = Env::with(
        EnvOptions::default()
            .psp()
            .var("PSP_SIM_STATUS_AMOUNTS", "11.00=409,12.00=401,13.00=503,14.00=422")
            .var("JOB_MAX_ATTEMPTS", "20"),
    )
    .await?;
    let deal = deal(&env, "100.00").await?;
    deal.deposit("d", "100.00").await?;
    let c = &deal.client.client;
    let allowed =
        c.post("/spend/allowed", json!({"escrow_id": deal.escrow_id, "payee_ref": "shop", "label": "Shop"})).await?;
    assert_eq!(allowed.status, 201, "{}", allowed.text);
    let escrow_id = deal.escrow_id.clone();
    let spend = |amount: &'static str| {
        let body = json!({"escrow_id": escrow_id, "payee_ref": "shop", "amount": amount});
        async move {
            let r = c.job("/spend", &format!("s{amount}"), body, 20).await?;
            anyhow::ensure!(r.s("status") == "succeeded", "{}", r.text);
            anyhow::Ok(())
        }
    };
    for amount in ["11.00", "12.00", "13.00"] {
        spend(amount).await?;
    }
    // Each undecided answer is retried: the payout job goes back to queued
    // with its attempts counted, the payment stays PENDING and reserved.
    type Row = (String, String, i32, String, String);
    let payouts = || async {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT p.amount::text, p.status, j.attempts, j.status, coalesce(j.last_error, '')
               FROM payments p JOIN jobs j ON j.kind = 'payout' AND j.payload->>'payment_id' = p.id::text
              ORDER BY p.amount",
        )
        .fetch_all(&env.pool)
        .await?;
        anyhow::Ok(rows)
    };
    let rows = eventually(Duration::from_secs(60), || async {
        let rows = payouts().await?;
        Ok((rows.len() == 3 && rows.iter().all(|r| r.2 >= 2)).then_some(rows))
    })
    .await?;
    for (row, status) in rows.iter().zip(["409", "401", "503"]) {
        assert_eq!(row.1, "PENDING", "{row:?}");
        assert!(["queued", "running"].contains(&row.3.as_str()), "retrying, not ended: {row:?}");
        assert!(row.4.contains(status), "{row:?}");
    }
    assert_eq!(deal.escrow().await?.s("balance"), "64.00", "11 + 12 + 13 stay reserved");
    // One alert for the credentials, however many tries met them.
    assert_eq!(alerts(&env, "PSP_AUTH_FAILED").await?.len(), 1);
    // A 422 is a refusal: ERROR at once, its reservation released.
    spend("14.00").await?;
    let refused = eventually(Duration::from_secs(30), || async {
        let rows = payouts().await?;
        Ok(rows.into_iter().find(|r| r.0 == "14.00" && r.1 == "ERROR"))
    })
    .await?;
    assert_eq!((refused.2, refused.3.as_str()), (1, "failed"), "{refused:?}");
    assert_eq!(deal.escrow().await?.s("balance"), "64.00", "14.00 released");
    // The PSP answers again (the key fixed, the incident over): they are paid.
    sim(&env, "/sim/config", json!({"status_amounts": {}})).await?;
    let settled = eventually(Duration::from_secs(90), || async {
        let n = one(&env, "SELECT count(*) FROM payments WHERE status = 'SETTLED'").await?;
        Ok((n == 3).then_some(n))
    })
    .await;
    if let Err(e) = settled {
        anyhow::bail!("{e}: the payouts were not paid once the PSP answered\n{}", env.diagnosis().await);
    }
    let e = deal.escrow().await?;
    assert_eq!((e.s("paid_amount").as_str(), e.s("balance").as_str()), ("36.00", "64.00"), "{}", e.text);
    assert_eq!(one(&env, "SELECT count(*) FROM psp_health WHERE auth_failing_since IS NOT NULL").await?, 0);
    let paid_once: Vec<Value> = sim_get(&env, "/sim/payouts").await?.1.as_array().cloned().unwrap_or_default();
    assert_eq!(paid_once.iter().filter(|p| p["status"] == "accepted").count(), 3, "{paid_once:?}");
    env.stop().await
}
