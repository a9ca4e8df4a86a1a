//! The edges of issue #8, tried as an outsider would: amounts read from
//! their literal text, U+0000 in text fields, pre-checks at the edge, and
//! the smaller holes (idempotency keys, rate limits); and of issue #15: the
//! security headers on every answer, and headers the api cannot read. Each
//! test asserts the money or the rows, not only the status codes.

use e2e::scenario::person;
use e2e::{Env, Reply};
use serde_json::json;

fn expect(r: &Reply, status: u16, code: &str) {
    assert_eq!((r.status, r.code().as_str()), (status, code), "{}", r.text);
    assert!(r.is_problem(), "not a problem body: {} {}", r.content_type, r.text);
}

async fn count(env: &Env, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string())).fetch_one(&env.pool).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amounts_are_read_from_their_literal_text_exactly_or_refused() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let alice = person(&env, "alice", "sender").await?;
    let bob = person(&env, "bob", "beneficiary").await?;
    let escrow = |total: &str| {
        format!(
            r#"{{"client_id": "{}", "provider_id": "{}", "currency": "USD", "deadline_at": "2100-01-01T00:00:00Z", "amount_total": {total}}}"#,
            alice.id, bob.id
        )
    };
    // Underscores, exponents, signs and spaces are refused, never read as 10 or 1000.
    for total in [r#""1_0""#, r#""1_000""#, "1e3", "1E1", r#"" 10""#, r#""+10""#, "-5", r#""10.""#, "12345678901234567"]
    {
        let r = alice.client.post_raw("/escrows", "application/json", escrow(total).into_bytes()).await?;
        expect(&r, 422, "AMOUNT_INVALID");
    }
    assert_eq!(count(&env, "SELECT count(*) FROM escrows").await?, 0, "a refused amount changed nothing");
    // JSON numbers keep every cent, in the answer and in the database.
    for total in ["100000000000000.01", "1234567890123456.78", "9999999999999999.99", "0.1"] {
        let r = alice.client.post_raw("/escrows", "application/json", escrow(total).into_bytes()).await?;
        assert_eq!(r.status, 201, "{}", r.text);
        let expected = if total == "0.1" { "0.10" } else { total };
        assert_eq!(r.s("amount_total"), expected);
        let stored: String = sqlx::query_scalar("SELECT amount_total::text FROM escrows WHERE id = $1::uuid")
            .bind(r.s("id"))
            .fetch_one(&env.pool)
            .await?;
        assert_eq!(stored, expected, "stored exactly");
        // A deposit of the same literal number funds it exactly.
        let d = alice
            .client
            .job_raw(
                &format!("/escrows/{}/deposit", r.s("id")),
                &format!("d{total}"),
                &format!(r#"{{"amount": {total}}}"#),
                20,
            )
            .await?;
        assert_eq!(d.body.pointer("/result/status"), Some(&json!("FUNDED")), "{}", d.text);
        assert_eq!(d.body.pointer("/result/funded_amount"), Some(&json!(expected)), "{}", d.text);
        let funded: String = sqlx::query_scalar("SELECT funded_amount::text FROM escrows WHERE id = $1::uuid")
            .bind(r.s("id"))
            .fetch_one(&env.pool)
            .await?;
        assert_eq!(funded, expected);
    }
    // A deposit spelled with an underscore moves nothing.
    let r = alice.client.post_raw("/escrows", "application/json", escrow(r#""50.00""#).into_bytes()).await?;
    let id = r.s("id");
    let d = alice.client.job_raw(&format!("/escrows/{id}/deposit"), "u", r#"{"amount": "1_0"}"#, 20).await?;
    expect(&d, 422, "AMOUNT_INVALID");
    let funded: String = sqlx::query_scalar("SELECT funded_amount::text FROM escrows WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(funded, "0.00");
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u0000_in_text_fields_and_query_parameters_is_a_422_that_changes_nothing() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let deal = e2e::scenario::deal(&env, "10.00").await?;
    deal.milestone(1, "10.00", "DOCUMENT", None).await?;
    deal.deposit("d", "10.00").await?;
    let admin = env.admin();
    let before = count(&env, "SELECT count(*) FROM escrows").await?;
    // In release_conditions, nested, and in a key.
    for conditions in [r#"{"note": "a\u0000b"}"#, r#"{"steps": [{"x": "\u0000"}]}"#, r#"{"a\u0000": 1}"#] {
        let body = format!(
            r#"{{"client_id": "{}", "provider_id": "{}", "amount_total": "5.00", "currency": "USD", "deadline_at": "2100-01-01T00:00:00Z", "release_conditions": {conditions}}}"#,
            deal.client.id, deal.provider.id
        );
        let r = deal.client.client.post_raw("/escrows", "application/json", body.into_bytes()).await?;
        expect(&r, 422, "VALIDATION_ERROR");
        assert_eq!(r.body["errors"][0]["field"], json!("release_conditions"), "{}", r.text);
    }
    assert_eq!(count(&env, "SELECT count(*) FROM escrows").await?, before);
    // In the query parameters of /audit, /alerts and /jobs.
    for path in
        ["/audit?entity=a%00b", "/audit?action=%00", "/audit?entity_id=x%00", "/alerts?type=%00", "/jobs?kind=%00"]
    {
        expect(&admin.get(path).await?, 422, "VALIDATION_ERROR");
    }
    // In a proof's source: no proof, no job, no file.
    let jobs = count(&env, "SELECT count(*) FROM jobs").await?;
    let r = deal.provider.client.upload_proof("nul", &deal.escrow_id, 1, "app\u{0}", b"%PDF-1.4 x".to_vec(), 0).await?;
    expect(&r, 422, "VALIDATION_ERROR");
    assert_eq!(count(&env, "SELECT count(*) FROM proofs").await?, 0);
    assert_eq!(count(&env, "SELECT count(*) FROM jobs").await?, jobs);
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_who_can_never_run_the_job_are_refused_at_once_with_no_job_row() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let deal = e2e::scenario::deal(&env, "40.00").await?;
    deal.milestone(1, "40.00", "DOCUMENT", None).await?;
    deal.deposit("d", "40.00").await?;
    sqlx::query("UPDATE escrows SET deadline_at = now() - interval '1 minute' WHERE id = $1::uuid")
        .bind(&deal.escrow_id)
        .execute(&env.pool)
        .await?;
    let support = person(&env, "sue", "support").await?;
    let path = format!("/escrows/{}/check-deadline", deal.escrow_id);
    for (who, client) in
        [("client", &deal.client.client), ("provider", &deal.provider.client), ("support", &support.client)]
    {
        let r = client.job(&path, &format!("cd-{who}"), json!({}), 0).await?;
        expect(&r, 403, "FORBIDDEN");
    }
    assert_eq!(count(&env, "SELECT count(*) FROM jobs WHERE kind = 'escrow_transition'").await?, 0, "no job row");
    // A document in review: decided by the client, support or an admin only.
    let up =
        deal.provider.client.upload_proof("doc", &deal.escrow_id, 1, "app", b"%PDF-1.4 report".to_vec(), 20).await?;
    assert_eq!(up.body.pointer("/result/status"), Some(&json!("PENDING_REVIEW")), "{}", up.text);
    let proof = up.s("proof_id");
    // The provider holding a sender key, and a stranger sender.
    let key = admin.post("/api-keys", json!({"user_id": deal.provider.id, "role": "sender", "name": "second"})).await?;
    let provider_as_sender = env.client(&key.s("key"));
    let stranger = person(&env, "mallory", "sender").await?;
    let decisions_before = count(&env, "SELECT count(*) FROM jobs WHERE kind = 'proof_validation'").await?;
    let decide = |c: e2e::Client, k: &'static str| {
        let path = format!("/proofs/{proof}/decision");
        async move { c.job(&path, k, json!({"decision": "approve"}), 0).await }
    };
    expect(&decide(provider_as_sender, "p").await?, 403, "FORBIDDEN");
    expect(&decide(deal.provider.client.clone(), "p2").await?, 403, "FORBIDDEN");
    expect(&decide(stranger.client.clone(), "s").await?, 404, "NOT_FOUND");
    assert_eq!(count(&env, "SELECT count(*) FROM jobs WHERE kind = 'proof_validation'").await?, decisions_before);
    // Nothing moved: the milestone still waits for a decision, no money was reserved.
    let e = deal.escrow().await?;
    assert_eq!((e.body["milestones"][0]["status"].clone(), e.s("balance")), (json!("PENDING_REVIEW"), "40.00".into()));
    // The admin may check the deadline (held by the review).
    let r = admin.job(&path, "cd-admin", json!({}), 20).await?;
    assert_eq!(r.body.pointer("/result/status"), Some(&json!("FUNDED")), "{}", r.text);
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_of_ten_a_minute_allows_ten_a_minute_not_one_a_second() -> anyhow::Result<()> {
    let env = Env::with(e2e::EnvOptions::default().var("RATE_LIMIT_PER_KEY", "10/m")).await?;
    let alice = person(&env, "alice", "sender").await?;
    let mut answers = Vec::new();
    for _ in 0..15 {
        answers.push(alice.client.get("/me").await?);
    }
    let ok = answers.iter().filter(|r| r.status == 200).count();
    assert_eq!(ok, 10, "the whole minute's allowance at once, then no more");
    let limited = answers.iter().find(|r| r.status == 429).expect("refused past ten");
    expect(limited, 429, "RATE_LIMITED");
    let retry: u64 =
        limited.headers.get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!((1..=6).contains(&retry), "one more request every 6 s, not every second: Retry-After {retry}");
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_endpoints_without_an_idempotency_key_are_refused_and_queue_nothing() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let jobs = count(&env, "SELECT count(*) FROM jobs").await?;
    let r = admin.post("/mandates/cleanup", json!({})).await?;
    expect(&r, 400, "IDEMPOTENCY_KEY_REQUIRED");
    let r = admin.post(&format!("/payments/execute/{}", uuid::Uuid::new_v4()), json!({})).await?;
    expect(&r, 400, "IDEMPOTENCY_KEY_REQUIRED");
    assert_eq!(count(&env, "SELECT count(*) FROM jobs").await?, jobs, "no job row");
    let r = admin.job("/mandates/cleanup", "sweep", json!({}), 20).await?;
    assert_eq!(r.s("status"), "succeeded", "{}", r.text);
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_role_is_unknown_fails_closed_and_moves_no_money() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let deal = e2e::scenario::deal(&env, "10.00").await?;
    // A job row naming the client with a role no key can have: it must not
    // run with the PSP's rights (which may deposit).
    let job: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO jobs (id, kind, payload, actor_user_id, actor_key_id, actor_role, idempotency_key)
         VALUES (gen_random_uuid(), 'escrow_deposit', jsonb_build_object('escrow_id', $1::text, 'amount', '10.00'),
                 $2::uuid, gen_random_uuid(), 'ghost', 'ghost-1') RETURNING id",
    )
    .bind(&deal.escrow_id)
    .bind(&deal.client.id)
    .fetch_one(&env.pool)
    .await?;
    // The relay delivers it (it was never pushed).
    let r = env.admin().finished(&job.to_string(), 30).await?;
    assert_eq!((r.s("status").as_str(), r.code().as_str()), ("failed", "FORBIDDEN"), "{}", r.text);
    let funded: String = sqlx::query_scalar("SELECT funded_amount::text FROM escrows WHERE id = $1::uuid")
        .bind(&deal.escrow_id)
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(funded, "0.00");
    assert_eq!(count(&env, "SELECT count(*) FROM escrow_deposits").await?, 0);
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_job_retry_and_its_audit_commit_together() -> anyhow::Result<()> {
    let env = Env::with(e2e::EnvOptions::default().workers(0)).await?;
    let job: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO jobs (id, kind, payload, actor_user_id, actor_key_id, actor_role, status, attempts, finished_at)
         VALUES (gen_random_uuid(), 'mandate_expiry', '{}', '00000000-0000-0000-0000-000000000000',
                 '00000000-0000-0000-0000-000000000000', 'admin', 'dead', 5, now()) RETURNING id",
    )
    .fetch_one(&env.pool)
    .await?;
    // The audit row cannot be written: the retry must not happen either.
    sqlx::query(
        "CREATE FUNCTION refuse_retry_audit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.action = 'JOB_RETRIED' THEN RAISE EXCEPTION 'audit unavailable'; END IF; RETURN NEW; END $$",
    )
    .execute(&env.pool)
    .await?;
    sqlx::query("CREATE TRIGGER refuse_retry_audit BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION refuse_retry_audit()")
        .execute(&env.pool)
        .await?;
    let r = env.admin().post(&format!("/jobs/{job}/retry"), json!({})).await?;
    expect(&r, 500, "INTERNAL");
    let (status, attempts): (String, i32) =
        sqlx::query_as("SELECT status, attempts FROM jobs WHERE id = $1").bind(job).fetch_one(&env.pool).await?;
    assert_eq!((status.as_str(), attempts), ("dead", 5), "no retry without its audit");
    sqlx::query("DROP TRIGGER refuse_retry_audit ON audit_log").execute(&env.pool).await?;
    let r = env.admin().post(&format!("/jobs/{job}/retry"), json!({})).await?;
    assert_eq!((r.status, r.s("status").as_str()), (202, "queued"), "{}", r.text);
    let audits =
        count(&env, &format!("SELECT count(*) FROM audit_log WHERE action = 'JOB_RETRIED' AND entity_id = '{job}'"))
            .await?;
    assert_eq!(audits, 1);
    env.stop().await
}

fn header<'a>(r: &'a Reply, name: &str) -> &'a str {
    r.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_the_security_headers_and_the_pages_allow_only_their_own_origin() -> anyhow::Result<()> {
    let env = e2e::Env::with(e2e::EnvOptions::default().workers(0)).await?;
    let anon = env.anonymous();
    let admin = env.admin();
    let alice = person(&env, "alice", "sender").await?;
    for page in ["/ops", "/docs"] {
        let r = anon.get(page).await?;
        assert_eq!(r.status, 200, "{page}");
        assert!(r.content_type.starts_with("text/html"), "{page}: {}", r.content_type);
        let csp = header(&r, "content-security-policy");
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'none'",
        ] {
            assert!(csp.split(';').any(|d| d.trim() == directive), "{page}: {directive} missing from {csp:?}");
        }
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{page}: {csp}");
        // The page holds no script or style of its own: each is a file from
        // the api, served with its type.
        let html = r.text.to_ascii_lowercase();
        assert!(!html.contains("<style") && !html.contains(" style="), "{page}: inline style");
        let mut assets = 0;
        for (at, _) in html.match_indices("<script") {
            let tag = &html[at..at + html[at..].find('>').unwrap_or(0)];
            let src = tag.split("src=\"").nth(1).and_then(|s| s.split('"').next()).unwrap_or("");
            assert!(src.starts_with("/assets/"), "{page}: an inline script: {tag}");
            let js = anon.get(src).await?;
            assert_eq!((js.status, js.content_type.as_str()), (200, "text/javascript; charset=utf-8"), "{src}");
            assert_eq!(header(&js, "x-content-type-options"), "nosniff", "{src}");
            assets += 1;
        }
        for (at, _) in html.match_indices("<link rel=\"stylesheet\"") {
            let tag = &html[at..at + html[at..].find('>').unwrap_or(0)];
            let href = tag.split("href=\"").nth(1).and_then(|s| s.split('"').next()).unwrap_or("");
            let css = anon.get(href).await?;
            assert_eq!((css.status, css.content_type.as_str()), (200, "text/css; charset=utf-8"), "{href}");
            assets += 1;
        }
        assert_eq!(assets, 2, "{page}: one script and one style sheet");
    }
    // Every answer: pages, public JSON, authenticated JSON, problems.
    let created = admin.post("/api-keys", json!({"user_id": alice.id, "role": "sender", "name": "second"})).await?;
    assert_eq!(created.status, 201, "{}", created.text);
    let answers = [
        ("/health", anon.get("/health").await?),
        ("/ops", anon.get("/ops").await?),
        ("/me", admin.get("/me").await?),
        ("POST /api-keys", created.clone()),
        ("/users/{id}", alice.client.get(&format!("/users/{}", alice.id)).await?),
        ("a 404", anon.get("/no/such/route").await?),
        ("a 401", anon.get("/me").await?),
        ("a 422", admin.get("/audit?limit=0").await?),
    ];
    for (what, r) in &answers {
        assert_eq!(header(r, "x-content-type-options"), "nosniff", "{what}");
        assert_eq!(header(r, "referrer-policy"), "no-referrer", "{what}");
    }
    // Answers that may hold keys or personal data are never stored by a
    // cache: every authenticated JSON answer and every problem.
    for (what, r) in &answers[2..] {
        assert_eq!(header(r, "cache-control"), "no-store", "{what}");
    }
    // The key shown once is the one that works; it was stored once.
    assert_eq!(env.client(&created.s("key")).get("/me").await?.status, 200);
    let keys: i64 = count(&env, "SELECT count(*) FROM api_keys WHERE name = 'second'").await?;
    assert_eq!(keys, 1);
    env.stop().await
}

/// Sends raw bytes over TCP and returns the answer's status line, headers
/// and body as text (the server closes: `Connection: close`).
async fn raw_http(env: &Env, request: &[u8]) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = env.api_url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(request).await?;
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut out)).await??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_idempotency_key_gets_a_problem_body_wherever_the_request_reaches_the_api() -> anyhow::Result<()>
{
    let env = Env::start().await?;
    let jobs = count(&env, "SELECT count(*) FROM jobs").await?;
    let request = |value: &[u8]| {
        let mut r = b"POST /mandates/cleanup HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer ".to_vec();
        r.extend_from_slice(env.admin_key.as_bytes());
        r.extend_from_slice(
            b"\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\nIdempotency-Key: ",
        );
        r.extend_from_slice(value);
        r.extend_from_slice(b"\r\n\r\n{}");
        r
    };
    // A tab (the one control character HTTP lets through) and bytes beyond
    // ASCII reach the api: a problem body says what is wrong.
    // (A tab around the value is whitespace HTTP trims, not part of the key.)
    for value in [&b"sweep\t1"[..], b"a\tb\tc", b"sweep\xff", b"\xe9t\xe9"] {
        let answer = raw_http(&env, &request(value)).await?;
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        assert!(head.starts_with("HTTP/1.1 400"), "{value:?}: {head}");
        assert!(head.to_ascii_lowercase().contains("content-type: application/problem+json"), "{value:?}: {head}");
        let problem: serde_json::Value = serde_json::from_str(body)?;
        assert_eq!(problem["code"], json!("IDEMPOTENCY_KEY_REQUIRED"), "{value:?}: {body}");
        assert!(problem["detail"].as_str().unwrap_or("").contains("cannot be read"), "{body}");
    }
    // Other control bytes never reach the api: hyper's HTTP/1 parser
    // (httparse) refuses a header value holding any byte below 0x20 but the
    // tab, or 0x7F, and answers a bare `400` with no body and no headers of
    // ours before any service runs. Hyper 1.x has no hook to give that
    // answer a body (`ignore_invalid_headers` would drop the line instead,
    // and silently dropping a malformed header, `Content-Length` included,
    // is how requests get smuggled), so the api cannot do better; the
    // request is refused all the same and nothing is written.
    for value in [&b"sweep\x01"[..], b"sweep\x7f", b"sweep\x1b[0m", b"a\x00b"] {
        let answer = raw_http(&env, &request(value)).await?;
        assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{value:?}: {answer}");
        assert!(answer.to_ascii_lowercase().contains("content-length: 0"), "{value:?}: {answer}");
    }
    // And a readable key still works.
    let answer = raw_http(&env, &request(b"sweep-ok")).await?;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert_eq!(count(&env, "SELECT count(*) FROM jobs").await?, jobs + 1, "only the readable key made a job");
    env.stop().await
}
