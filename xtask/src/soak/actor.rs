//! One actor of the workload: a loop of random operations through the
//! HTTP API, drawn from its own seeded stream, until the soak stops.
//! Purchases on the shared mandate and on its own, mandate renewals,
//! escrows carried from funding (psp-sim `POST /fundings` or a deposit) to
//! proofs, decisions, payouts, re-drives and release or refund, usage
//! spends, transfers, SAKA harvests, spends and adjustments (with a second
//! admin's approval), replays of captured PSP webhooks, late failures of
//! settled payments, and replays of its own job requests. Refusals are
//! expected answers; what the API must never do is a finding.

use std::sync::Arc;

use serde_json::{Value, json};

use super::escrow::EscrowRun;
use super::http::{Answer, Http};
use super::rng::Rng;
use super::world::{Pair, World, mandate_body};

pub struct Actor {
    pub n: usize,
    pub http: Http,
    pub world: Arc<World>,
    pub pair: Pair,
    pub rng: Rng,
    pub count: u64,
    pub escrow: Option<EscrowRun>,
    /// An adjustment waiting for a second admin (for races on approval).
    pub pending_adjustment: Option<String>,
    /// The last JSON job request: (path, key, idempotency key, body, job id).
    last_job: Option<(String, String, String, Value, String)>,
}

const OPS: [(&str, u64); 16] = [
    ("purchase_shared", 14),
    ("purchase_own", 14),
    ("renew_mandate", 3),
    ("escrow_step", 30),
    ("usage_spend", 8),
    ("transfer", 5),
    ("saka_harvest", 7),
    ("saka_spend", 3),
    ("saka_adjust", 4),
    ("webhook_replay", 5),
    ("late_failure", 2),
    ("job_replay", 3),
    ("bad_request", 2),
    ("same_key_at_once", 3),
    ("webhook_burst", 2),
    ("race", 4),
];

impl Actor {
    pub fn new(n: usize, http: Http, world: Arc<World>, seed: u64) -> Self {
        let pair = world.pairs[n].clone();
        Self {
            n,
            http,
            world,
            pair,
            rng: Rng::fork(seed, n as u64 + 1),
            count: 0,
            escrow: None,
            last_job: None,
            pending_adjustment: None,
        }
    }

    pub async fn run(mut self) {
        while !self.http.shared.stopping() {
            let weights: Vec<u64> = OPS.iter().map(|(_, w)| *w).collect();
            let (name, _) = OPS[self.rng.weighted(&weights)];
            *self.http.shared.tally().ops.entry(name).or_insert(0) += 1;
            match name {
                "purchase_shared" => self.purchase(true).await,
                "purchase_own" => self.purchase(false).await,
                "renew_mandate" => self.renew_mandate().await,
                "escrow_step" => self.escrow_step().await,
                "usage_spend" => self.usage_spend().await,
                "transfer" => self.transfer().await,
                "saka_harvest" => self.saka_harvest().await,
                "saka_spend" => self.saka_spend().await,
                "saka_adjust" => self.saka_adjust().await,
                "webhook_replay" => self.webhook_replay().await,
                "late_failure" => self.late_failure().await,
                "job_replay" => self.job_replay().await,
                "same_key_at_once" => self.same_key_at_once().await,
                "webhook_burst" => self.webhook_burst().await,
                "race" => self.race().await,
                _ => self.bad_request().await,
            }
            let pause = self.rng.range(20, 150);
            tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
        }
    }

    /// A fresh idempotency key.
    pub fn key(&mut self) -> String {
        self.count += 1;
        format!("soak-a{}-{}", self.n, self.count)
    }

    /// A job request (JSON) with a fresh key, retried through faults with
    /// that key; `wait` seconds of `Prefer: wait`.
    pub async fn job(&mut self, path: &str, who: &str, body: Value, wait: u32) -> Option<Answer> {
        let idem = self.key();
        let url = format!("{}{path}", self.http.api);
        let answer = self
            .http
            .call(&format!("POST {path}"), true, &|c| {
                let r = c.post(&url).bearer_auth(who).header("Idempotency-Key", &idem).json(&body);
                if wait > 0 { r.header("Prefer", format!("wait={wait}")) } else { r }
            })
            .await?;
        let job_id = answer.s("/job_id");
        if !job_id.is_empty() {
            self.last_job = Some((path.to_string(), who.to_string(), idem, body, job_id));
        }
        Some(answer)
    }

