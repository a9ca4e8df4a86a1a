//! The people and catalogue a soak starts from, made through the API (but
//! the second admin, for approvals, made on the host and passed in): a
//! support agent, a shared pair (one
//! mandate every actor spends at once) and a pair per actor, a category
//! with a merchant, a certified merchant, a merchant nobody may use.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::http::{Answer, Http};

/// A user and their API key.
#[derive(Clone, Debug)]
pub struct Person {
    pub id: String,
    pub key: String,
}

/// A sender and the beneficiary they seal mandates and escrows to.
#[derive(Clone, Debug)]
pub struct Pair {
    pub sender: Person,
    pub beneficiary: Person,
}

pub struct World {
    pub admin: String,
    pub admin2: String,
    pub support: String,
    pub shared: Pair,
    pub pairs: Vec<Pair>,
    /// Merchants: allowed by category, certified, allowed to nobody.
    pub merchants: [String; 3],
    pub users: Vec<String>,
}

impl World {
    pub async fn build(http: &Http, admin: &str, admin2: &str, actors: usize, run: &str) -> Result<Self> {
        let setup = Setup { http, admin };
        let support = setup.person(&format!("{run}-help"), "support").await?.key;
        let food = setup.post("/spend/categories", json!({"code": format!("FOOD-{run}"), "label": "Food"})).await?;
        let food = food.s("/id");
        let tools = setup.post("/spend/categories", json!({"code": format!("TOOLS-{run}"), "label": "Tools"})).await?;
        let market =
            setup.post("/spend/merchants", json!({"name": format!("Marché {run}"), "category_id": food})).await?;
        let certified =
            setup.post("/spend/merchants", json!({"name": format!("Certified {run}"), "is_certified": true})).await?;
        let hardware = setup
            .post("/spend/merchants", json!({"name": format!("Hardware {run}"), "category_id": tools.s("/id")}))
            .await?;
        let mut pairs = Vec::new();
        for n in 0..=actors {
            pairs.push(setup.pair(&format!("{run}-{n}"), &food).await?);
        }
        let shared = pairs.remove(0);
        let mut users: Vec<String> =
            pairs.iter().flat_map(|p| [p.sender.id.clone(), p.beneficiary.id.clone()]).collect();
        users.push(shared.beneficiary.id.clone());
        // One receiver every sender may pay: certified.
        setup.post("/certified", json!({"user_id": shared.beneficiary.id, "level": "GOLD"})).await?;
        Ok(Self {
            admin: admin.to_string(),
            admin2: admin2.to_string(),
            support,
            shared,
            pairs,
            merchants: [market.s("/id"), certified.s("/id"), hardware.s("/id")],
            users,
        })
    }
}

struct Setup<'a> {
    http: &'a Http,
    admin: &'a str,
}

impl Setup<'_> {
    /// A set-up call as admin: retried through faults, must succeed.
    async fn post(&self, path: &str, body: Value) -> Result<Answer> {
        self.post_as(self.admin, path, body).await
    }

    async fn post_as(&self, key: &str, path: &str, body: Value) -> Result<Answer> {
        let url = format!("{}{path}", self.http.api);
        let answer = self
            .http
            .call(&format!("set-up POST {path}"), true, &|c| c.post(&url).bearer_auth(key).json(&body))
            .await
            .with_context(|| format!("set-up POST {path}: no answer"))?;
        if !answer.ok() {
            bail!("set-up POST {path}: HTTP {} {}", answer.status, answer.body);
        }
        Ok(answer)
    }

    async fn person(&self, username: &str, role: &str) -> Result<Person> {
        let user = self.post("/users", json!({"username": username, "email": format!("{username}@soak.test")})).await?;
        let id = user.s("/id");
        let key = self.post("/api-keys", json!({"user_id": id, "role": role, "name": "soak"})).await?;
        Ok(Person { id, key: key.s("/key") })
    }

    /// A sender and a beneficiary allowed to spend on `food`, the sender
    /// allow-listing the beneficiary, and an ACTIVE mandate between them.
    async fn pair(&self, name: &str, food: &str) -> Result<Pair> {
        let sender = self.person(&format!("{name}-s"), "sender").await?;
        let beneficiary = self.person(&format!("{name}-b"), "beneficiary").await?;
        self.post("/spend/allow", json!({"owner_id": beneficiary.id, "category_id": food})).await?;
        self.post("/allowlist", json!({"owner_id": sender.id, "recipient_id": beneficiary.id})).await?;
        self.post_as(&sender.key, "/mandates", mandate_body(&sender.id, &beneficiary.id, chrono::Duration::days(30)))
            .await?;
        Ok(Pair { sender, beneficiary })
    }
}

/// A mandate of 500.00 USD expiring `expires_in` from now.
pub fn mandate_body(sender: &str, beneficiary: &str, expires_in: chrono::Duration) -> Value {
    json!({
        "sender_id": sender, "beneficiary_id": beneficiary, "total_amount": "500.00", "currency": "USD",
        "expires_at": (chrono::Utc::now() + expires_in).to_rfc3339(),
    })
}
