//! Four eyes on admin power, end to end with the real binaries: the
//! issue's puppet attack over HTTP (a user, an admin key for it, the
//! puppet approving its maker's 900 grains) no longer passes; a second
//! admin comes from the host (`api keys create --role admin`); an admin key
//! over HTTP waits for that second admin and its secret works only once
//! approved.

use e2e::Env;
use e2e::scenario::{host_admin, person};
use serde_json::json;

async fn count(env: &Env, sql: &str, user: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string())).bind(user).fetch_one(&env.pool).await?)
}

async fn admin_keys_of(env: &Env, user: &str) -> anyhow::Result<i64> {
    count(env, "SELECT count(*) FROM api_keys WHERE user_id = $1::uuid AND role = 'admin'", user).await
}

/// The bootstrap admin's user id.
async fn admin_me(env: &Env) -> anyhow::Result<serde_json::Value> {
    Ok(env.admin().get("/me").await?.body["user"]["id"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_puppet_admin_made_over_http_cannot_pass_the_saka_dual_approval() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let bob = person(&env, "bob", "beneficiary").await?;
    // The attack: a puppet user, then an admin key for it.
    let puppet = admin.post("/users", json!({"username": "puppet", "email": "puppet@example.test"})).await?;
    assert_eq!(puppet.status, 201, "{}", puppet.text);
    let puppet_id = puppet.s("id");
    let grant_body = json!({"user_id": puppet_id, "role": "admin", "name": "puppet"});
    // With only the bootstrap admin, refused: nobody could approve it.
    let refused = admin.post("/api-keys", grant_body.clone()).await?;
    assert_eq!((refused.status, refused.code().as_str()), (409, "ADMIN_GRANT_NEEDS_SECOND_ADMIN"), "{}", refused.text);
    assert!(refused.s("detail").contains("api keys create"), "{}", refused.text);
    assert_eq!(admin_keys_of(&env, &puppet_id).await?, 0);
    assert_eq!(count(&env, "SELECT count(*) FROM admin_grants WHERE user_id = $1::uuid", &puppet_id).await?, 0);
    // The operator makes a second admin on the host.
    let second = host_admin(&env, "root2").await?;
    assert_eq!(second.client.get("/me").await?.body["key"]["role"], json!("admin"));
    // Now the grant is a request: 202, pending, its secret shown once.
    let asked = admin.post("/api-keys", grant_body).await?;
    assert_eq!(asked.status, 202, "{}", asked.text);
    assert_eq!((asked.s("status"), asked.s("code")), ("PENDING_APPROVAL".into(), "ADMIN_GRANT_PENDING".into()));
    let grant = asked.s("id");
    assert_eq!(asked.s("href"), format!("/admin-grants/{grant}"));
    let location = asked.headers.get("location").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert_eq!(location, format!("/admin-grants/{grant}"));
    assert_eq!((asked.s("user_id"), asked.s("role")), (puppet_id.clone(), "admin".to_string()));
    let puppet_key = asked.s("key");
    assert!(puppet_key.starts_with(&asked.s("prefix")) && !asked.s("request_expires_at").is_empty());
    // Pending: no key row, the secret does not authenticate, nothing to approve with.
    assert_eq!(admin_keys_of(&env, &puppet_id).await?, 0);
    let puppet_client = env.client(&puppet_key);
    let me = puppet_client.get("/me").await?;
    assert_eq!((me.status, me.code().as_str()), (401, "AUTH_INVALID"));
    // The requester cannot approve their own grant.
    let own = admin.post(&format!("/admin-grants/{grant}/approve"), json!({})).await?;
    assert_eq!((own.status, own.code().as_str()), (403, "ADMIN_SELF_APPROVAL"), "{}", own.text);
    let waiting = second.client.get("/admin-grants?status=PENDING_APPROVAL").await?;
    assert_eq!(waiting.body["items"][0]["id"], json!(grant), "{}", waiting.text);
    assert!(!waiting.text.contains(&puppet_key), "the secret is never listed");

    // The requester asks 900 grains for bob: waits for a second admin.
    let r =
        admin.job("/saka/adjustments", "adj-900", json!({"user_id": bob.id, "amount": 900, "note": "x"}), 20).await?;
    assert_eq!(r.body.pointer("/result/status"), Some(&json!("PENDING_APPROVAL")), "{}", r.text);
    let adjustment = r.body.pointer("/result/id").and_then(|v| v.as_str()).unwrap_or("").to_string();
    // The puppet's pending key cannot approve it.
    let r = puppet_client.job(&format!("/saka/adjustments/{adjustment}/approve"), "p1", json!({}), 20).await?;
    assert_eq!((r.status, r.code().as_str()), (401, "AUTH_INVALID"), "{}", r.text);

    // Even once the second admin approves the puppet's power, the puppet's
    // key comes from the requester: it cannot approve the requester's grains.
    let ok = second.client.post(&format!("/admin-grants/{grant}/approve"), json!({})).await?;
    assert_eq!((ok.status, ok.s("status").as_str()), (200, "APPROVED"), "{}", ok.text);
    assert_eq!(ok.s("approved_by"), second.id);
    assert!(!ok.text.contains(&puppet_key) && !ok.s("key_id").is_empty());
    assert_eq!(puppet_client.get("/me").await?.body["key"]["role"], json!("admin"));
    // The key's listing ties it to who asked for it and who approved it.
    let listed = admin.get(&format!("/api-keys?user_id={puppet_id}")).await?;
    let k = &listed.body["items"][0];
    assert_eq!((k["origin"].clone(), k["grant_id"].clone()), (json!("api"), json!(grant)), "{}", listed.text);
    assert_eq!((k["granted_by"].clone(), k["approved_by"].clone()), (admin_me(&env).await?, json!(second.id)));
    let r = puppet_client.job(&format!("/saka/adjustments/{adjustment}/approve"), "p2", json!({}), 20).await?;
    assert_eq!((r.s("status").as_str(), r.code().as_str()), ("failed", "APPROVER_NOT_INDEPENDENT"), "{}", r.text);
    let a = admin.get(&format!("/saka/adjustments/{adjustment}")).await?;
    assert_eq!(a.s("status"), "PENDING_APPROVAL");
    let w = admin.get(&format!("/saka/wallets/{}", bob.id)).await?;
    assert_eq!(w.body["balance"], json!(0), "{}", w.text);
    let ledger = count(&env, "SELECT count(*) FROM saka_ledger WHERE user_id = $1::uuid", &bob.id).await?;
    assert_eq!(ledger, 0);

    // Every admin grant raised ADMIN_GRANTED: the bootstrap key, the host's,
    // the request and its approval.
    let alerts = admin.get("/alerts?type=ADMIN_GRANTED").await?;
    let mut seen: Vec<String> = alerts.body["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| {
                    let p = &i["payload"];
                    format!(
                        "{}:{}",
                        p["via"].as_str().unwrap_or(""),
                        p["stage"].as_str().or(p["origin"].as_str()).unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    seen.sort();
    assert_eq!(seen, ["api:approved", "api:requested", "host:bootstrap", "host:cli"], "{}", alerts.text);
    // The independent second admin's approval counts.
    let r = second.client.job(&format!("/saka/adjustments/{adjustment}/approve"), "s1", json!({}), 20).await?;
    assert_eq!(r.body.pointer("/result/status"), Some(&json!("APPLIED")), "{}", r.text);
    let w = admin.get(&format!("/saka/wallets/{}", bob.id)).await?;
    assert_eq!(w.body["balance"], json!(900));
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_can_be_withdrawn_and_a_decided_one_is_final() -> anyhow::Result<()> {
    let env = Env::with(e2e::EnvOptions::default().workers(0)).await?;
    let admin = env.admin();
    let second = host_admin(&env, "root2").await?;
    let sue = person(&env, "sue", "support").await?;
    let carol = admin.post("/users", json!({"username": "carol", "email": "carol@example.test"})).await?;
    let asked = admin.post("/api-keys", json!({"user_id": carol.s("id"), "role": "admin", "name": "c"})).await?;
    assert_eq!(asked.status, 202, "{}", asked.text);
    let grant = asked.s("id");
    // Support reads; only an admin decides.
    assert_eq!(sue.client.get(&format!("/admin-grants/{grant}")).await?.s("status"), "PENDING_APPROVAL");
    let r = sue.client.post(&format!("/admin-grants/{grant}/approve"), json!({})).await?;
    assert_eq!((r.status, r.code().as_str()), (403, "FORBIDDEN"));
    let r = sue.client.post("/api-keys", json!({"user_id": carol.s("id"), "role": "admin", "name": "c"})).await?;
    assert_eq!(r.status, 403);
    // The requester withdraws it: final.
    let r = admin.post(&format!("/admin-grants/{grant}/reject"), json!({"note": "wrong person"})).await?;
    assert_eq!((r.status, r.s("status").as_str(), r.s("decision_note").as_str()), (200, "REJECTED", "wrong person"));
    let r = second.client.post(&format!("/admin-grants/{grant}/approve"), json!({})).await?;
    assert_eq!((r.status, r.code().as_str()), (409, "ADMIN_GRANT_NOT_PENDING"), "{}", r.text);
    assert_eq!(env.client(&asked.s("key")).get("/me").await?.code(), "AUTH_INVALID");
    assert_eq!(admin_keys_of(&env, &carol.s("id")).await?, 0);
    let r = admin.get(&format!("/admin-grants/{}", uuid::Uuid::new_v4())).await?;
    assert_eq!((r.status, r.code().as_str()), (404, "NOT_FOUND"));
    // Other roles are still made at once.
    let k = admin.post("/api-keys", json!({"user_id": carol.s("id"), "role": "support", "name": "s"})).await?;
    assert_eq!((k.status, k.s("role").as_str()), (201, "support"), "{}", k.text);
    env.stop().await
}