    /// A plain call (no key), retried only when `retry`.
    pub async fn post(&self, path: &str, who: &str, body: Value) -> Option<Answer> {
        let url = format!("{}{path}", self.http.api);
        self.http.call(&format!("POST {path}"), false, &|c| c.post(&url).bearer_auth(who).json(&body)).await
    }

    pub async fn get(&self, path: &str, who: &str) -> Option<Answer> {
        let url = format!("{}{path}", self.http.api);
        self.http.call(&format!("GET {path}"), true, &|c| c.get(&url).bearer_auth(who)).await
    }

    fn merchant(&mut self) -> String {
        let pick = self.rng.weighted(&[70, 20, 10]);
        self.world.merchants[pick].clone()
    }

    async fn purchase(&mut self, shared: bool) {
        let pair = if shared { self.world.shared.clone() } else { self.pair.clone() };
        let body = json!({
            "sender_id": pair.sender.id, "beneficiary_id": pair.beneficiary.id,
            "merchant_id": self.merchant(), "amount": self.rng.cents(1, 4_000), "currency": "USD",
        });
        self.job("/spend/purchases", &pair.beneficiary.key, body, 0).await;
    }

    /// A new mandate when none is ACTIVE; sometimes revoke the active one
    /// first. For the shared pair or its own.
    async fn renew_mandate(&mut self) {
        let pair = if self.rng.chance(40) { self.world.shared.clone() } else { self.pair.clone() };
        let path =
            format!("/mandates?sender_id={}&beneficiary_id={}&status=ACTIVE", pair.sender.id, pair.beneficiary.id);
        let Some(list) = self.get(&path, &pair.sender.key).await else { return };
        let active = list.body.pointer("/items/0/id").and_then(Value::as_str).map(str::to_string);
        let spent_most = list
            .body
            .pointer("/items/0/remaining_amount")
            .and_then(Value::as_str)
            .and_then(|r| r.parse::<f64>().ok())
            .is_some_and(|r| r < 100.0);
        if let Some(id) = active {
            if !(spent_most || self.rng.chance(20)) {
                return;
            }
            self.post(&format!("/mandates/{id}/revoke"), &pair.sender.key, json!({})).await;
        }
        // Some expire within the soak: purchases race the expiry job.
        let expires_in = match self.rng.chance(25) {
            true => chrono::Duration::seconds(self.rng.range(30, 120) as i64),
            false => chrono::Duration::days(30),
        };
        self.post("/mandates", &pair.sender.key, mandate_body(&pair.sender.id, &pair.beneficiary.id, expires_in)).await;
    }

    async fn transfer(&mut self) {
        let receiver = self.rng.pick(&self.world.users).cloned().unwrap_or_default();
        let body = json!({
            "sender_id": self.pair.sender.id, "receiver_id": receiver,
            "amount": self.rng.cents(100, 5_000), "currency": "USD",
        });
        let key = self.pair.sender.key.clone();
        self.job("/transactions", &key, body, 0).await;
    }

    async fn saka_harvest(&mut self) {
        let user = self.rng.pick(&self.world.users).cloned().unwrap_or_default();
        let reasons = ["CONTENT_READ", "POLL_VOTE", "INVITE_ACCEPTED", "INVEST_BONUS", "FARMING"];
        let reason = self.rng.pick(&reasons).copied().unwrap_or("CONTENT_READ");
        let who = if self.rng.chance(50) { self.world.admin.clone() } else { self.world.support.clone() };
        self.job("/saka/harvest", &who, json!({"user_id": user, "reason": reason}), 0).await;
    }

