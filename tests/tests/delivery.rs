//! Delivery that heals itself (DESIGN.md, job contract item 7), shown on a
//! Redis of each test's own: restarts, outages and flushes while purchases
//! stream in, twenty thousand deliveries and restarts under new and reused
//! names, a worker killed with messages in hand, rules that panic or kill
//! their worker, and Postgres dropping connections under the api.

use std::time::{Duration, Instant};

use e2e::env::eventually;
use e2e::load::{Load, Tally};
use e2e::scenario::{Shop, shop};
use e2e::{Env, EnvOptions};

/// Four clients posting purchases of 1.00, a few hundred a second at most.
fn purchases(shop: &Shop) -> Load {
    Load::start(
        &shop.beneficiary.client,
        "/spend/purchases",
        shop.purchase_body("1.00", "USD"),
        4,
        Duration::from_millis(20),
    )
}

/// Waits (up to `within`) until no purchase job is open, then checks that
/// every accepted job succeeded exactly once: one purchase row per job, as
/// many purchases as accepted jobs, and the mandate spent 1.00 for each.
async fn each_accepted_purchase_applied_once(
    env: &Env,
    shop: &Shop,
    tally: &Tally,
    within: Duration,
) -> anyhow::Result<()> {
    assert!(tally.refused.is_empty(), "every request is accepted, Redis or not: {:?}", tally.refused.first());
    assert!(tally.accepted.len() > 20, "the load ran: {} accepted", tally.accepted.len());
    let started = Instant::now();
    eventually(within, || async {
        let open: i64 =
            sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = 'purchase' AND status IN ('queued', 'running')")
                .fetch_one(&env.pool)
                .await?;
        Ok((open == 0).then_some(()))
    })
    .await?;
    println!("every purchase ended {} ms after the fault was over", started.elapsed().as_millis());
    let ids: Vec<uuid::Uuid> = tally.accepted.iter().map(|s| s.parse()).collect::<Result<_, _>>()?;
    let (succeeded, attempts_max): (i64, Option<i32>) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'succeeded'), max(attempts) FROM jobs WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_one(&env.pool)
    .await?;
    let (purchases, distinct_jobs, of_accepted): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT job_id), count(*) FILTER (WHERE job_id = ANY($1)) FROM purchases",
    )
    .bind(&ids)
    .fetch_one(&env.pool)
    .await?;
    let spent: String = sqlx::query_scalar("SELECT spent_amount::text FROM mandates WHERE id = $1::uuid")
        .bind(&shop.mandate_id)
        .fetch_one(&env.pool)
        .await?;
    let n = ids.len() as i64;
    assert_eq!(succeeded, n, "every accepted job succeeded");
    assert_eq!((purchases, distinct_jobs, of_accepted), (n, n, n), "one purchase per accepted job, no more");
    assert_eq!(spent, format!("{n}.00"), "the mandate paid once per purchase");
    println!("{n} purchases, at most {} attempts per job", attempts_max.unwrap_or(0));
    Ok(())
}

