//! Common set-ups built through the public API only.

use anyhow::{Context, ensure};
use serde_json::json;

use crate::client::Client;
use crate::env::Env;

pub struct Person {
    pub id: String,
    pub key: String,
    pub client: Client,
}

/// Creates a user and an API key with `role` for them, over HTTP. Not for
/// `admin`: over HTTP that is a grant a second admin approves; a second
/// admin comes from the host ([`host_admin`]).
pub async fn person(env: &Env, username: &str, role: &str) -> anyhow::Result<Person> {
    ensure!(role != "admin", "an admin key over HTTP is a grant: use scenario::host_admin for {username}");
    let admin = env.admin();
    let user = admin.post("/users", json!({"username": username, "email": format!("{username}@example.test")})).await?;
    ensure!(user.status == 201, "create user {username}: {} {}", user.status, user.text);
    let id = user.s("id");
    let key = admin.post("/api-keys", json!({"user_id": id, "role": role, "name": "test"})).await?;
    ensure!(key.status == 201, "create key: {} {}", key.status, key.text);
    let key = key.s("key");
    Ok(Person { id, client: env.client(&key), key })
}

/// A second admin made on the host (`api keys create --role admin`), as
/// the operator does: independent of every admin made before.
pub async fn host_admin(env: &Env, username: &str) -> anyhow::Result<Person> {
    let made = env.host_admin(username).await?;
    Ok(Person { client: env.client(&made.key), id: made.id, key: made.key })
}

pub struct Shop {
    pub sender: Person,
    pub beneficiary: Person,
    pub category_id: String,
    pub merchant_id: String,
    pub mandate_id: String,
}

/// A sender, a beneficiary allowed to spend in category FOOD, a merchant in
/// it, and an ACTIVE mandate of `total` `currency` from sender to beneficiary.
pub async fn shop(env: &Env, total: &str, currency: &str) -> anyhow::Result<Shop> {
    let admin = env.admin();
    let sender = person(env, "alice", "sender").await?;
    let beneficiary = person(env, "bob", "beneficiary").await?;
    let cat = admin.post("/spend/categories", json!({"code": "FOOD", "label": "Food"})).await?;
    ensure!(cat.status == 201, "category: {}", cat.text);
    let category_id = cat.s("id");
    let m = admin.post("/spend/merchants", json!({"name": "Marché Central", "category_id": category_id})).await?;
    ensure!(m.status == 201, "merchant: {}", m.text);
    let merchant_id = m.s("id");
    let allow = admin.post("/spend/allow", json!({"owner_id": beneficiary.id, "category_id": category_id})).await?;
    ensure!(allow.status == 201, "allow: {}", allow.text);
    let mandate = sender
        .client
        .post(
            "/mandates",
            json!({
                "sender_id": sender.id, "beneficiary_id": beneficiary.id, "total_amount": total,
                "currency": currency, "expires_at": (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339(),
            }),
        )
        .await?;
    ensure!(mandate.status == 201, "mandate: {} {}", mandate.status, mandate.text);
    let mandate_id = mandate.s("id");
    Ok(Shop { sender, beneficiary, category_id, merchant_id, mandate_id })
}

impl Shop {
    pub fn purchase_body(&self, amount: &str, currency: &str) -> serde_json::Value {
        json!({"sender_id": self.sender.id, "beneficiary_id": self.beneficiary.id, "merchant_id": self.merchant_id,
               "amount": amount, "currency": currency})
    }

    pub async fn buy(&self, key: &str, amount: &str) -> anyhow::Result<crate::client::Reply> {
        let r = self.beneficiary.client.job("/spend/purchases", key, self.purchase_body(amount, "USD"), 20).await?;
        let id = r.s("job_id");
        let r = self.beneficiary.client.finished(&id, 30).await.context("waiting for the purchase")?;
        Ok(r)
    }
}

pub struct Deal {
    pub client: Person,
    pub provider: Person,
    pub escrow_id: String,
}

/// A client (sender) and a provider (beneficiary) with a DRAFT escrow of
/// `total` USD, deadline in 30 days.
pub async fn deal(env: &Env, total: &str) -> anyhow::Result<Deal> {
    let client = person(env, "client", "sender").await?;
    let provider = person(env, "provider", "beneficiary").await?;
    let e = client
        .client
        .post("/escrows", json!({
            "client_id": client.id, "provider_id": provider.id, "amount_total": total, "currency": "USD",
            "release_conditions": {"note": "test"}, "deadline_at": (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339(),
        }))
        .await?;
    ensure!(e.status == 201, "escrow: {} {}", e.status, e.text);
    Ok(Deal { escrow_id: e.s("id"), client, provider })
}

impl Deal {
    pub async fn deposit(&self, key: &str, amount: &str) -> anyhow::Result<crate::client::Reply> {
        self.client
            .client
            .job(&format!("/escrows/{}/deposit", self.escrow_id), key, json!({"amount": amount}), 20)
            .await
    }

    pub async fn milestone(
        &self,
        idx: i32,
        amount: &str,
        proof_type: &str,
        geofence: Option<(f64, f64, f64)>,
    ) -> anyhow::Result<crate::client::Reply> {
        let fence = geofence.map(|(lat, lng, r)| json!({"lat": lat, "lng": lng, "radius_m": r}));
        self.client
            .client
            .post(&format!("/escrows/{}/milestones", self.escrow_id), json!({"idx": idx, "label": format!("step {idx}"), "amount": amount, "proof_type": proof_type, "geofence": fence}))
            .await
    }

    pub async fn escrow(&self) -> anyhow::Result<crate::client::Reply> {
        self.client.client.get(&format!("/escrows/{}", self.escrow_id)).await
    }
}

/// Posts a webhook signed like the PSP does, with `secret` and `ts`.
pub async fn webhook(
    env: &Env,
    body: &str,
    event_id: Option<&str>,
    secret: Option<&str>,
    ts: i64,
) -> anyhow::Result<crate::client::Reply> {
    let ts = ts.to_string();
    let http = reqwest::Client::new();
    let mut r = http
        .post(format!("{}/psp/webhook", env.api_url))
        .header("content-type", "application/json")
        .header("X-PSP-Timestamp", &ts)
        .body(body.to_string());
    if let Some(secret) = secret {
        r = r.header("X-PSP-Signature", shared::psp::signature::sign(secret, &ts, body.as_bytes()));
    }
    if let Some(id) = event_id {
        r = r.header("X-PSP-Event-Id", id);
    }
    env.anonymous().send(r).await
}
