//! Rate limits shared by every api replica (issue 16): a key's budget and
//! an address's budget of failed authentications hold across two api
//! processes on one Redis, and while Redis is away each process falls back
//! to budgets of its own, says so, and takes the shared ones up again when
//! Redis is back.

use std::time::Duration;

use e2e::env::eventually;
use e2e::{Client, Env, EnvOptions};

/// Sends `n` requests alternately to each base URL; answers (2xx, 401, 429).
async fn spread(urls: &[String], key: &str, n: usize) -> anyhow::Result<(usize, usize, usize)> {
    let (mut ok, mut unauthorized, mut limited) = (0, 0, 0);
    for i in 0..n {
        let r = Client::new(&urls[i % urls.len()], Some(key)).get("/me").await?;
        match r.status {
            200..=299 => ok += 1,
            401 => unauthorized += 1,
            429 => {
                assert!(r.headers.contains_key("retry-after"), "{}", r.text);
                assert_eq!(r.code(), "RATE_LIMITED");
                limited += 1
            }
            other => anyhow::bail!("unexpected {other}: {}", r.text),
        }
    }
    Ok((ok, unauthorized, limited))
}

fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_budget_and_an_addresss_budget_hold_across_two_api_replicas() -> anyhow::Result<()> {
    let mut env = Env::with(
        EnvOptions::default().workers(0).var("RATE_LIMIT_PER_KEY", "10/m").var("AUTH_FAILURES_PER_ADDR", "10/m"),
    )
    .await?;
    let second = env.start_api("api2").await?;
    let urls = [env.api_url.clone(), second];
    // 40 requests with one valid key, half to each replica: the key's 10 a
    // minute, not 10 per replica.
    let (ok, _, limited) = spread(&urls, &env.admin_key, 40).await?;
    assert!((10..=11).contains(&ok), "{ok} answered, one budget of 10 across both replicas");
    assert_eq!(ok + limited, 40);
    // 40 bad keys from one address, half to each: 10 failures looked up,
    // the rest refused before any lookup.
    let mut failures = 0;
    let mut throttled = 0;
    for i in 0..40 {
        let key = format!("kb_guess_{i}_{}", uuid::Uuid::new_v4().simple());
        let (_, unauthorized, limited) = spread(&urls[i % 2..=i % 2], &key, 1).await?;
        failures += unauthorized;
        throttled += limited;
    }
    assert!((10..=11).contains(&failures), "{failures} failed lookups, one budget of 10 across both replicas");
    assert_eq!(failures + throttled, 40);
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_away_each_replica_limits_on_its_own_and_says_so_then_shares_again() -> anyhow::Result<()> {
    let mut env = Env::with(EnvOptions::default().workers(0).private_redis().var("RATE_LIMIT_PER_KEY", "5/m")).await?;
    let metrics = env.api_metrics().await?;
    assert_eq!(gauge(&metrics, "kobatela_rate_limits_shared"), Some(1.0), "shared at start");
    env.redis.as_mut().expect("private redis").kill().await?;
    // The api keeps answering: its own budget of 5 a minute for the key.
    let urls = [env.api_url.clone()];
    let (ok, _, limited) = spread(&urls, &env.admin_key, 8).await?;
    assert_eq!((ok, limited), (5, 3), "limited on its own while Redis is away");
    let metrics = env.api_metrics().await?;
    assert_eq!(gauge(&metrics, "kobatela_rate_limits_shared"), Some(0.0));
    assert!(gauge(&metrics, "kobatela_rate_limit_fallback_total").unwrap_or(0.0) >= 8.0, "{metrics}");
    let log = std::fs::read_to_string(env.log_path("api"))?;
    assert_eq!(log.matches("rate limits cannot reach Redis").count(), 1, "said once, not per request");
    // Redis back: the shared budgets again (a fresh one: Redis lost them).
    env.redis.as_mut().expect("private redis").revive().await?;
    let back = eventually(Duration::from_secs(10), || async {
        let (ok, _, _) = spread(&urls, &env.admin_key, 1).await?;
        let metrics = env.api_metrics().await?;
        Ok((ok == 1 && gauge(&metrics, "kobatela_rate_limits_shared") == Some(1.0)).then_some(()))
    })
    .await;
    anyhow::ensure!(back.is_ok(), "the limits never became shared again");
    let log = std::fs::read_to_string(env.log_path("api"))?;
    assert!(log.contains("rate limits are shared again"));
    env.stop().await
}

/// `INFO commandstats`' call count of one command (0 when never called).
fn calls(info: &str, command: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:")))
        .and_then(|rest| rest.split(',').find_map(|kv| kv.strip_prefix("calls=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_key_costs_one_redis_round_trip_for_both_budgets() -> anyhow::Result<()> {
    let env = Env::with(EnvOptions::default().workers(0).private_redis()).await?;
    let redis = env.redis.as_ref().expect("private redis");
    // Warm: the script is loaded once.
    spread(std::slice::from_ref(&env.api_url), &env.admin_key, 1).await?;
    redis.query::<()>(redis::cmd("CONFIG").arg("RESETSTAT")).await?;
    let (ok, _, _) = spread(std::slice::from_ref(&env.api_url), &env.admin_key, 20).await?;
    assert_eq!(ok, 20);
    let info: String = redis.query(redis::cmd("INFO").arg("commandstats")).await?;
    let scripts = calls(&info, "evalsha") + calls(&info, "eval");
    assert_eq!(scripts, 20, "one script per request, nothing to settle for a valid key:\n{info}");
    env.stop().await
}