fn fault_env() -> EnvOptions {
    EnvOptions::default().workers(2).private_redis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purchases_flow_on_through_a_redis_restart_of_a_tenth_of_a_second() -> anyhow::Result<()> {
    let mut env = Env::with(fault_env()).await?;
    let shop = shop(&env, "1000000.00", "USD").await?;
    let load = purchases(&shop);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let redis = env.redis.as_mut().ok_or_else(|| anyhow::anyhow!("private redis"))?;
    let away = redis.restart().await?;
    println!("Redis was away {} ms", away.as_millis());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let tally = load.stop().await?;
    each_accepted_purchase_applied_once(&env, &shop, &tally, Duration::from_secs(30)).await?;
    assert!(env.worker_alive("w0") && env.worker_alive("w1"), "no worker was restarted");
    // And the consumers are back: a new purchase runs at once.
    let r = shop.buy("after-restart", "1.00").await?;
    assert_eq!(r.s("status"), "succeeded", "{}", r.text);
    for w in ["w0", "w1"] {
        assert_eq!(env.worker_health(w).await?.0, 200, "{w} healthy again");
    }
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ten_second_redis_outage_loses_nothing_and_health_says_so_meanwhile() -> anyhow::Result<()> {
    let mut env = Env::with(fault_env()).await?;
    let shop = shop(&env, "1000000.00", "USD").await?;
    let load = purchases(&shop);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let down_at = Instant::now();
    env.redis.as_mut().ok_or_else(|| anyhow::anyhow!("private redis"))?.kill().await?;
    // Within three block periods (1 s in tests) every worker says it cannot poll.
    for w in ["w0", "w1"] {
        let (status, body) = eventually(Duration::from_secs(8), || async {
            let (status, body) = env.worker_health(w).await?;
            Ok((status == 503).then_some((status, body)))
        })
        .await?;
        assert_eq!(status, 503);
        assert_eq!(body["status"], "unhealthy", "{body}");
        assert!(body["consumers"].as_array().is_some_and(|c| c.iter().any(|c| c["live"] == false)), "{body}");
    }
    // The api says so too, within a second.
    let asked = Instant::now();
    let ready = env.anonymous().get("/ready").await?;
    assert_eq!((ready.status, ready.s("redis").as_str()), (503, "down"), "{}", ready.text);
    assert!(asked.elapsed() < Duration::from_secs(1), "/ready took {:?}", asked.elapsed());
    let left = Duration::from_secs(10).saturating_sub(down_at.elapsed());
    tokio::time::sleep(left).await;
    env.redis.as_mut().ok_or_else(|| anyhow::anyhow!("private redis"))?.revive().await?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let tally = load.stop().await?;
    each_accepted_purchase_applied_once(&env, &shop, &tally, Duration::from_secs(30)).await?;
    assert!(env.worker_alive("w0") && env.worker_alive("w1"), "no worker was restarted");
    for w in ["w0", "w1"] {
        let (status, _) = eventually(Duration::from_secs(10), || async {
            let (status, body) = env.worker_health(w).await?;
            Ok((status == 200).then_some((status, body)))
        })
        .await?;
        assert_eq!(status, 200);
        let metrics = env.worker_metrics(w).await?;
        assert!(metrics.contains("kobatela_transport_recoveries_total"), "{w} counted its recovery");
    }
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flushall_mid_stream_loses_nothing() -> anyhow::Result<()> {
    let env = Env::with(fault_env()).await?;
    let shop = shop(&env, "1000000.00", "USD").await?;
    let load = purchases(&shop);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    env.redis.as_ref().ok_or_else(|| anyhow::anyhow!("private redis"))?.flushall().await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let tally = load.stop().await?;
    each_accepted_purchase_applied_once(&env, &shop, &tally, Duration::from_secs(30)).await?;
    env.stop().await
}

/// Posts `n` purchases of 1.00 with `clients` concurrent clients; the
/// accepted job ids.
async fn post_purchases(shop: &Shop, tag: &str, n: usize, clients: usize) -> anyhow::Result<Vec<String>> {
    let per_client = n.div_ceil(clients);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = shop.beneficiary.client.clone();
        let body = shop.purchase_body("1.00", "USD");
        let tag = tag.to_string();
        let count = per_client.min(n.saturating_sub(c * per_client));
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(count);
            for i in 0..count {
                let r = client.job("/spend/purchases", &format!("{tag}-{c}-{i}"), body.clone(), 0).await?;
                anyhow::ensure!(r.status == 202, "purchase {tag}-{c}-{i}: {} {}", r.status, r.text);
                ids.push(r.s("job_id"));
            }
            Ok::<_, anyhow::Error>(ids)
        }));
    }
    let mut ids = Vec::with_capacity(n);
    for t in tasks {
        ids.extend(t.await??);
    }
    Ok(ids)
}

