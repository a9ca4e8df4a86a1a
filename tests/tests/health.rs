//! Health, readiness and metrics.

use std::time::Duration;

use e2e::env::eventually;
use e2e::scenario::shop;
use e2e::{Env, EnvOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_and_metrics_answer() -> anyhow::Result<()> {
    let env = Env::with(EnvOptions::default().workers(1)).await?;
    let anon = env.anonymous();
    let h = anon.get("/health").await?;
    assert_eq!((h.status, h.s("status").as_str()), (200, "ok"));
    let r = anon.get("/ready").await?;
    assert_eq!((r.status, r.s("postgres").as_str(), r.s("redis").as_str()), (200, "ok", "ok"));
    let shop = shop(&env, "100.00", "USD").await?;
    let ok = shop.buy("m1", "1.00").await?;
    assert_eq!(ok.s("status"), "succeeded");
    let _ = shop.beneficiary.client.job("/spend/purchases", "m2", shop.purchase_body("1000.00", "USD"), 20).await?;
    // The api's metrics are on its ops listener (METRICS_ADDR), not the public port.
    assert_eq!(anon.get("/metrics").await?.status, 404);
    let m = env.api_metrics().await?;
    for name in [
        "kobatela_http_requests_total",
        "kobatela_http_request_seconds_bucket{",
        "kobatela_jobs_enqueued_total",
        "kobatela_queue_depth{",
        "kobatela_jobs{",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics:\n{m}");
    }
    // The worker's own metrics: jobs by outcome, job time, serialization retries (when any).
    let worker_metrics = env.worker_metrics("w0").await?;
    for name in [
        "kobatela_jobs_total{kind=\"purchase\",outcome=\"succeeded\"}",
        "kobatela_jobs_total{kind=\"purchase\",outcome=\"failed\"}",
        "kobatela_job_seconds_bucket{",
        "kobatela_consumer_last_poll_seconds{kind=\"purchase\"}",
    ] {
        assert!(worker_metrics.contains(name), "{name} missing from the worker's /metrics:\n{worker_metrics}");
    }
    // The worker's health names every kind's consumer with its last poll.
    let (status, health) = env.worker_health("w0").await?;
    assert_eq!((status, health["status"].as_str(), health["postgres"].as_str()), (200, Some("ok"), Some("ok")));
    let consumers = health["consumers"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(consumers, shared::jobs::JobKind::ALL.len(), "{health}");
    // The API reference: the document and the page that renders it, public.
    let doc = anon.get("/openapi.json").await?;
    assert_eq!((doc.status, doc.s("openapi").as_str()), (200, "3.1.0"), "{}", doc.text);
    assert!(doc.body["paths"]["/spend/purchases"]["post"].is_object());
    let page = anon.get("/docs").await?;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("/openapi.json"), "{}", page.text);
    // Every response carries a request id.
    assert!(h.headers.get("x-request-id").is_some());
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_jobs_all_time_out_says_503_until_jobs_finish_again() -> anyhow::Result<()> {
    // A lease of 2 s: stuck is three leases (6 s) holding jobs with none
    // finished. The first eight purchase runs sleep past the lease (each
    // times out), then the rule runs normally again.
    let mut env =
        Env::with(EnvOptions::default().workers(0).var("JOB_TIMEOUT_SECS", "2").var("JOB_MAX_ATTEMPTS", "20")).await?;
    env.start_worker_with("w0", &[("KOBATELA_FAILPOINTS", "rule.purchase=8*sleep:5000")]).await?;
    let shop = shop(&env, "100.00", "USD").await?;
    let (status, _) = env.worker_health("w0").await?;
    assert_eq!(status, 200, "healthy before any job");
    // Purchases of one mandate run one after the other: the consumer holds
    // jobs the whole time.
    let mut receipts = Vec::new();
    for i in 0..6 {
        let r = shop
            .beneficiary
            .client
            .job("/spend/purchases", &format!("p{i}"), shop.purchase_body("1.00", "USD"), 0)
            .await?;
        assert_eq!(r.status, 202, "{}", r.text);
        receipts.push(r.s("job_id"));
    }
    let stuck = eventually(Duration::from_secs(30), || async {
        let (status, body) = env.worker_health("w0").await?;
        Ok((status == 503).then_some(body))
    })
    .await?;
    let purchase = stuck["consumers"].as_array().and_then(|c| c.iter().find(|c| c["kind"] == "purchase")).cloned();
    let purchase = purchase.ok_or_else(|| anyhow::anyhow!("no purchase consumer in {stuck}"))?;
    assert_eq!(stuck["status"], "unhealthy", "{stuck}");
    assert_eq!(purchase["stuck"], true, "{stuck}");
    assert!(purchase["in_flight"].as_u64().unwrap_or(0) >= 1, "{stuck}");
    assert_eq!(purchase["last_finish_at"], serde_json::Value::Null, "nothing finished: {stuck}");
    assert_eq!(purchase["live"], true, "it polls Redis all the while: {stuck}");
    let done: i64 = sqlx::query_scalar("SELECT count(*) FROM purchases").fetch_one(&env.pool).await?;
    assert_eq!(done, 0, "no purchase ran to its end while it was stuck");
    // The fault heals: jobs finish again, and so does the 503.
    let healthy = eventually(Duration::from_secs(60), || async {
        let (status, body) = env.worker_health("w0").await?;
        Ok((status == 200).then_some(body))
    })
    .await?;
    let purchase = healthy["consumers"].as_array().and_then(|c| c.iter().find(|c| c["kind"] == "purchase")).cloned();
    assert!(purchase.is_some_and(|p| p["last_finish_at"].is_string()), "{healthy}");
    // Every purchase ends, exactly once.
    let admin = env.admin();
    for id in &receipts {
        let r = admin.finished(id, 90).await?;
        assert_eq!(r.s("status"), "succeeded", "{}", r.text);
    }
    let (purchases, spent): (i64, String) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM purchases), (SELECT spent_amount::text FROM mandates WHERE id = $1::uuid)",
    )
    .bind(&shop.mandate_id)
    .fetch_one(&env.pool)
    .await?;
    assert_eq!((purchases, spent.as_str()), (6, "6.00"));
    env.stop().await
}
