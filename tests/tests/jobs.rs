//! The job contract end to end: idempotency, receipts, Redis losing
//! everything, a worker killed mid-run, cron ticks across replicas, dead
//! jobs and their retry.

use std::time::Duration;

use e2e::env::eventually;
use e2e::scenario::{person, shop};
use e2e::{Env, EnvOptions};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_return_the_same_receipt_or_refuse_another_body() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let shop = shop(&env, "100.00", "USD").await?;
    let bob = &shop.beneficiary.client;
    let first = bob.job("/spend/purchases", "same-key", shop.purchase_body("10.00", "USD"), 20).await?;
    assert_eq!(first.s("status"), "succeeded", "{}", first.text);
    assert_eq!(
        first.headers.get("location").and_then(|v| v.to_str().ok()),
        Some(format!("/jobs/{}", first.s("job_id")).as_str())
    );
    // Same key, same request (amount spelled differently): same receipt, not applied twice.
    let again = bob.job("/spend/purchases", "same-key", shop.purchase_body("10", "USD"), 0).await?;
    assert_eq!(again.s("job_id"), first.s("job_id"));
    assert_eq!(again.status, 200);
    // Same key, another body: refused, nothing queued.
    let other = bob.job("/spend/purchases", "same-key", shop.purchase_body("11.00", "USD"), 0).await?;
    assert_eq!((other.status, other.code().as_str()), (409, "IDEMPOTENCY_KEY_REUSED"));
    assert!(other.is_problem());
    // No key at all.
    let none = bob.post("/spend/purchases", shop.purchase_body("1.00", "USD")).await?;
    assert_eq!((none.status, none.code().as_str()), (400, "IDEMPOTENCY_KEY_REQUIRED"));
    let too_long = bob.job("/spend/purchases", &"k".repeat(256), shop.purchase_body("1.00", "USD"), 0).await?;
    assert_eq!(too_long.status, 422);
    // Keys are per principal: the admin may use the same key for its own request.
    let admin = env.admin().job("/spend/purchases", "same-key", shop.purchase_body("10.00", "USD"), 20).await?;
    assert_ne!(admin.s("job_id"), first.s("job_id"));
    let m = bob.get(&format!("/mandates/{}", shop.mandate_id)).await?;
    assert_eq!(m.s("spent_amount"), "20.00");
    let jobs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = 'purchase'").fetch_one(&env.pool).await?;
    assert_eq!(jobs, 2);
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_are_visible_to_their_creator_support_and_admin_only() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let shop = shop(&env, "100.00", "USD").await?;
    let r = shop.beneficiary.client.job("/spend/purchases", "k", shop.purchase_body("1.00", "USD"), 20).await?;
    let id = r.s("job_id");
    assert_eq!(shop.beneficiary.client.receipt(&id, 0).await?.status, 200);
    assert_eq!(env.admin().receipt(&id, 0).await?.status, 200);
    let support = person(&env, "sue", "support").await?;
    assert_eq!(support.client.receipt(&id, 0).await?.status, 200);
    let other = shop.sender.client.receipt(&id, 0).await?;
    assert_eq!((other.status, other.code().as_str()), (404, "NOT_FOUND"));
    assert_eq!(env.admin().receipt("not-a-uuid", 0).await?.status, 404);
    assert_eq!(shop.sender.client.get("/jobs?status=dead").await?.status, 403);
    assert_eq!(
        support.client.get("/jobs?status=succeeded&kind=purchase").await?.body["items"].as_array().map(Vec::len),
        Some(1)
    );
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_jobs_accepted_while_no_worker_runs_survive_a_redis_flush() -> anyhow::Result<()> {
    let mut env = Env::with(EnvOptions::default().workers(0)).await?;
    let shop = shop(&env, "100.00", "USD").await?;
    let mut ids = Vec::new();
    for i in 0..20 {
        let r = shop
            .beneficiary
            .client
            .job("/spend/purchases", &format!("k{i}"), shop.purchase_body("1.50", "USD"), 0)
            .await?;
        assert_eq!((r.status, r.s("status").as_str()), (202, "queued"), "{}", r.text);
        ids.push(r.s("job_id"));
    }
    // Everything Redis held for this deployment is gone.
    let deleted = env.flush_redis().await?;
    assert!(deleted > 0, "the pushes left keys in Redis");
    env.start_worker("late").await?;
    for id in &ids {
        let r = shop.beneficiary.client.finished(id, 60).await?;
        assert_eq!(r.s("status"), "succeeded", "{}", r.text);
        assert_eq!(r.body["attempts"], json!(1), "applied once: {}", r.text);
    }
    let (n, spent): (i64, String) =
        sqlx::query_as("SELECT count(*), (SELECT spent_amount::text FROM mandates) FROM purchases")
            .fetch_one(&env.pool)
            .await?;
    assert_eq!((n, spent.as_str()), (20, "30.00"));
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_run_loses_nothing_and_applies_nothing_twice() -> anyhow::Result<()> {
    let mut env = Env::with(EnvOptions::default().workers(2).var("JOB_TIMEOUT_SECS", "3")).await?;
    let shop = shop(&env, "1000.00", "USD").await?;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let client = shop.beneficiary.client.clone();
        let body = shop.purchase_body("1.00", "USD");
        tasks.push(tokio::spawn(async move { client.job("/spend/purchases", &format!("k{i}"), body, 0).await }));
        if i == 60 {
            // Once the workers are busy (purchases are being applied), kill
            // one without warning.
            eventually(Duration::from_secs(20), || async {
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM purchases").fetch_one(&env.pool).await?;
                Ok((n > 0).then_some(()))
            })
            .await?;
        }
    }
    let mut ids = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        ids.push(t.await??.s("job_id"));
        if i == 80 {
            env.kill_worker("w0").await?;
        }
    }
    for id in &ids {
        let r = shop.beneficiary.client.finished(id, 90).await?;
        assert_eq!(r.s("status"), "succeeded", "{}", r.text);
    }
    let (n, distinct_jobs, spent): (i64, i64, String) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT job_id), (SELECT spent_amount::text FROM mandates) FROM purchases",
    )
    .fetch_one(&env.pool)
    .await?;
    assert_eq!((n, distinct_jobs, spent.as_str()), (200, 200, "200.00"));
    env.stop().await
}