    async fn saka_spend(&mut self) {
        let me = self.pair.beneficiary.clone();
        let body = json!({"user_id": me.id, "amount": self.rng.range(1, 60), "reason": "shop"});
        self.job("/saka/spend", &me.key, body, 0).await;
    }

    /// A manual adjustment; above 500 it waits for a second admin, who
    /// approves it (or the requester tries and is refused, or it is
    /// rejected).
    async fn saka_adjust(&mut self) {
        let user = self.rng.pick(&self.world.users).cloned().unwrap_or_default();
        let amount = if self.rng.chance(50) { self.rng.range(1, 501) } else { self.rng.range(501, 1001) };
        let admin = self.world.admin.clone();
        let body = json!({"user_id": user, "amount": amount, "note": "soak"});
        let Some(answer) = self.job("/saka/adjustments", &admin, body, 10).await else { return };
        if answer.s("/result/status") != "PENDING_APPROVAL" {
            return;
        }
        let id = answer.s("/result/id");
        if self.rng.chance(30) {
            // Left for a race of two approvals (see `race`).
            self.pending_adjustment = Some(id);
            return;
        }
        match self.rng.weighted(&[75, 10, 15]) {
            0 => {
                let admin2 = self.world.admin2.clone();
                self.job(&format!("/saka/adjustments/{id}/approve"), &admin2, json!({}), 0).await;
            }
            1 => {
                self.job(&format!("/saka/adjustments/{id}/approve"), &admin, json!({}), 0).await;
            }
            _ => {
                self.post(&format!("/saka/adjustments/{id}/reject"), &admin, json!({"note": "no"})).await;
            }
        }
    }

    /// A webhook psp-sim delivered, sent again byte for byte (freshly
    /// signed): it must be a duplicate that enqueues nothing.
    async fn webhook_replay(&mut self) {
        let url = format!("{}/sim/webhooks", self.http.psp);
        let Some(list) = self.http.call("psp-sim GET /sim/webhooks", false, &|c| c.get(&url)).await else { return };
        let delivered: Vec<&Value> = list
            .body
            .as_array()
            .map(|a| a.iter().filter(|w| w["delivered"] == json!(true)).collect())
            .unwrap_or_default();
        let Some(event) = self.rng.pick(&delivered) else { return };
        let (Some(body), Some(id)) = (event["body"].as_str(), event["event_id"].as_str()) else { return };
        let (body, id) = (body.to_string(), id.to_string());
        let Some(answer) = super::webhook::send(&self.http, &body).await else { return };
        if answer.status == 200 && answer.body["duplicate"] != json!(true) {
            self.http.shared.finding(format!("replayed webhook {id} was taken as new: {}", answer.body));
        }
    }

