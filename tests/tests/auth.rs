//! Keys, roles and object-level checks, end to end.

use std::time::Duration;

use e2e::env::eventually;
use e2e::scenario::person;
use e2e::{Env, EnvOptions};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_authenticate_expire_and_revoke_at_once() -> anyhow::Result<()> {
    let env = Env::with(EnvOptions::default().workers(0)).await?;
    let anon = env.anonymous();
    let r = anon.get("/me").await?;
    assert_eq!((r.status, r.code().as_str()), (401, "AUTH_REQUIRED"));
    assert!(r.is_problem(), "{}", r.content_type);
    let r = env.client("kb_not_a_real_key").get("/me").await?;
    assert_eq!((r.status, r.code().as_str()), (401, "AUTH_INVALID"));
    // X-API-Key works too.
    let http = reqwest::Client::new();
    let r = http.get(format!("{}/me", env.api_url)).header("X-API-Key", &env.admin_key).send().await?;
    assert_eq!(r.status(), 200);
    let alice = person(&env, "alice", "sender").await?;
    let me = alice.client.get("/me").await?;
    assert_eq!(me.body["user"]["username"], json!("alice"));
    assert_eq!(me.body["key"]["role"], json!("sender"));
    // A second key for rotation; the listing never shows a secret.
    let admin = env.admin();
    let second = admin.post("/api-keys", json!({"user_id": alice.id, "role": "sender", "name": "rotation"})).await?;
    assert_eq!(second.status, 201);
    let list = admin.get(&format!("/api-keys?user_id={}", alice.id)).await?;
    assert_eq!(list.body["items"].as_array().map(Vec::len), Some(2));
    assert!(!list.text.contains(&alice.key) && !list.text.contains(&second.s("key")));
    assert!(!list.text.contains("\"key\""));
    // Revoke the first: it stops at once, the second keeps working.
    let first_id = me.body["key"]["id"].as_str().unwrap_or("").to_string();
    assert_eq!(admin.delete(&format!("/api-keys/{first_id}")).await?.status, 204);
    assert_eq!(alice.client.get("/me").await?.code(), "AUTH_INVALID");
    assert_eq!(env.client(&second.s("key")).get("/me").await?.status, 200);
    // An expiring key works until its time, then not.
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let short = admin
        .post("/api-keys", json!({"user_id": alice.id, "role": "sender", "name": "short", "expires_at": soon}))
        .await?;
    assert_eq!(short.status, 201, "{}", short.text);
    assert_eq!(env.client(&short.s("key")).get("/me").await?.status, 200);
    // It stops working once its time has passed (polled, not slept on).
    eventually(Duration::from_secs(10), || async {
        Ok((env.client(&short.s("key")).get("/me").await?.code() == "AUTH_INVALID").then_some(()))
    })
    .await?;
    let past = admin
        .post(
            "/api-keys",
            json!({"user_id": alice.id, "role": "sender", "name": "x", "expires_at": "2001-01-01T00:00:00Z"}),
        )
        .await?;
    assert_eq!(past.status, 422);
    let bad_role = admin.post("/api-keys", json!({"user_id": alice.id, "role": "root", "name": "x"})).await?;
    assert_eq!((bad_role.status, bad_role.code().as_str()), (422, "VALIDATION_ERROR"));
    let no_user =
        admin.post("/api-keys", json!({"user_id": uuid::Uuid::new_v4(), "role": "sender", "name": "x"})).await?;
    assert_eq!((no_user.status, no_user.code().as_str()), (404, "USER_NOT_FOUND"));
    // An inactive user's keys do not work.
    let ghost =
        admin.post("/users", json!({"username": "ghost", "email": "g@example.test", "is_active": false})).await?;
    let gk = admin.post("/api-keys", json!({"user_id": ghost.s("id"), "role": "sender", "name": "x"})).await?;
    assert_eq!(env.client(&gk.s("key")).get("/me").await?.code(), "AUTH_INVALID");
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_ownership_are_checked_and_others_objects_are_404() -> anyhow::Result<()> {
    let env = Env::with(EnvOptions::default().workers(0)).await?;
    let admin = env.admin();
    let alice = person(&env, "alice", "sender").await?;
    let bob = person(&env, "bob", "beneficiary").await?;
    let sue = person(&env, "sue", "support").await?;
    // Only admins create users and keys.
    for c in [&alice.client, &bob.client, &sue.client] {
        let r = c.post("/users", json!({"username": "x", "email": "x@example.test"})).await?;
        assert_eq!((r.status, r.code().as_str()), (403, "FORBIDDEN"));
        assert_eq!(c.post("/api-keys", json!({"user_id": alice.id, "role": "admin", "name": "x"})).await?.status, 403);
        assert_eq!(c.get("/api-keys").await?.status, 403);
    }
    // Users: self, support and admin read; another user sees a 404.
    assert_eq!(alice.client.get(&format!("/users/{}", alice.id)).await?.status, 200);
    assert_eq!(sue.client.get(&format!("/users/{}", alice.id)).await?.status, 200);
    let r = bob.client.get(&format!("/users/{}", alice.id)).await?;
    assert_eq!((r.status, r.code().as_str()), (404, "USER_NOT_FOUND"));
    // Duplicates are 409 USER_EXISTS, e-mail compared without case.
    let r = admin.post("/users", json!({"username": "alice", "email": "other@example.test"})).await?;
    assert_eq!((r.status, r.code().as_str()), (409, "USER_EXISTS"));
    let r = admin.post("/users", json!({"username": "alice2", "email": "ALICE@example.test"})).await?;
    assert_eq!((r.status, r.code().as_str()), (409, "USER_EXISTS"));
    // Catalogue: admin and support only; duplicates are 409.
    assert_eq!(alice.client.post("/spend/categories", json!({"code": "FOOD", "label": "Food"})).await?.status, 403);
    let food = sue.client.post("/spend/categories", json!({"code": "FOOD", "label": "Food"})).await?;
    assert_eq!(food.status, 201);
    assert_eq!(
        admin.post("/spend/categories", json!({"code": "FOOD", "label": "Again"})).await?.code(),
        "CATEGORY_EXISTS"
    );
    let m = admin.post("/spend/merchants", json!({"name": "M", "category_id": food.s("id")})).await?;
    assert_eq!(m.status, 201);
    assert_eq!(admin.post("/spend/merchants", json!({"name": "M"})).await?.code(), "MERCHANT_EXISTS");
    assert_eq!(
        admin.post("/spend/merchants", json!({"name": "N", "category_id": uuid::Uuid::new_v4()})).await?.code(),
        "CATEGORY_NOT_FOUND"
    );
    // Allowed usage: exactly one of merchant or category; duplicates answer the existing rule.
    let both = admin
        .post("/spend/allow", json!({"owner_id": bob.id, "merchant_id": m.s("id"), "category_id": food.s("id")}))
        .await?;
    assert_eq!((both.status, both.code().as_str()), (422, "USAGE_RULE_INVALID"));
    let neither = admin.post("/spend/allow", json!({"owner_id": bob.id})).await?;
    assert_eq!(neither.code(), "USAGE_RULE_INVALID");
    let a1 = admin.post("/spend/allow", json!({"owner_id": bob.id, "merchant_id": m.s("id")})).await?;
    let a2 = admin.post("/spend/allow", json!({"owner_id": bob.id, "merchant_id": m.s("id")})).await?;
    assert_eq!((a1.status, a1.s("status").as_str()), (201, "added"));
    assert_eq!((a2.status, a2.s("status").as_str(), a2.s("id")), (200, "exists", a1.s("id")));
    // Allowlist: a sender for themself only; certification: admin only, upsert.
    let r = alice.client.post("/allowlist", json!({"owner_id": alice.id, "recipient_id": bob.id})).await?;
    assert_eq!((r.status, r.s("status").as_str()), (201, "added"));
    let r = alice.client.post("/allowlist", json!({"owner_id": alice.id, "recipient_id": bob.id})).await?;
    assert_eq!((r.status, r.s("status").as_str()), (200, "exists"));
    let r = alice.client.post("/allowlist", json!({"owner_id": bob.id, "recipient_id": alice.id})).await?;
    assert_eq!(r.status, 403);
    let r =
        alice.client.post("/allowlist", json!({"owner_id": alice.id, "recipient_id": uuid::Uuid::new_v4()})).await?;
    assert_eq!(r.code(), "USER_NOT_FOUND");
    assert_eq!(sue.client.post("/certified", json!({"user_id": bob.id, "level": "GOLD"})).await?.status, 403);
    let c1 = admin.post("/certified", json!({"user_id": bob.id, "level": "BASIC"})).await?;
    let c2 = admin.post("/certified", json!({"user_id": bob.id, "level": "GOLD"})).await?;
    assert_eq!((c1.status, c2.status, c2.s("status").as_str()), (201, 200, "updated"));
    assert_eq!(admin.post("/certified", json!({"user_id": bob.id, "level": "PLATINUM"})).await?.status, 422);
    // Audit is for support and admin.
    assert_eq!(alice.client.get("/audit").await?.status, 403);
    let audit = sue.client.get("/audit?action=USER_CREATED&limit=2").await?;
    assert_eq!(audit.body["items"].as_array().map(Vec::len), Some(2));
    let next = audit.s("next_cursor");
    let page2 = sue.client.get(&format!("/audit?action=USER_CREATED&limit=2&cursor={next}")).await?;
    assert!(!page2.body["items"].as_array().map(Vec::is_empty).unwrap_or(true));
    assert_ne!(page2.body["items"][0]["id"], audit.body["items"][0]["id"]);
    assert_eq!(sue.client.get("/audit?limit=501").await?.status, 422);
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_per_key_rate_are_429_with_retry_after() -> anyhow::Result<()> {
    let env = Env::with(EnvOptions::default().workers(0).var("RATE_LIMIT_PER_KEY", "5/s")).await?;
    let admin = env.admin();
    // Another key, made before the admin's runs out.
    let other = person(&env, "zed", "sender").await?;
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(admin.get("/me").await?);
    }
    let limited: Vec<_> = statuses.iter().filter(|r| r.status == 429).collect();
    assert!(!limited.is_empty(), "no 429 among {:?}", statuses.iter().map(|r| r.status).collect::<Vec<_>>());
    assert_eq!(limited[0].code(), "RATE_LIMITED");
    assert!(limited[0].headers.get("retry-after").is_some());
    // Limits are per key: the other key is not affected while the admin's is.
    assert_eq!(admin.get("/me").await?.status, 429, "the admin's key is still limited");
    assert_eq!(other.client.get("/me").await?.status, 200);
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_keys_and_the_bootstrap_key_is_an_admin() -> anyhow::Result<()> {
    let env = Env::with(EnvOptions::default().workers(0)).await?;
    let out = tokio::process::Command::new(e2e::env::bin("api", "KOBATELA_API_BIN"))
        .args(["keys", "create", "--user", "ops", "--role", "support"])
        .env("DATABASE_URL", &env.db_url)
        .env("LOG_FORMAT", "pretty")
        .output()
        .await?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let key = stdout.lines().last().unwrap_or("").trim().to_string();
    let me = env.client(&key).get("/me").await?;
    assert_eq!(me.status, 200, "{stdout}");
    assert_eq!(me.body["key"]["role"], json!("support"));
    assert_eq!(me.body["user"]["username"], json!("ops"));
    let admin = env.admin().get("/me").await?;
    assert_eq!(admin.body["user"]["username"], json!("admin"));
    assert_eq!(admin.body["key"]["role"], json!("admin"));
    let bad = tokio::process::Command::new(e2e::env::bin("api", "KOBATELA_API_BIN"))
        .args(["keys", "create", "--user", "ops", "--role", "god"])
        .env("DATABASE_URL", &env.db_url)
        .output()
        .await?;
    assert!(!bad.status.success());
    env.stop().await
}
