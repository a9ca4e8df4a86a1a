//! Fail fast while Postgres is away (issue #15, item 6), on a Postgres of
//! the test's own that it stops and starts: requests that need Postgres
//! answer `503 UNAVAILABLE` with `Retry-After` within a second or so
//! (before: each waited the pool's whole 10 s acquire timeout), nothing
//! hangs, and once Postgres is back the api serves again and every receipt
//! given before the stop ends exactly once.

use std::time::{Duration, Instant};

use e2e::env::eventually;
use e2e::scenario::shop;
use e2e::{Env, EnvOptions, Reply};

fn unavailable_at_once(what: &str, r: &Reply, took: Duration) {
    assert_eq!((r.status, r.code().as_str()), (503, "UNAVAILABLE"), "{what}: {}", r.text);
    assert!(r.is_problem(), "{what}: {}", r.text);
    let retry = r.headers.get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    assert!(retry.is_some_and(|s| s >= 1), "{what}: Retry-After {retry:?}");
    assert!(took < Duration::from_secs(2), "{what} took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgres_is_stopped_requests_answer_503_at_once_and_every_earlier_receipt_ends_once_after()
-> anyhow::Result<()> {
    let mut env = Env::with(EnvOptions::default().private_postgres().workers(1)).await?;
    let shop = shop(&env, "1000.00", "USD").await?;
    let buyer = shop.beneficiary.client.clone();
    let mandate = format!("/mandates/{}", shop.mandate_id);
    // Receipts given just before the stop: most have not run yet.
    let mut receipts = Vec::new();
    for i in 0..20 {
        let r = buyer.job("/spend/purchases", &format!("before-{i}"), shop.purchase_body("1.00", "USD"), 0).await?;
        assert_eq!(r.status, 202, "{}", r.text);
        receipts.push(r.s("job_id"));
    }
    let postgres = env.postgres.as_mut().ok_or_else(|| anyhow::anyhow!("no private Postgres"))?;
    postgres.stop().await?;
    let stopped = Instant::now();

    // Job POSTs and reads, from the first moment: each a 503 within 2 s
    // (a client timeout of 5 s: nothing hangs).
    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        let started = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            buyer.job("/spend/purchases", &format!("during-{i}"), shop.purchase_body("1.00", "USD"), 0),
        )
        .await??;
        let took = started.elapsed();
        unavailable_at_once("a purchase", &r, took);
        slowest = slowest.max(took);
        let started = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(5), buyer.get(&mandate)).await??;
        let took = started.elapsed();
        unavailable_at_once("a read", &r, took);
        slowest = slowest.max(took);
    }
    let r = env.admin().job("/mandates/cleanup", "during-cleanup", serde_json::json!({}), 0).await?;
    unavailable_at_once("another job", &r, Duration::ZERO);
    let ready = env.anonymous().get("/ready").await?;
    assert_eq!((ready.status, ready.s("postgres").as_str()), (503, "down"), "{}", ready.text);
    assert!(ready.headers.get("retry-after").is_some(), "Retry-After on /ready's 503 too");
    println!("Postgres away {:?}: the slowest answer took {slowest:?}", stopped.elapsed());

    let postgres = env.postgres.as_mut().ok_or_else(|| anyhow::anyhow!("no private Postgres"))?;
    postgres.start().await?;
    // The api serves again on its own.
    eventually(Duration::from_secs(20), || async { Ok((buyer.get(&mandate).await?.status == 200).then_some(())) })
        .await?;
    // Every receipt given before the stop ends, exactly once.
    eventually(Duration::from_secs(60), || async {
        let open: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')")
            .fetch_one(&env.pool)
            .await?;
        Ok((open == 0).then_some(()))
    })
    .await?;
    let ids: Vec<uuid::Uuid> = receipts.iter().map(|s| s.parse()).collect::<Result<_, _>>()?;
    let succeeded: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE id = ANY($1) AND status = 'succeeded'")
        .bind(&ids)
        .fetch_one(&env.pool)
        .await?;
    let (purchases, distinct_jobs): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT job_id) FROM purchases WHERE job_id = ANY($1)")
            .bind(&ids)
            .fetch_one(&env.pool)
            .await?;
    let spent: String = sqlx::query_scalar("SELECT spent_amount::text FROM mandates WHERE id = $1::uuid")
        .bind(&shop.mandate_id)
        .fetch_one(&env.pool)
        .await?;
    assert_eq!((succeeded, purchases, distinct_jobs), (20, 20, 20), "each earlier receipt ran once");
    assert_eq!(spent, "20.00", "the mandate paid once per purchase, nothing for the refused ones");
    let refused_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE idempotency_key LIKE 'during-%'")
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(refused_rows, 0, "a 503 wrote no job");
    env.stop().await
}
