//! Bad input gets a clear problem body and changes nothing.

use e2e::scenario::shop;
use e2e::{Env, EnvOptions, Reply};
use serde_json::json;

async fn counts(env: &Env) -> anyhow::Result<(i64, i64, i64, i64)> {
    Ok(sqlx::query_as("SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM mandates), (SELECT count(*) FROM purchases), (SELECT count(*) FROM users)")
        .fetch_one(&env.pool)
        .await?)
}

fn expect(r: &Reply, status: u16, code: &str) {
    assert_eq!((r.status, r.code().as_str()), (status, code), "{}", r.text);
    assert!(r.is_problem(), "not a problem body: {} {}", r.content_type, r.text);
    assert!(r.body["title"].is_string() && r.body["detail"].is_string() && r.body["type"].is_string());
    assert_eq!(r.body["status"], json!(status));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_purchases_and_mandates_are_refused_and_change_nothing() -> anyhow::Result<()> {
    let env = Env::with(EnvOptions::default().workers(1)).await?;
    let shop = shop(&env, "100.00", "USD").await?;
    let bob = &shop.beneficiary.client;
    let alice = &shop.sender.client;
    let before = counts(&env).await?;
    let base = shop.purchase_body("10.00", "USD");
    let with = |k: &str, v: serde_json::Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let cases: Vec<(serde_json::Value, &str, &str)> = vec![
        (with("amount", json!("10.001")), "AMOUNT_INVALID", "amount"),
        (with("amount", json!("0")), "AMOUNT_INVALID", "amount"),
        (with("amount", json!("-5.00")), "AMOUNT_INVALID", "amount"),
        (with("amount", json!(-1)), "AMOUNT_INVALID", "amount"),
        (with("amount", json!("ten")), "AMOUNT_INVALID", "amount"),
        (with("amount", json!(true)), "AMOUNT_INVALID", "amount"),
        (with("amount", json!("99999999999999999999")), "AMOUNT_INVALID", "amount"),
        (with("currency", json!("GBP")), "CURRENCY_UNSUPPORTED", "currency"),
        (with("currency", json!(840)), "VALIDATION_ERROR", "currency"),
        (with("sender_id", json!("not-a-uuid")), "VALIDATION_ERROR", "sender_id"),
        (with("merchant_id", json!(12)), "VALIDATION_ERROR", "merchant_id"),
        (with("unexpected", json!(1)), "VALIDATION_ERROR", "unexpected"),
        (json!({"amount": "1.00", "currency": "USD"}), "VALIDATION_ERROR", "sender_id"),
    ];
    for (i, (body, code, field)) in cases.into_iter().enumerate() {
        let r = bob.job("/spend/purchases", &format!("bad{i}"), body, 0).await?;
        expect(&r, 422, code);
        let fields: Vec<&str> = r.body["errors"]
            .as_array()
            .map(|a| a.iter().filter_map(|e| e["field"].as_str()).collect())
            .unwrap_or_default();
        assert!(fields.contains(&field), "{field} not in {fields:?}");
    }
    // XOF has no minor unit.
    let r = bob
        .job(
            "/spend/purchases",
            "xof",
            with("currency", json!("XOF"))
                .as_object()
                .map(|o| {
                    let mut o = o.clone();
                    o.insert("amount".into(), json!("10.5"));
                    json!(o)
                })
                .unwrap_or_default(),
            0,
        )
        .await?;
    expect(&r, 422, "AMOUNT_INVALID");
    // Every error at once.
    let r =
        bob.job("/spend/purchases", "many", json!({"sender_id": 1, "amount": "1.001", "currency": "USD"}), 0).await?;
    assert!(r.body["errors"].as_array().map(Vec::len).unwrap_or(0) >= 4, "{}", r.text);
    // Malformed JSON, not an object, wrong content type, oversize body.
    let r = bob.post_raw("/mandates", "application/json", b"{\"sender_id\": ".to_vec()).await?;
    expect(&r, 422, "VALIDATION_ERROR");
    let r = alice.post_raw("/mandates", "application/json", b"[1, 2]".to_vec()).await?;
    expect(&r, 422, "VALIDATION_ERROR");
    let r = alice.post_raw("/mandates", "text/plain", b"hello".to_vec()).await?;
    expect(&r, 415, "UNSUPPORTED_MEDIA_TYPE");
    let big = format!("{{\"note\": \"{}\"}}", "x".repeat(200 * 1024));
    let r = alice.post_raw("/mandates", "application/json", big.into_bytes()).await?;
    expect(&r, 413, "PAYLOAD_TOO_LARGE");
    // Mandate fields.
    let expires = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let r = alice.post("/mandates", json!({"sender_id": shop.sender.id, "beneficiary_id": shop.beneficiary.id, "total_amount": "1", "currency": "USD", "expires_at": "tomorrow"})).await?;
    expect(&r, 422, "VALIDATION_ERROR");
    let r = alice.post("/mandates", json!({"sender_id": shop.sender.id, "beneficiary_id": shop.beneficiary.id, "total_amount": "1", "currency": "USD", "expires_at": expires, "allowed_merchant_id": uuid::Uuid::new_v4()})).await?;
    expect(&r, 404, "MERCHANT_NOT_FOUND");
    // Unknown ids are 404s with the object's code.
    expect(&alice.get(&format!("/mandates/{}", uuid::Uuid::new_v4())).await?, 404, "MANDATE_NOT_FOUND");
    expect(&alice.get("/mandates/12").await?, 404, "NOT_FOUND");
    expect(&alice.get("/no/such/route").await?, 404, "NOT_FOUND");
    expect(&alice.delete("/mandates").await?, 405, "METHOD_NOT_ALLOWED");
    expect(&alice.get("/mandates?status=WHATEVER").await?, 422, "VALIDATION_ERROR");
    expect(&alice.get("/mandates?limit=0").await?, 422, "VALIDATION_ERROR");
    assert_eq!(counts(&env).await?, before, "bad input changed something");
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_names_a_key_twice_is_a_422_naming_it_and_changes_nothing() -> anyhow::Result<()> {
    let env = Env::with(EnvOptions::default().workers(1)).await?;
    let shop = shop(&env, "100.00", "USD").await?;
    let carol = e2e::scenario::person(&env, "carol", "beneficiary").await?;
    let alice = &shop.sender.client;
    let expires = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let before = counts(&env).await?;
    let others = "SELECT (SELECT count(*) FROM escrows), (SELECT count(*) FROM spend_categories)";
    let others_before: (i64, i64) = sqlx::query_as(others).fetch_one(&env.pool).await?;
    let field_of = |r: &Reply| r.body["errors"][0]["field"].as_str().unwrap_or("").to_string();
    // Issue #15: this made a 999.00 mandate (a gateway reading the first
    // value would have seen 1.00).
    let mandate = format!(
        r#"{{"sender_id": "{}", "beneficiary_id": "{}", "total_amount": "1.00", "total_amount": "999.00", "currency": "USD", "expires_at": "{expires}"}}"#,
        shop.sender.id, carol.id
    );
    let r = alice.post_raw("/mandates", "application/json", mandate.into_bytes()).await?;
    expect(&r, 422, "VALIDATION_ERROR");
    assert_eq!(field_of(&r), "total_amount", "{}", r.text);
    // At any depth, with its path.
    let escrow = format!(
        r#"{{"client_id": "{}", "provider_id": "{}", "amount_total": "5.00", "currency": "USD", "deadline_at": "2100-01-01T00:00:00Z", "release_conditions": {{"steps": [{{"pay": "a"}}, {{"pay": "a", "pay": "b"}}]}}}}"#,
        shop.sender.id, carol.id
    );
    let r = alice.post_raw("/escrows", "application/json", escrow.into_bytes()).await?;
    expect(&r, 422, "VALIDATION_ERROR");
    assert_eq!(field_of(&r), "release_conditions.steps[1].pay", "{}", r.text);
    // A job body: no job row, no purchase.
    let purchase = shop.purchase_body("10.00", "USD").to_string().replacen('{', r#"{"amount": "90.00", "#, 1);
    let r = shop.beneficiary.client.job_raw("/spend/purchases", "dup-amount", &purchase, 0).await?;
    expect(&r, 422, "VALIDATION_ERROR");
    assert_eq!(field_of(&r), "amount", "{}", r.text);
    // An escaped spelling of the same key is the same key.
    let r = env
        .admin()
        .post_raw("/spend/categories", "application/json", br#"{"code": "A", "\u0063ode": "B", "label": "x"}"#.to_vec())
        .await?;
    expect(&r, 422, "VALIDATION_ERROR");
    assert_eq!(field_of(&r), "code", "{}", r.text);
    assert_eq!(counts(&env).await?, before, "nothing was written");
    let others_after: (i64, i64) = sqlx::query_as(others).fetch_one(&env.pool).await?;
    assert_eq!(others_after, others_before, "no escrow, no category");
    env.stop().await
}
