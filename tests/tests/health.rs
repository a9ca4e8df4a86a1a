//! Health, readiness and metrics.

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
