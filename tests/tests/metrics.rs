//! The api's metrics on its ops listener (`METRICS_ADDR`): sampled gauges
//! that follow their counts down to 0 (a dead job retried and succeeded, a
//! queue drained, consumers back), never served on the public port.

use std::time::Duration;

use e2e::env::eventually;
use e2e::prom::sample;
use e2e::scenario::shop;
use e2e::{Env, EnvOptions};
use serde_json::json;
use shared::telemetry::{Exporter, METRICS, MetricType};

/// Waits until the api's `/metrics` shows `want` for the series; the last
/// text seen is in the error.
async fn until(env: &Env, name: &str, labels: &[(&str, &str)], want: f64) -> anyhow::Result<()> {
    let found = eventually(Duration::from_secs(20), || async {
        Ok((sample(&env.api_metrics().await?, name, labels) == Some(want)).then_some(()))
    })
    .await;
    if let Err(e) = found {
        let seen = env.api_metrics().await.unwrap_or_default();
        let lines: Vec<&str> = seen.lines().filter(|l| l.starts_with(name)).collect();
        anyhow::bail!("{name}{labels:?} never {want}: {e}\n{}", lines.join("\n"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_job_gauge_returns_to_zero_once_the_job_is_retried_and_succeeds() -> anyhow::Result<()> {
    let mut env = Env::with(EnvOptions::default().workers(0).psp().var("JOB_MAX_ATTEMPTS", "2")).await?;
    let admin = env.admin();
    // Not on the public port.
    assert_eq!(env.anonymous().get("/metrics").await?.status, 404);
    // A worker whose purchase rule panics: the purchase ends dead.
    env.start_worker_with("w0", &[("KOBATELA_FAILPOINTS", "rule.purchase=panic")]).await?;
    let shop = shop(&env, "100.00", "USD").await?;
    let r = shop.beneficiary.client.job("/spend/purchases", "m1", shop.purchase_body("5.00", "USD"), 0).await?;
    let id = r.s("job_id");
    eventually(Duration::from_secs(30), || async {
        Ok((admin.receipt(&id, 0).await?.s("status") == "dead").then_some(()))
    })
    .await?;
    let dead = [("kind", "purchase"), ("status", "dead")];
    until(&env, "kobatela_jobs", &dead, 1.0).await?;
    until(&env, "kobatela_queue_consumers_alive", &[("kind", "purchase")], 1.0).await?;
    // A kind with nothing ever queued has its live consumer too (Redis 7.0's
    // XINFO CONSUMERS does not see a consumer whose reads found nothing).
    until(&env, "kobatela_queue_consumers_alive", &[("kind", "transfer")], 1.0).await?;
    // The same numbers on /ops/queues, for support and admin.
    let queues = admin.get("/ops/queues").await?;
    assert_eq!(queues.status, 200, "{}", queues.text);
    let items = queues.body["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), shared::jobs::JobKind::ALL.len(), "{}", queues.text);
    let purchase = items.iter().find(|q| q["kind"] == "purchase").cloned().unwrap_or_default();
    assert_eq!((purchase["dead"].as_i64(), purchase["queued"].as_i64()), (Some(1), Some(0)), "{purchase}");
    assert!(purchase["consumers"][0]["idle_ms"].is_u64(), "{purchase}");
    assert_eq!(shop.beneficiary.client.get("/ops/queues").await?.status, 403);

    // The worker goes away: no live purchase consumer.
    env.stop_worker("w0").await?;
    until(&env, "kobatela_queue_consumers_alive", &[("kind", "purchase")], 0.0).await?;
    until(&env, "kobatela_queue_consumers_alive", &[("kind", "transfer")], 0.0).await?;
    // Retried while no worker runs: no longer dead, queued and ageing.
    let retried = admin.post(&format!("/jobs/{id}/retry"), json!({})).await?;
    assert_eq!(retried.s("status"), "queued", "{}", retried.text);
    until(&env, "kobatela_jobs", &dead, 0.0).await?;
    until(&env, "kobatela_jobs", &[("kind", "purchase"), ("status", "queued")], 1.0).await?;
    eventually(Duration::from_secs(20), || async {
        let age = sample(&env.api_metrics().await?, "kobatela_queue_oldest_queued_seconds", &[("kind", "purchase")]);
        Ok(age.is_some_and(|a| a >= 2.0).then_some(()))
    })
    .await?;
    // A healthy worker takes it: it succeeds, and every gauge is back to 0
    // (a series at 0, not a missing one).
    env.start_worker("w1").await?;
    let done = admin.finished(&id, 30).await?;
    assert_eq!(done.s("status"), "succeeded", "{}", done.text);
    until(&env, "kobatela_jobs", &[("kind", "purchase"), ("status", "queued")], 0.0).await?;
    until(&env, "kobatela_queue_oldest_queued_seconds", &[("kind", "purchase")], 0.0).await?;
    until(&env, "kobatela_jobs", &dead, 0.0).await?;
    until(&env, "kobatela_queue_consumers_alive", &[("kind", "purchase")], 1.0).await?;

    // The last invariants run is exported per invariant (0 here).
    let run = admin.get("/ops/invariants?run=1").await?;
    assert_eq!(run.status, 200, "{}", run.text);
    until(&env, "kobatela_invariant_violations", &[("invariant", "mandate_spent")], 0.0).await?;
    // Every gauge the api's list says it exports is there, and its
    // histograms have buckets.
    let text = env.api_metrics().await?;
    for metric in METRICS.iter().filter(|m| m.exporter == Exporter::Api && m.kind == MetricType::Gauge) {
        assert!(
            text.contains(&format!("\n{}", metric.name)),
            "{} missing from the api's /metrics:\n{text}",
            metric.name
        );
    }
    assert!(text.contains("kobatela_http_request_seconds_bucket{"), "{text}");
    let worker = env.worker_metrics("w1").await?;
    assert!(worker.contains("kobatela_job_seconds_bucket{"), "the worker's job latency is a histogram:\n{worker}");
    env.stop().await
}
