//! Purchases against sealed mandates, end to end: real api and worker
//! processes, real Postgres and Redis.

use std::collections::HashMap;

use e2e::scenario::{person, shop};
use e2e::{Env, EnvOptions};
use rust_decimal_free::dec;
use serde_json::json;

mod rust_decimal_free {
    /// Parses "100.00" into cents, so the tests compare money exactly.
    pub fn dec(s: &str) -> i64 {
        let (int, frac) = s.split_once('.').unwrap_or((s, "0"));
        let frac = format!("{frac:0<2}");
        int.parse::<i64>().unwrap_or(i64::MIN) * 100 + frac[..2].parse::<i64>().unwrap_or(i64::MIN)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_parallel_purchases_never_overspend() -> anyhow::Result<()> {
    let env = Env::with(EnvOptions::default().workers(2)).await?;
    let shop = shop(&env, "100.00", "USD").await?;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let client = shop.beneficiary.client.clone();
        let body = shop.purchase_body("10.00", "USD");
        tasks.push(tokio::spawn(async move { client.job("/spend/purchases", &format!("p{i}"), body, 0).await }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        let r = t.await??;
        assert_eq!(r.status, 202, "{}", r.text);
        ids.push(r.s("job_id"));
    }
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    for id in &ids {
        let r = shop.beneficiary.client.finished(id, 60).await?;
        let key = if r.s("status") == "succeeded" {
            "succeeded".to_string()
        } else {
            format!("{}:{}", r.s("status"), r.code())
        };
        *outcomes.entry(key).or_default() += 1;
    }
    assert_eq!(outcomes.get("succeeded"), Some(&10), "{outcomes:?}");
    assert_eq!(outcomes.get("failed:MANDATE_EXHAUSTED"), Some(&40), "{outcomes:?}");
    let m = shop.sender.client.get(&format!("/mandates/{}", shop.mandate_id)).await?;
    assert_eq!(m.s("status"), "CONSUMED");
    assert_eq!(m.s("spent_amount"), "100.00");
    assert_eq!(m.s("remaining_amount"), "0.00");
    // The invariant, from the database itself.
    let (spent, sum, n): (String, String, i64) = sqlx::query_as(
        "SELECT m.spent_amount::text, coalesce(sum(p.amount), 0)::text, count(p.id) FROM mandates m LEFT JOIN purchases p ON p.mandate_id = m.id WHERE m.id = $1::uuid GROUP BY m.id",
    )
    .bind(&shop.mandate_id)
    .fetch_one(&env.pool)
    .await?;
    assert_eq!(dec(&spent), dec(&sum));
    assert_eq!(n, 10);
    let consumed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'MANDATE_CONSUMED' AND entity_id = $1")
            .bind(&shop.mandate_id)
            .fetch_one(&env.pool)
            .await?;
    assert_eq!(consumed, 10);
    let refused: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'PURCHASE_REFUSED'")
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(refused, 40);
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mandate_sealed_to_its_sender_cannot_be_used_by_another_sender() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let shop = shop(&env, "100.00", "USD").await?;
    let mallory = person(&env, "mallory", "sender").await?;
    // Bob names another sender: no mandate from mallory to bob exists.
    let mut body = shop.purchase_body("10.00", "USD");
    body["sender_id"] = json!(mallory.id);
    let r = shop.beneficiary.client.job("/spend/purchases", "x1", body, 20).await?;
    assert_eq!(r.s("status"), "failed", "{}", r.text);
    assert_eq!(r.code(), "MANDATE_REQUIRED");
    // Another beneficiary cannot spend bob's mandate either.
    let eve = person(&env, "eve", "beneficiary").await?;
    let r = eve.client.job("/spend/purchases", "x2", shop.purchase_body("10.00", "USD"), 20).await?;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(r.code(), "FORBIDDEN");
    // A sender cannot buy in the beneficiary's name.
    let r = shop.sender.client.job("/spend/purchases", "x3", shop.purchase_body("10.00", "USD"), 20).await?;
    assert_eq!(r.status, 403);
    // Another currency is another mandate: none in EUR.
    let r = shop.beneficiary.client.job("/spend/purchases", "x4", shop.purchase_body("10.00", "EUR"), 20).await?;
    assert_eq!(r.code(), "MANDATE_REQUIRED");
    let m = shop.sender.client.get(&format!("/mandates/{}", shop.mandate_id)).await?;
    assert_eq!(m.s("spent_amount"), "0.00");
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_purchase_rule_refuses_with_its_code_in_order() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let shop = shop(&env, "100.00", "USD").await?;
    let bob = &shop.beneficiary.client;
    let buy = |key: &'static str, body: serde_json::Value| {
        let bob = bob.clone();
        async move { bob.job("/spend/purchases", key, body, 20).await }
    };
    // 1. Unknown merchant.
    let mut body = shop.purchase_body("5.00", "USD");
    body["merchant_id"] = json!(uuid::Uuid::new_v4());
    assert_eq!(buy("r1", body).await?.code(), "MERCHANT_NOT_FOUND");
    // 2. A category that is not the merchant's.
    let other_cat = admin.post("/spend/categories", json!({"code": "FUEL", "label": "Fuel"})).await?.s("id");
    let mut body = shop.purchase_body("5.00", "USD");
    body["category_id"] = json!(other_cat);
    assert_eq!(buy("r2", body).await?.code(), "CATEGORY_MISMATCH");
    // 5. Usage: a merchant outside bob's allowed categories and not certified.
    let pump = admin.post("/spend/merchants", json!({"name": "Pump", "category_id": other_cat})).await?.s("id");
    let mut body = shop.purchase_body("5.00", "USD");
    body["merchant_id"] = json!(pump);
    assert_eq!(buy("r3", body.clone()).await?.code(), "UNAUTHORIZED_USAGE");
    // A certified merchant needs no rule.
    let certified = admin
        .post("/spend/merchants", json!({"name": "Certified Pump", "category_id": other_cat, "is_certified": true}))
        .await?
        .s("id");
    let mut body = shop.purchase_body("5.00", "USD");
    body["merchant_id"] = json!(certified);
    let r = buy("r4", body).await?;
    assert_eq!(r.s("status"), "succeeded", "{}", r.text);
    assert_eq!(r.body.pointer("/result/category_id").and_then(|v| v.as_str()), Some(other_cat.as_str()));
    // The purchase is readable by its parties and support, not by others.
    let pid = r.body.pointer("/result/id").and_then(|v| v.as_str()).unwrap_or("").to_string();
    assert_eq!(bob.get(&format!("/spend/purchases/{pid}")).await?.status, 200);
    assert_eq!(shop.sender.client.get(&format!("/spend/purchases/{pid}")).await?.status, 200);
    let stranger = person(&env, "stranger", "beneficiary").await?;
    assert_eq!(stranger.client.get(&format!("/spend/purchases/{pid}")).await?.code(), "PURCHASE_NOT_FOUND");
    // Exhaustion, exactly reaching the total is allowed.
    assert_eq!(buy("r5", shop.purchase_body("95.01", "USD")).await?.code(), "MANDATE_EXHAUSTED");
    let r = buy("r6", shop.purchase_body("95.00", "USD")).await?;
    assert_eq!(r.s("status"), "succeeded", "{}", r.text);
    let m = bob.get(&format!("/mandates/{}", shop.mandate_id)).await?;
    assert_eq!((m.s("status").as_str(), m.s("spent_amount").as_str()), ("CONSUMED", "100.00"));
    // CONSUMED is terminal: the next purchase is told the money is spent.
    assert_eq!(buy("r7", shop.purchase_body("1.00", "USD")).await?.code(), "MANDATE_EXHAUSTED");
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandate_restrictions_and_expiry_are_enforced_in_the_job() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let admin = env.admin();
    let alice = person(&env, "alice", "sender").await?;
    let bob = person(&env, "bob", "beneficiary").await?;
    let food = admin.post("/spend/categories", json!({"code": "FOOD", "label": "Food"})).await?.s("id");
    let fuel = admin.post("/spend/categories", json!({"code": "FUEL", "label": "Fuel"})).await?.s("id");
    let market = admin
        .post("/spend/merchants", json!({"name": "Market", "category_id": food, "is_certified": true}))
        .await?
        .s("id");
    let grocer = admin
        .post("/spend/merchants", json!({"name": "Grocer", "category_id": food, "is_certified": true}))
        .await?
        .s("id");
    let pump = admin
        .post("/spend/merchants", json!({"name": "Pump", "category_id": fuel, "is_certified": true}))
        .await?
        .s("id");
    let expires = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let mk = |currency: &str, merchant: Option<&str>, category: Option<&str>| {
        json!({"sender_id": alice.id, "beneficiary_id": bob.id, "total_amount": "50", "currency": currency,
               "allowed_merchant_id": merchant, "allowed_category_id": category, "expires_at": expires})
    };
    let m_usd = alice.client.post("/mandates", mk("USD", Some(&market), None)).await?;
    assert_eq!(m_usd.status, 201, "{}", m_usd.text);
    let m_eur = alice.client.post("/mandates", mk("EUR", None, Some(&food))).await?;
    assert_eq!(m_eur.status, 201, "{}", m_eur.text);
    let body = |merchant: &str, currency: &str| json!({"sender_id": alice.id, "beneficiary_id": bob.id, "merchant_id": merchant, "amount": "1", "currency": currency});
    let r = bob.client.job("/spend/purchases", "a", body(&grocer, "USD"), 20).await?;
    assert_eq!(r.code(), "MANDATE_MERCHANT_FORBIDDEN");
    let r = bob.client.job("/spend/purchases", "b", body(&pump, "EUR"), 20).await?;
    assert_eq!(r.code(), "MANDATE_CATEGORY_FORBIDDEN");
    let r = bob.client.job("/spend/purchases", "c", body(&grocer, "EUR"), 20).await?;
    assert_eq!(r.s("status"), "succeeded", "{}", r.text);
    // Expiry is checked at use, not only by the cron job.
    sqlx::query("UPDATE mandates SET expires_at = now() - interval '1 second' WHERE id = $1::uuid")
        .bind(m_usd.s("id"))
        .execute(&env.pool)
        .await?;
    let r = bob.client.job("/spend/purchases", "d", body(&market, "USD"), 20).await?;
    assert_eq!(r.code(), "MANDATE_EXPIRED", "{}", r.text);
    let m = alice.client.get(&format!("/mandates/{}", m_usd.s("id"))).await?;
    assert_eq!(m.s("status"), "EXPIRED");
    let audit = admin.get(&format!("/audit?entity=mandate&entity_id={}&action=MANDATE_EXPIRED", m_usd.s("id"))).await?;
    assert_eq!(audit.body["items"].as_array().map(Vec::len), Some(1), "{}", audit.text);
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandate_creation_rules_and_revocation() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let shop = shop(&env, "100.00", "USD").await?;
    let alice = &shop.sender;
    let expires = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let body = |b: &str, exp: &str| json!({"sender_id": alice.id, "beneficiary_id": b, "total_amount": "10", "currency": "USD", "expires_at": exp});
    // One ACTIVE mandate per pair and currency.
    let r = alice.client.post("/mandates", body(&shop.beneficiary.id, &expires)).await?;
    assert_eq!((r.status, r.code().as_str()), (409, "ACTIVE_MANDATE_EXISTS"), "{}", r.text);
    let r = alice.client.post("/mandates", body(&alice.id, &expires)).await?;
    assert_eq!((r.status, r.code().as_str()), (422, "MANDATE_SELF"));
    let r = alice.client.post("/mandates", body(&shop.beneficiary.id, "2001-01-01T00:00:00Z")).await?;
    assert_eq!((r.status, r.code().as_str()), (422, "MANDATE_EXPIRES_IN_PAST"));
    let r = alice.client.post("/mandates", body(&uuid::Uuid::new_v4().to_string(), &expires)).await?;
    assert_eq!((r.status, r.code().as_str()), (404, "USER_NOT_FOUND"));
    // A sender acts only for themself.
    let carol = person(&env, "carol", "sender").await?;
    let r = carol.client.post("/mandates", body(&shop.beneficiary.id, &expires)).await?;
    assert_eq!((r.status, r.code().as_str()), (403, "FORBIDDEN"));
    // Others do not see the mandate at all.
    let r = carol.client.get(&format!("/mandates/{}", shop.mandate_id)).await?;
    assert_eq!(r.status, 404);
    let list = carol.client.get("/mandates").await?;
    assert_eq!(list.body["items"].as_array().map(Vec::len), Some(0));
    let list = shop.beneficiary.client.get("/mandates?status=ACTIVE").await?;
    assert_eq!(list.body["items"].as_array().map(Vec::len), Some(1));
    // The beneficiary cannot revoke; the sender can; then nothing can be spent.
    let r = shop.beneficiary.client.post(&format!("/mandates/{}/revoke", shop.mandate_id), json!({})).await?;
    assert_eq!(r.status, 403);
    let r = alice.client.post(&format!("/mandates/{}/revoke", shop.mandate_id), json!({})).await?;
    assert_eq!((r.status, r.s("status").as_str()), (200, "REVOKED"), "{}", r.text);
    let r = alice.client.post(&format!("/mandates/{}/revoke", shop.mandate_id), json!({})).await?;
    assert_eq!(r.status, 409);
    let r = shop.buy("after-revoke", "1.00").await?;
    assert_eq!(r.code(), "MANDATE_REQUIRED");
    // A new mandate for the pair is allowed once the old one is terminal.
    let r = alice.client.post("/mandates", body(&shop.beneficiary.id, &expires)).await?;
    assert_eq!(r.status, 201, "{}", r.text);
    let audit = env.admin().get(&format!("/audit?entity_id={}", shop.mandate_id)).await?;
    let actions: Vec<&str> = audit.body["items"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["action"].as_str()).collect())
        .unwrap_or_default();
    assert!(actions.contains(&"MANDATE_CREATED") && actions.contains(&"MANDATE_REVOKED"), "{actions:?}");
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_expires_due_mandates_as_a_job() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let shop = shop(&env, "100.00", "USD").await?;
    sqlx::query("UPDATE mandates SET expires_at = now() - interval '1 minute' WHERE id = $1::uuid")
        .bind(&shop.mandate_id)
        .execute(&env.pool)
        .await?;
    let r = shop.sender.client.job("/mandates/cleanup", "not-mine", json!({}), 0).await?;
    assert_eq!(r.status, 403);
    let r = env.admin().job("/mandates/cleanup", "sweep-1", json!({}), 20).await?;
    assert_eq!((r.status, r.s("status").as_str()), (200, "succeeded"), "{}", r.text);
    assert_eq!(r.body.pointer("/result/expired").and_then(|v| v.as_i64()), Some(1));
    let m = shop.sender.client.get(&format!("/mandates/{}", shop.mandate_id)).await?;
    assert_eq!(m.s("status"), "EXPIRED");
    env.stop().await
}