/// `(won, lost)` cron ticks of `schedule` a worker counted (its /metrics).
async fn ticks_seen(env: &Env, worker: &str, schedule: &str) -> anyhow::Result<(u64, u64)> {
    let text = env.worker_metrics(worker).await?;
    let count = |outcome: &str| {
        text.lines()
            .filter(|l| l.starts_with("kobatela_cron_ticks_total{"))
            .filter(|l| {
                l.contains(&format!("schedule=\"{schedule}\"")) && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    Ok((count("won"), count("lost")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_replicas_run_each_cron_tick_once() -> anyhow::Result<()> {
    let env = Env::with(EnvOptions::default().workers(2).var("MANDATE_EXPIRY_CRON", "*/2 * * * * *")).await?;
    let shop = shop(&env, "100.00", "USD").await?;
    let admin = env.admin();
    // Five more pairs whose mandates expire in a moment.
    let mut mandates = vec![shop.mandate_id.clone()];
    for i in 0..5 {
        let b = person(&env, &format!("ben{i}"), "beneficiary").await?;
        let m = shop
            .sender
            .client
            .post(
                "/mandates",
                json!({"sender_id": shop.sender.id, "beneficiary_id": b.id, "total_amount": "5",
            "currency": "USD", "expires_at": (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339()}),
            )
            .await?;
        assert_eq!(m.status, 201, "{}", m.text);
        mandates.push(m.s("id"));
    }
    sqlx::query("UPDATE mandates SET expires_at = now() + interval '2 seconds' WHERE id = $1::uuid")
        .bind(&shop.mandate_id)
        .execute(&env.pool)
        .await?;
    eventually(Duration::from_secs(20), || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM mandates WHERE status = 'EXPIRED'").fetch_one(&env.pool).await?;
        Ok((n == 6).then_some(()))
    })
    .await?;
    // Both replicas fire every tick: wait until each has seen four.
    eventually(Duration::from_secs(30), || async {
        let (a, b) = (ticks_seen(&env, "w0", "mandate_expiry").await?, ticks_seen(&env, "w1", "mandate_expiry").await?);
        Ok((a.0 + a.1 >= 4 && b.0 + b.1 >= 4).then_some(()))
    })
    .await?;
    for id in &mandates {
        let audit = admin.get(&format!("/audit?entity=mandate&entity_id={id}&action=MANDATE_EXPIRED")).await?;
        assert_eq!(audit.body["items"].as_array().map(Vec::len), Some(1), "{id}: {}", audit.text);
    }
    // What each replica saw, then what was claimed: read in this order, a
    // claimed tick was seen by its winner.
    let (w0, w1) = (ticks_seen(&env, "w0", "mandate_expiry").await?, ticks_seen(&env, "w1", "mandate_expiry").await?);
    let (ticks, jobs, per_tick_max, claimers): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM cron_ticks WHERE schedule = 'mandate_expiry'),
                (SELECT count(*) FROM jobs WHERE kind = 'mandate_expiry'),
                (SELECT coalesce(max(n), 0) FROM (SELECT count(*) n FROM jobs WHERE kind = 'mandate_expiry' GROUP BY idempotency_key) x),
                (SELECT count(DISTINCT claimed_by) FROM cron_ticks WHERE schedule = 'mandate_expiry')",
    )
    .fetch_one(&env.pool)
    .await?;
    // Every tick ran once: one job per claimed tick, never two. Both
    // replicas fired every tick ((won, lost) each): a tick one of them won,
    // the other lost (but for the last tick or two, which it may not have
    // reached when its metrics were read).
    assert!(ticks >= 4, "ticks ran: {ticks}");
    assert_eq!(jobs, ticks);
    assert_eq!(per_tick_max, 1);
    assert!(w0.0 + w0.1 >= 4 && w1.0 + w1.1 >= 4, "both replicas fired: w0 {w0:?}, w1 {w1:?}");
    let (won, lost) = (w0.0 + w1.0, w0.1 + w1.1);
    assert!(won <= ticks as u64, "no tick was won twice: w0 {w0:?}, w1 {w1:?}, {ticks} claimed");
    assert!(lost + 2 >= won, "each tick won by one replica was lost by the other: w0 {w0:?}, w1 {w1:?}");
    assert!(claimers >= 1);
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infrastructure_failures_end_dead_and_admins_can_retry_them() -> anyhow::Result<()> {
    let env = Env::with(EnvOptions::default().var("JOB_MAX_ATTEMPTS", "2")).await?;
    let shop = shop(&env, "100.00", "USD").await?;
    // A job whose payload this version cannot read: an infrastructure
    // failure (never a business refusal), retried with back-off, then dead.
    let id = uuid::Uuid::now_v7();
    sqlx::query("INSERT INTO jobs (id, kind, payload, actor_user_id, actor_key_id, actor_role, pushed_at) VALUES ($1, 'purchase', '{\"garbage\": true}', $2::uuid, $2::uuid, 'beneficiary', now() - interval '1 hour')")
        .bind(id)
        .bind(&shop.beneficiary.id)
        .execute(&env.pool)
        .await?;
    let admin = env.admin();
    let dead = eventually(Duration::from_secs(30), || async {
        let r = admin.receipt(&id.to_string(), 0).await?;
        Ok((r.s("status") == "dead").then_some(r))
    })
    .await?;
    assert_eq!(dead.body["attempts"], json!(2));
    assert_eq!(dead.code(), "INTERNAL");
    let list = admin.get("/jobs?status=dead").await?;
    assert!(list.text.contains(&id.to_string()));
    let support = person(&env, "sue", "support").await?;
    assert_eq!(support.client.get("/jobs?status=dead&kind=purchase").await?.status, 200);
    assert_eq!(support.client.post(&format!("/jobs/{id}/retry"), json!({})).await?.status, 403);
    let retried = admin.post(&format!("/jobs/{id}/retry"), json!({})).await?;
    assert_eq!(retried.s("status"), "queued", "{}", retried.text);
    // It fails again the same way: dead once more, after fresh attempts.
    eventually(Duration::from_secs(30), || async {
        let r = admin.receipt(&id.to_string(), 0).await?;
        Ok((r.s("status") == "dead").then_some(()))
    })
    .await?;
    // Only a dead job can be retried.
    let ok = shop.buy("fine", "1.00").await?;
    let r = admin.post(&format!("/jobs/{}/retry", ok.s("job_id")), json!({})).await?;
    assert_eq!((r.status, r.code().as_str()), (409, "JOB_NOT_DEAD"));
    env.stop().await
}

/// Transactions of our processes open on this test's database: a worker
/// in the middle of a job's rule (the api's are too short to see).
async fn open_transactions(env: &Env) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND application_name = 'kobatela' AND state = 'idle in transaction'",
    )
    .fetch_one(&env.pool)
    .await?)
}

async fn purchases_succeeded(env: &Env) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = 'purchase' AND status = 'succeeded'")
        .fetch_one(&env.pool)
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_finishes_the_jobs_in_hand_on_sigterm() -> anyhow::Result<()> {
    let mut env = Env::with(EnvOptions::default().workers(0)).await?;
    // Each purchase rule takes half a second (and purchases of one mandate
    // run one after the other), so jobs are in hand when the signal comes.
    env.start_worker_with("w0", &[("KOBATELA_FAILPOINTS", "rule.purchase=sleep:500")]).await?;
    let shop = shop(&env, "1000.00", "USD").await?;
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(
            shop.beneficiary
                .client
                .job("/spend/purchases", &format!("k{i}"), shop.purchase_body("1.00", "USD"), 0)
                .await?
                .s("job_id"),
        );
    }
    // A job is in the middle of its rule: its transaction is open.
    let mid_rule = eventually(Duration::from_secs(20), || async {
        let n = open_transactions(&env).await?;
        Ok((n > 0).then_some(n))
    })
    .await?;
    let before = purchases_succeeded(&env).await?;
    let code = env.stop_worker("w0").await?;
    assert_eq!(code, Some(0), "the worker exits cleanly on SIGTERM");
    // The jobs it was running were finished (committed, acknowledged)
    // before it exited, not dropped.
    let after = purchases_succeeded(&env).await?;
    assert!(after - before >= mid_rule, "{mid_rule} jobs were mid-rule, {} finished after SIGTERM", after - before);
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM purchases").fetch_one(&env.pool).await?;
    assert_eq!(applied, after, "one purchase per succeeded job, none half-applied");
    // Nothing is left half-done: every job is either finished or still queued.
    let running: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'running'").fetch_one(&env.pool).await?;
    assert_eq!(running, 0);
    assert!(after < ids.len() as i64, "jobs were still queued: the worker stopped taking new ones");
    env.start_worker("w1").await?;
    for id in &ids {
        assert_eq!(shop.beneficiary.client.finished(id, 60).await?.s("status"), "succeeded");
    }
    env.stop().await
}