/// Waits until every one of `ids` ended and checks they all succeeded.
async fn all_succeed(env: &Env, ids: &[String], within: Duration) -> anyhow::Result<()> {
    let ids: Vec<uuid::Uuid> = ids.iter().map(|s| s.parse()).collect::<Result<_, _>>()?;
    let (succeeded, other): (i64, i64) = eventually(within, || async {
        let (open, succeeded, other): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status IN ('queued', 'running')),
                    count(*) FILTER (WHERE status = 'succeeded'),
                    count(*) FILTER (WHERE status IN ('failed', 'dead'))
               FROM jobs WHERE id = ANY($1)",
        )
        .bind(&ids)
        .fetch_one(&env.pool)
        .await?;
        Ok((open == 0).then_some((succeeded, other)))
    })
    .await?;
    assert_eq!((succeeded, other), (ids.len() as i64, 0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_queue_flows_after_twenty_thousand_deliveries_and_restarts_under_new_and_same_names() -> anyhow::Result<()>
{
    let n: usize = std::env::var("KOBATELA_DELIVERY_VOLUME").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let mut env =
        Env::with(fault_env().workers(1).var("WORKER_CONCURRENCY", "16").var("RATE_LIMIT_PER_KEY", "100000/s")).await?;
    let shop = shop(&env, "1000000.00", "USD").await?;
    let started = Instant::now();
    let ids = post_purchases(&shop, "bulk", n, 16).await?;
    all_succeed(&env, &ids, Duration::from_secs(600)).await?;
    println!("{n} purchases through one worker in {:.1} s", started.elapsed().as_secs_f64());
    let redis = env.redis.as_ref().ok_or_else(|| anyhow::anyhow!("private redis"))?;
    let memory = redis.used_memory().await?;
    let key = format!("{}.purchase", env.prefix);
    let length: u64 = redis.query(redis::cmd("XLEN").arg(&key)).await?;
    println!("Redis used_memory {:.1} MB, purchase stream length {length}", memory as f64 / 1e6);
    assert!(memory < 64 * 1024 * 1024, "Redis holds {memory} bytes after {n} deliveries");
    assert!(length < 100, "acknowledged entries are deleted: {length} left");

    // An ordinary deploy: the worker stops and comes back under a new name.
    assert_eq!(env.stop_worker("w0").await?, Some(0));
    env.start_worker("w0-next").await?;
    let more = post_purchases(&shop, "after-rename", 50, 5).await?;
    all_succeed(&env, &more, Duration::from_secs(30)).await?;

    // And again under the same name, back within two seconds.
    let stopped = Instant::now();
    assert_eq!(env.stop_worker("w0-next").await?, Some(0));
    env.start_worker("w0-next").await?;
    assert!(stopped.elapsed() < Duration::from_secs(2) + Duration::from_millis(1500), "{:?}", stopped.elapsed());
    let again = post_purchases(&shop, "same-name", 50, 5).await?;
    all_succeed(&env, &again, Duration::from_secs(30)).await?;
    let spent: String = sqlx::query_scalar("SELECT spent_amount::text FROM mandates WHERE id = $1::uuid")
        .bind(&shop.mandate_id)
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(spent, format!("{}.00", n + 100));
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_workers_unacknowledged_messages_move_to_the_other_worker() -> anyhow::Result<()> {
    // No relay: only the transport itself can move the killed worker's work.
    let mut env = Env::with(
        EnvOptions::default().workers(0).private_redis().var("RELAY_EVERY_SECS", "0").var("JOB_TIMEOUT_SECS", "3"),
    )
    .await?;
    let shop = shop(&env, "1000000.00", "USD").await?;
    // w0 is slow (each delivery waits 300 ms before it runs), so it always
    // holds a batch of entries in hand.
    env.start_worker_with("w0", &[("KOBATELA_FAILPOINTS", "deliver.purchase=sleep:300")]).await?;
    let ids = post_purchases(&shop, "k", 60, 6).await?;
    // Mid-batch: some purchases done, the rest in w0's hands or still waiting.
    eventually(Duration::from_secs(10), || async {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM purchases").fetch_one(&env.pool).await?;
        Ok((done >= 5).then_some(()))
    })
    .await?;
    env.kill_worker("w0").await?;
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'queued'").fetch_one(&env.pool).await?;
    assert!(left > 0, "the kill came before the batch was done");
    env.start_worker("w1").await?;
    let killed_at = Instant::now();
    all_succeed(&env, &ids, Duration::from_secs(30)).await?;
    println!("the killed worker's work finished {} ms after the kill", killed_at.elapsed().as_millis());
    let metrics = env.worker_metrics("w1").await?;
    let claimed: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("kobatela_transport_claimed_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(claimed >= 1.0, "w1 took over w0's entries with XAUTOCLAIM:\n{metrics}");
    let (purchases, spent): (i64, String) =
        sqlx::query_as("SELECT count(*), (SELECT spent_amount::text FROM mandates) FROM purchases")
            .fetch_one(&env.pool)
            .await?;
    assert_eq!((purchases, spent.as_str()), (60, "60.00"), "nothing lost, nothing doubled");
    env.stop().await
}

/// Issue 16: a worker host that vanishes while its transactions hold row
/// locks left its sessions open on the server (TCP keepalive: two hours),
/// and the other workers waited behind those locks. A frozen worker
/// (SIGSTOP: its connections stay up, it sends nothing, as a cut host)
/// holding a mandate's lock inside a purchase: the server ends its session
/// at the lease (`idle_in_transaction_session_timeout`), the other worker
/// takes the job over and the next purchase on that mandate runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_holding_a_row_lock_releases_it_at_the_lease() -> anyhow::Result<()> {
    let lease = 4;
    let mut env = Env::with(
        EnvOptions::default().workers(0).var("JOB_TIMEOUT_SECS", &lease.to_string()).var("RELAY_EVERY_SECS", "1"),
    )
    .await?;
    let shop = shop(&env, "100.00", "USD").await?;
    // w0 holds its first purchase's transaction open after the mandate's
    // guarded update (its row lock taken), for far longer than the lease.
    env.start_worker_with("w0", &[("KOBATELA_FAILPOINTS", "held.purchase=1*sleep:600000")]).await?;
    let first = post_purchases(&shop, "a", 1, 1).await?;
    let holder = eventually(Duration::from_secs(10), || async {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT DISTINCT a.pid FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid
               JOIN pg_class c ON c.oid = l.relation
              WHERE a.datname = current_database() AND a.state = 'idle in transaction'
                AND c.relname = 'mandates' AND l.mode = 'RowExclusiveLock'",
        )
        .fetch_optional(&env.pool)
        .await?;
        Ok(pid)
    })
    .await?;
    env.signal_worker("w0", "-STOP").await?;
    let frozen_at = Instant::now();
    env.start_worker("w1").await?;
    // A second purchase on the same mandate needs the lock the frozen
    // worker holds.
    let second = post_purchases(&shop, "b", 1, 1).await?;
    let mut ids = first.clone();
    ids.extend(second);
    all_succeed(&env, &ids, Duration::from_secs(30)).await?;
    let took = frozen_at.elapsed();
    println!("both purchases done {} ms after the worker froze", took.as_millis());
    assert!(took < Duration::from_secs(lease + 8), "within the lease plus the bound: {took:?}");
    let gone: bool = sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
        .bind(holder)
        .fetch_one(&env.pool)
        .await?;
    assert!(gone, "the server ended the frozen worker's session");
    let (purchases, spent): (i64, String) =
        sqlx::query_as("SELECT count(*), (SELECT spent_amount::text FROM mandates) FROM purchases")
            .fetch_one(&env.pool)
            .await?;
    assert_eq!((purchases, spent.as_str()), (2, "2.00"), "each once");
    env.signal_worker("w0", "-CONT").await?;
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_that_panics_ends_dead_after_its_attempts() -> anyhow::Result<()> {
    let env = Env::with(
        EnvOptions::default()
            .private_redis()
            .var("JOB_MAX_ATTEMPTS", "3")
            .var("KOBATELA_FAILPOINTS", "rule.purchase=panic"),
    )
    .await?;
    let shop = shop(&env, "100.00", "USD").await?;
    let r = shop.beneficiary.client.job("/spend/purchases", "p", shop.purchase_body("5.00", "USD"), 0).await?;
    let id = r.s("job_id");
    let done = shop.beneficiary.client.finished(&id, 60).await?;
    assert_eq!((done.s("status").as_str(), done.body["attempts"].as_i64()), ("dead", Some(3)), "{}", done.text);
    let dead = env.admin().get("/jobs?status=dead").await?;
    let listed: Vec<String> = dead.body["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|j| j["job_id"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(listed.contains(&id), "{}", dead.text);
    let last_error: Option<String> =
        sqlx::query_scalar("SELECT last_error FROM jobs WHERE id = $1::uuid").bind(&id).fetch_one(&env.pool).await?;
    assert!(last_error.unwrap_or_default().contains("panicked"), "the attempt recorded the panic");
    let (purchases, spent): (i64, String) =
        sqlx::query_as("SELECT count(*), (SELECT spent_amount::text FROM mandates) FROM purchases")
            .fetch_one(&env.pool)
            .await?;
    assert_eq!((purchases, spent.as_str()), (0, "0.00"));
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_kills_its_worker_every_time_still_ends_dead() -> anyhow::Result<()> {
    let mut env = Env::with(
        EnvOptions::default().workers(0).private_redis().var("JOB_MAX_ATTEMPTS", "2").var("JOB_TIMEOUT_SECS", "2"),
    )
    .await?;
    let shop = shop(&env, "100.00", "USD").await?;
    let crash = [("KOBATELA_FAILPOINTS", "rule.purchase=abort")];
    let r = shop.beneficiary.client.job("/spend/purchases", "p", shop.purchase_body("5.00", "USD"), 0).await?;
    let id = r.s("job_id");
    // Each replica that takes the job dies with it; a new one is started
    // until the job ends.
    let mut crashes = 0;
    for round in 0..6 {
        let name = format!("w{round}");
        env.spawn_worker(&name, &crash).await?;
        let ended = eventually(Duration::from_secs(20), || {
            let alive = env.worker_alive(&name);
            let pool = env.pool.clone();
            let id = id.clone();
            async move {
                let status: String = sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1::uuid")
                    .bind(&id)
                    .fetch_one(&pool)
                    .await?;
                Ok(match (alive, status.as_str()) {
                    (_, "dead") => Some(true),
                    (false, _) => Some(false),
                    _ => None,
                })
            }
        })
        .await?;
        if !env.worker_alive(&name) {
            crashes += 1;
            env.reap_worker(&name).await?;
        }
        if ended {
            break;
        }
    }
    let (status, attempts): (String, i32) =
        sqlx::query_as("SELECT status, attempts FROM jobs WHERE id = $1::uuid").bind(&id).fetch_one(&env.pool).await?;
    // The first run is a first delivery: its transaction counts the attempt
    // at its commit, which a crash never reaches. The redeliveries take the
    // counted claim, so two more crashes use up the two attempts.
    assert_eq!((status.as_str(), attempts, crashes), ("dead", 2, 3), "three crashes, then dead");
    let purchases: i64 = sqlx::query_scalar("SELECT count(*) FROM purchases").fetch_one(&env.pool).await?;
    assert_eq!(purchases, 0);
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_dropping_connections_under_the_api_is_503_never_500() -> anyhow::Result<()> {
    let env = Env::with(EnvOptions::default().workers(0)).await?;
    let shop = shop(&env, "1000000.00", "USD").await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Terminate every api connection to this database, over and over: what
    // clients see of a Postgres shutting down or failing over (57P01).
    let killer = {
        let (pool, name, stop) = (env.pool.clone(), env.name.clone(), stop.clone());
        tokio::spawn(async move {
            let mut killed = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                      WHERE datname = $1 AND application_name = 'kobatela' AND pid <> pg_backend_pid()",
                )
                .bind(&name)
                .fetch_one(&pool)
                .await?;
                killed += n;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            Ok::<_, anyhow::Error>(killed)
        })
    };
    let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
    let mut bad = Vec::new();
    for i in 0..300 {
        let (path, key) = (format!("/mandates/{}", shop.mandate_id), format!("k{i}"));
        let (read, job) = tokio::join!(
            shop.beneficiary.client.get(&path),
            shop.beneficiary.client.job("/spend/purchases", &key, shop.purchase_body("1.00", "USD"), 0),
        );
        for r in [read?, job?] {
            *statuses.entry(r.status).or_default() += 1;
            if r.status >= 500 && (r.status != 503 || r.code() != "UNAVAILABLE" || !r.is_problem()) {
                bad.push(r.text.clone());
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let killed = killer.await??;
    println!("terminated {killed} api connections; answers by status: {statuses:?}");
    assert!(killed > 10, "the api's connections were dropped under it");
    assert!(bad.is_empty(), "every server error is 503 UNAVAILABLE: {bad:?}");
    assert!(statuses.keys().all(|s| [200, 202, 503].contains(s)), "{statuses:?}");
    env.stop().await
}
