//! Limits before identity (issue #15, item 5): a client address has a
//! budget of failed authentications (`AUTH_FAILURES_PER_ADDR`, 20/s here,
//! the default); past it, its requests are refused 429 before any key
//! lookup. The lookups are counted in Postgres itself: the scans of
//! `api_keys` in this test's own database (nothing else reads that table
//! while the test measures). Clients come from different loopback
//! addresses (127.0.0.2, …), which the api sees as different peers.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use e2e::scenario::person;
use e2e::{Client, Env, EnvOptions, Reply};
use futures::StreamExt;

/// The harness raises the budget for every other test; these set a real one.
fn env_options(budget: &str) -> EnvOptions {
    EnvOptions::default().workers(0).var("AUTH_FAILURES_PER_ADDR", budget)
}

fn addr(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// Scans of `api_keys` (sequential or by index) in this test's database so
/// far. A backend hands its counts to the shared statistics when it goes
/// idle for a while or exits, so the api's sessions are ended first: every
/// lookup made until now is then counted, and the api opens new sessions.
async fn api_key_lookups(env: &Env) -> anyhow::Result<i64> {
    let ended: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity
          WHERE datname = current_database() AND application_name = 'kobatela' AND pid <> pg_backend_pid()",
    )
    .fetch_all(&env.pool)
    .await?;
    // Apart from the filter above: Postgres may evaluate a WHERE clause's
    // terms in any order, and this one must end none of the test's sessions.
    sqlx::query("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid")
        .bind(&ended)
        .execute(&env.pool)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)")
            .bind(&ended)
            .fetch_one(&env.pool)
            .await?;
        if left == 0 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the api's sessions did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sqlx::query("SELECT pg_stat_clear_snapshot()").execute(&env.pool).await?;
    Ok(sqlx::query_scalar(
        "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = 'api_keys'",
    )
    .fetch_one(&env.pool)
    .await?)
}