    /// A `payment.failed` arriving after the payment settled (a stale
    /// event): the payment must stay SETTLED. Checked again at the end.
    async fn late_failure(&mut self) {
        let Some(run) = &self.escrow else { return };
        let path = format!("/escrows/{}", run.id);
        let key = self.pair.sender.key.clone();
        let Some(escrow) = self.get(&path, &key).await else { return };
        let settled: Vec<String> = escrow.body["payments"]
            .as_array()
            .map(|p| {
                p.iter()
                    .filter(|p| p["status"] == "SETTLED")
                    .filter_map(|p| p["id"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let Some(payment) = self.rng.pick(&settled).cloned() else { return };
        let url = format!("{}/sim/events", self.http.psp);
        let event = json!({"type": "payment.failed", "data": {"payment_id": payment, "reason": "LATE"}});
        let sent = self.http.call("psp-sim POST /sim/events", false, &|c| c.post(&url).json(&event)).await;
        if sent.is_some_and(|a| a.ok()) {
            self.http.shared.tally().late_failures.insert(payment);
        }
    }

    /// The last job request again, same key and body: the same job.
    async fn job_replay(&mut self) {
        let Some((path, who, idem, body, job_id)) = self.last_job.clone() else { return };
        let url = format!("{}{path}", self.http.api);
        let what = format!("replay POST {path}");
        let answer = self
            .http
            .call(&what, true, &|c| c.post(&url).bearer_auth(&who).header("Idempotency-Key", &idem).json(&body))
            .await;
        if let Some(answer) = answer
            && answer.ok()
            && answer.s("/job_id") != job_id
        {
            self.http
                .shared
                .finding(format!("{what} with key {idem} gave job {} instead of {job_id}", answer.s("/job_id")));
        }
    }

    /// One purchase sent three times at once under one key, as a client
    /// whose first tries timed out: one job, the same receipt for all.
    async fn same_key_at_once(&mut self) {
        let pair = self.pair.clone();
        let body = json!({
            "sender_id": pair.sender.id, "beneficiary_id": pair.beneficiary.id,
            "merchant_id": self.merchant(), "amount": self.rng.cents(1, 500), "currency": "USD",
        });
        let idem = self.key();
        let url = format!("{}/spend/purchases", self.http.api);
        let build = |c: &reqwest::Client| {
            c.post(&url).bearer_auth(&pair.beneficiary.key).header("Idempotency-Key", &idem).json(&body)
        };
        let what = "POST /spend/purchases (same key at once)";
        let answers = futures::future::join_all([
            self.http.call(what, true, &build),
            self.http.call(what, true, &build),
            self.http.call(what, true, &build),
        ])
        .await;
        let ids: std::collections::BTreeSet<String> =
            answers.iter().flatten().filter(|a| a.ok()).map(|a| a.s("/job_id")).collect();
        if ids.len() > 1 {
            self.http.shared.finding(format!("one key sent three times at once gave jobs {ids:?}"));
        }
    }

    /// A delivered event sent three times at once: one stored, the others
    /// duplicates (at most one answer says it was new).
    async fn webhook_burst(&mut self) {
        let url = format!("{}/sim/webhooks", self.http.psp);
        let Some(list) = self.http.call("psp-sim GET /sim/webhooks", false, &|c| c.get(&url)).await else { return };
        let events: Vec<&Value> = list.body.as_array().map(|a| a.iter().collect()).unwrap_or_default();
        let Some(event) = self.rng.pick(&events) else { return };
        let Some(body) = event["body"].as_str() else { return };
        let delivered = event["delivered"] == json!(true);
        let answers = futures::future::join_all((0..3).map(|_| super::webhook::send(&self.http, body))).await;
        let new = answers.iter().flatten().filter(|a| a.status == 200 && a.body["duplicate"] == json!(false)).count();
        if new > usize::from(!delivered) {
            let id = event["event_id"].as_str().unwrap_or_default();
            self.http.shared.finding(format!("event {id} sent three times at once was taken as new {new} times"));
        }
    }

    /// Requests the API must refuse with a 4xx: too many decimals, a key
    /// reused with another body, no key.
    async fn bad_request(&mut self) {
        let pair = self.pair.clone();
        let mut body = json!({
            "sender_id": pair.sender.id, "beneficiary_id": pair.beneficiary.id,
            "merchant_id": self.world.merchants[0], "amount": "1.234", "currency": "USD",
        });
        let answer = match self.rng.range(0, 3) {
            0 => self.job("/spend/purchases", &pair.beneficiary.key, body, 0).await,
            // A route that takes no body ignores one: only a key whose
            // first request had a body can be reused with another.
            1 => match self.last_job.clone().filter(|(_, _, _, b, _)| b.as_object().is_some_and(|o| !o.is_empty())) {
                Some((path, who, idem, _, _)) => {
                    let url = format!("{}{path}", self.http.api);
                    let other = json!({"amount": "999.99"});
                    self.http
                        .call("POST (reused key)", true, &|c| {
                            c.post(&url).bearer_auth(&who).header("Idempotency-Key", &idem).json(&other)
                        })
                        .await
                }
                None => None,
            },
            _ => {
                body["amount"] = json!("1.00");
                self.post("/spend/purchases", &pair.beneficiary.key, body).await
            }
        };
        if let Some(answer) = answer
            && !(400..500).contains(&answer.status)
        {
            self.http
                .shared
                .finding(format!("a request meant to be refused got HTTP {} {}", answer.status, answer.body));
        }
    }
}