fn retry_after(r: &Reply) -> u64 {
    r.headers.get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_bad_keys_from_one_address_are_mostly_429_and_reach_postgres_at_most_a_budgets_worth()
-> anyhow::Result<()> {
    // The default budget.
    let env = Env::with(env_options("20/s")).await?;
    let alice = person(&env, "alice", "sender").await?;
    let alice_path = format!("/users/{}", alice.id);
    assert_eq!(alice.client.get(&alice_path).await?.status, 200);

    // The count is honest: five distinct bad keys from a fresh address,
    // within its budget, are five lookups.
    let before = api_key_lookups(&env).await?;
    let calibration = Client::from_address(&env.api_url, None, addr(3));
    for i in 0..5 {
        let r = calibration.with_key(&format!("kb_calibration_{i}")).get(&alice_path).await?;
        assert_eq!((r.status, r.code().as_str()), (401, "AUTH_INVALID"), "{}", r.text);
    }
    let after_calibration = api_key_lookups(&env).await?;
    assert_eq!(after_calibration - before, 5, "one scan of api_keys per lookup");

    // The same bad key ten times (within the budget: each is a 401) is
    // looked up once: the negative cache answers the others.
    let repeat = Client::from_address(&env.api_url, Some("kb_the_same_bad_key"), addr(4));
    for _ in 0..10 {
        let r = repeat.get(&alice_path).await?;
        assert_eq!((r.status, r.code().as_str()), (401, "AUTH_INVALID"), "{}", r.text);
    }
    let after_repeats = api_key_lookups(&env).await?;
    assert_eq!(after_repeats - after_calibration, 1, "a bad key repeated reaches Postgres once");

    // The attack: 1,000 distinct bad keys from 127.0.0.2, eight at a time,
    // while alice (127.0.0.1) keeps using her valid key.
    let attacker = Client::from_address(&env.api_url, None, addr(2));
    let started = Instant::now();
    let attack = futures::stream::iter(0..1000)
        .map(|i| {
            let c = attacker.with_key(&format!("kb_guess_{i}_{}", uuid::Uuid::new_v4().simple()));
            let path = alice_path.clone();
            async move { c.get(&path).await }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>();
    let legit = async {
        let mut answers = Vec::new();
        let until = Instant::now() + Duration::from_millis(600);
        while Instant::now() < until {
            answers.push(alice.client.get(&alice_path).await?.status);
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        anyhow::Ok(answers)
    };
    let (answers, legit) = tokio::join!(attack, legit);
    let elapsed = started.elapsed();
    let answers: Vec<Reply> = answers.into_iter().collect::<Result<_, _>>()?;
    let legit = legit?;
    assert!(legit.iter().all(|s| *s == 200), "a valid key from another address keeps working: {legit:?}");

    let refused: Vec<&Reply> = answers.iter().filter(|r| r.status == 429).collect();
    let invalid = answers.iter().filter(|r| r.status == 401).count();
    assert_eq!(refused.len() + invalid, 1000, "only 401 and 429");
    for r in &refused {
        assert!(r.is_problem() && r.code() == "RATE_LIMITED", "{}", r.text);
        assert!(retry_after(r) >= 1, "Retry-After on every 429");
    }
    // At most a budget's worth: the burst, then 20 a second.
    let budget = 20 + (20.0 * elapsed.as_secs_f64()).ceil() as i64;
    let after_attack = api_key_lookups(&env).await?;
    // Alice's requests are lookups too (one each, and maybe one touch of
    // her key's last use): what is left is at most the attacker's.
    let attacker_lookups = after_attack - after_repeats - legit.len() as i64;
    println!(
        "1000 bad keys in {} ms: {} answered 401, {} answered 429; {attacker_lookups} lookups (budget {budget})",
        elapsed.as_millis(),
        invalid,
        refused.len()
    );
    assert!(attacker_lookups <= budget, "{attacker_lookups} lookups, more than a budget's worth ({budget})");
    assert!(invalid as i64 <= budget, "{invalid} answers 401");
    assert!(refused.len() >= 1000 - budget as usize, "mostly 429: {}", refused.len());

    // The throttle is one warn line, not a line per refused request.
    let log = std::fs::read_to_string(env.log_path("api"))?;
    let warns = log.lines().filter(|l| l.contains("address throttled") && l.contains("127.0.0.2")).count();
    assert_eq!(warns, 1, "one warn when 127.0.0.2 started being throttled");
    let refused_lines = log.lines().filter(|l| l.contains("\"request done\"") && l.contains("\"status\":429")).count();
    assert_eq!(refused_lines, 0, "refused requests are not logged at info");
    let metrics = env.api_metrics().await?;
    let throttled = e2e::prom::sample(&metrics, "kobatela_auth_throttled_total", &[]).unwrap_or(0.0);
    assert!(throttled >= refused.len() as f64, "kobatela_auth_throttled_total {throttled}");
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_keys_never_spend_the_budget_and_bad_signatures_do() -> anyhow::Result<()> {
    // Twenty a minute: a budget that refills slower than this test runs,
    // so what it counts is exact.
    let env = Env::with(env_options("20/m")).await?;
    let alice = person(&env, "alice", "sender").await?;
    let path = format!("/users/{}", alice.id);
    // Twice the burst of valid requests from one address, then three
    // times the burst at once (a busy gateway): all served…
    let valid = Client::from_address(&env.api_url, Some(&alice.key), addr(5));
    for _ in 0..40 {
        assert_eq!(valid.get(&path).await?.status, 200);
    }
    let at_once: Vec<u16> = futures::stream::iter(0..60)
        .map(|_| {
            let (valid, path) = (valid.clone(), path.clone());
            async move { valid.get(&path).await.map(|r| r.status) }
        })
        .buffer_unordered(60)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    assert!(at_once.iter().all(|s| *s == 200), "{at_once:?}");
    // …left its budget whole: a bad key is looked up and refused as such.
    let bad = Client::from_address(&env.api_url, Some("kb_not_a_key"), addr(5));
    let r = bad.with_key("kb_not_a_key_1").get(&path).await?;
    assert_eq!((r.status, r.code().as_str()), (401, "AUTH_INVALID"), "{}", r.text);
    // Missing keys spend it too; past it, even the valid key is refused
    // before its lookup, until the address's budget refills.
    let anonymous = Client::from_address(&env.api_url, None, addr(5));
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(anonymous.get(&path).await?.status);
    }
    // The bad key and 19 missing ones are the burst of 20 (one more when
    // the budget refilled a failure while the test ran, one each 3 s).
    let spent = statuses.iter().filter(|s| **s == 401).count();
    assert!((19..=20).contains(&spent), "{statuses:?}");
    assert!(statuses[spent..].iter().all(|s| *s == 429), "then 429: {statuses:?}");
    let r = valid.get(&path).await?;
    assert_eq!((r.status, r.code().as_str()), (429, "RATE_LIMITED"), "{}", r.text);
    assert!(retry_after(&r) >= 1);
    // Public routes spend nothing and are never refused.
    for public in ["/health", "/ready", "/openapi.json", "/docs", "/ops", "/assets/console.js"] {
        assert_eq!(anonymous.get(public).await?.status, 200, "{public}");
    }

    // Bad webhook signatures from another address spend its budget; no
    // event is stored, and past the budget the signature is not even read.
    let body = serde_json::json!({"id": "evt-1", "type": "payment.settled", "data": {}}).to_string();
    let psp = Client::from_address(&env.api_url, None, addr(6));
    let now = chrono::Utc::now().timestamp().to_string();
    let http = reqwest::Client::builder().local_address(addr(6)).build()?;
    let mut codes = Vec::new();
    for _ in 0..30 {
        let r = psp
            .send(
                http.post(format!("{}/psp/webhook", env.api_url))
                    .header("content-type", "application/json")
                    .header("X-PSP-Timestamp", &now)
                    .header("X-PSP-Signature", "00".repeat(32))
                    .body(body.clone()),
            )
            .await?;
        codes.push(r.code());
    }
    let invalid = codes.iter().filter(|c| *c == "WEBHOOK_SIGNATURE_INVALID").count();
    assert!((20..=21).contains(&invalid), "the burst (and a refill): {codes:?}");
    assert!(codes[invalid..].iter().all(|c| c == "RATE_LIMITED"), "{codes:?}");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM psp_webhook_events").fetch_one(&env.pool).await?;
    assert_eq!(events, 0, "nothing stored");
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget_and_others_cannot_forge_one()
-> anyhow::Result<()> {
    // 127.0.0.1 is the proxy; 127.0.0.2 is a client that reaches the api directly.
    let env = Env::with(env_options("20/m").var("TRUSTED_PROXIES", "127.0.0.1/32")).await?;
    let alice = person(&env, "alice", "sender").await?;
    let path = format!("/users/{}", alice.id);
    let anonymous = env.anonymous();
    let via_proxy = |client: &str, key: &str| {
        anonymous.send(
            reqwest::Client::new()
                .get(format!("{}{path}", env.api_url))
                .bearer_auth(key)
                .header("X-Forwarded-For", format!("198.51.100.77, {client}")),
        )
    };
    // One forwarded client spends its budget…
    let mut codes = Vec::new();
    for i in 0..25 {
        codes.push(via_proxy("203.0.113.7", &format!("kb_bad_{i}")).await?.code());
    }
    assert_eq!(codes.iter().filter(|c| *c == "AUTH_INVALID").count(), 20, "{codes:?}");
    assert!(codes[20..].iter().all(|c| c == "RATE_LIMITED"), "{codes:?}");
    // …and only its own: another client behind the same proxy, and the
    // proxy's own valid traffic, are served.
    let r = via_proxy("203.0.113.8", "kb_bad_other").await?;
    assert_eq!(r.code(), "AUTH_INVALID", "{}", r.text);
    assert_eq!(via_proxy("203.0.113.8", &alice.key).await?.status, 200);
    assert_eq!(alice.client.get(&path).await?.status, 200, "the proxy itself is not throttled");
    // A peer that is not a trusted proxy cannot name someone else: its
    // forged header is ignored and its failures are its own.
    let direct = reqwest::Client::builder().local_address(addr(2)).build()?;
    let forged = |key: String| {
        direct.get(format!("{}{path}", env.api_url)).bearer_auth(key).header("X-Forwarded-For", "203.0.113.99")
    };
    for i in 0..20 {
        let r = env.anonymous().send(forged(format!("kb_forged_{i}"))).await?;
        assert_eq!(r.code(), "AUTH_INVALID", "{}", r.text);
    }
    let r = env.anonymous().send(forged("kb_forged_last".into())).await?;
    assert_eq!(r.code(), "RATE_LIMITED", "127.0.0.2 spent its own budget: {}", r.text);
    let r = via_proxy("203.0.113.99", "kb_bad_named").await?;
    assert_eq!(r.code(), "AUTH_INVALID", "the address it named was never charged: {}", r.text);
    env.stop().await
}
