//! An actor's escrow, carried step by step from what `GET /escrows/{id}`
//! says: funded through psp-sim's `POST /fundings` (a sender's card, which
//! sends the signed `funding.succeeded`) or a deposit job; a proof per
//! milestone (real JPEGs with EXIF: on the site, outside the geofence,
//! stale, without EXIF, or from an untrusted source that goes to review);
//! decisions by the client, support or admin; re-drives of failed payouts;
//! usage spends to an allowed payee; then release or refund, and the next
//! escrow.

use serde_json::{Value, json};
use tokio::time::Instant;

use super::actor::Actor;
use super::fleet::{FAIL_AMOUNTS, REFUSED_AMOUNT};

const SITE_LAT: f64 = 5.3200;
const SITE_LNG: f64 = -4.0170;
const RADIUS_M: f64 = 150.0;
const METRES_PER_DEGREE: f64 = 6_371_000.0 * std::f64::consts::PI / 180.0;

pub struct EscrowRun {
    pub id: String,
    /// Steps taken on it; past a bound the client ends it.
    steps: u32,
    /// No new funding until then (the last one's webhook is on its way).
    funding_settles_at: Option<Instant>,
    pub last_proof: Option<String>,
}

impl Actor {
    pub(super) async fn escrow_step(&mut self) {
        let Some(run) = &self.escrow else {
            self.open_escrow().await;
            return;
        };
        let id = run.id.clone();
        let client = self.pair.sender.key.clone();
        let Some(escrow) = self.get(&format!("/escrows/{id}"), &client).await else { return };
        if escrow.status != 200 {
            self.escrow = None;
            return;
        }
        let steps = self.escrow.as_ref().map_or(0, |r| r.steps);
        if let Some(run) = self.escrow.as_mut() {
            run.steps += 1;
        }
        let body = escrow.body;
        match body["status"].as_str().unwrap_or_default() {
            "DRAFT" if steps > 30 || self.rng.chance(2) => {
                self.job(&format!("/escrows/{id}/client-reject"), &client, json!({"note": "cancel"}), 0).await;
                self.escrow = None;
            }
            "DRAFT" => self.fund(&id, &body).await,
            "FUNDED" | "RELEASABLE" if steps > 60 || self.rng.chance(3) => self.close(&id, steps > 60).await,
            "FUNDED" | "RELEASABLE" => self.milestone_step(&id, &body).await,
            // RELEASED, REFUNDED, CANCELLED: the next one.
            _ => self.escrow = None,
        }
    }

    async fn open_escrow(&mut self) {
        let sender = self.pair.sender.clone();
        let first = if self.rng.chance(15) { FAIL_AMOUNTS[0] } else { "100.00" };
        // Some escrows reach their deadline within the soak: the deadline
        // job releases them while proofs and payouts are under way.
        let deadline = match self.rng.chance(20) {
            true => chrono::Duration::seconds(self.rng.range(45, 150) as i64),
            false => chrono::Duration::days(30),
        };
        let body = json!({
            "client_id": sender.id, "provider_id": self.pair.beneficiary.id, "amount_total": "300.00",
            "currency": "USD", "release_conditions": {"milestones": "a geotagged photo of each"},
            "deadline_at": (chrono::Utc::now() + deadline).to_rfc3339(),
        });
        let Some(escrow) = self.post("/escrows", &sender.key, body).await.filter(|a| a.status == 201) else { return };
        let id = escrow.s("/id");
        let fence = json!({"lat": SITE_LAT, "lng": SITE_LNG, "radius_m": RADIUS_M});
        for (idx, amount) in [(1, first), (2, "120.00")] {
            let milestone = json!({"idx": idx, "label": format!("m{idx}"), "amount": amount, "proof_type": "PHOTO", "geofence": fence});
            self.post(&format!("/escrows/{id}/milestones"), &sender.key, milestone).await;
        }
        let payee = json!({"escrow_id": id, "payee_ref": "shop-1", "label": "Shop", "daily_limit": "40.00", "total_limit": "60.00"});
        self.post("/spend/allowed", &sender.key, payee).await;
        self.escrow = Some(EscrowRun { id, steps: 0, funding_settles_at: None, last_proof: None });
    }

    /// Funds what is missing: psp-sim (the whole or half), or a deposit
    /// job (sometimes too much, to be refused).
    async fn fund(&mut self, id: &str, escrow: &Value) {
        let waiting = self.escrow.as_ref().and_then(|r| r.funding_settles_at).is_some_and(|t| Instant::now() < t);
        if waiting {
            return;
        }
        let cents = |field: &str| -> u64 {
            escrow[field].as_str().and_then(|s| s.parse::<f64>().ok()).map_or(0, |v| (v * 100.0).round() as u64)
        };
        let missing = cents("amount_total").saturating_sub(cents("funded_amount"));
        if missing == 0 {
            return;
        }
        let amount = match self.rng.chance(30) && missing >= 2 {
            true => missing / 2,
            false => missing,
        };
        let text = format!("{}.{:02}", amount / 100, amount % 100);
        if self.rng.chance(70) {
            let url = format!("{}/fundings", self.http.psp);
            let body = json!({"escrow_id": id, "amount": text, "currency": "USD"});
            // No idempotency key at the PSP: never sent twice.
            self.http.call("psp-sim POST /fundings", false, &|c| c.post(&url).json(&body)).await;
        } else {
            let over = self.rng.chance(10);
            let text = if over { format!("{}.{:02}", (amount + 100) / 100, amount % 100) } else { text };
            let client = self.pair.sender.key.clone();
            self.job(&format!("/escrows/{id}/deposit"), &client, json!({"amount": text}), 0).await;
        }
        if let Some(run) = self.escrow.as_mut() {
            run.funding_settles_at = Some(Instant::now() + std::time::Duration::from_secs(8));
        }
    }

    /// The first milestone not paid decides: a proof, a decision, a
    /// re-drive; none left: release.
    async fn milestone_step(&mut self, id: &str, escrow: &Value) {
        let milestones = escrow["milestones"].as_array().cloned().unwrap_or_default();
        let Some(open) = milestones.iter().find(|m| m["status"] != "PAID") else {
            self.close(id, true).await;
            return;
        };
        let idx = open["idx"].as_u64().unwrap_or(1);
        match open["status"].as_str().unwrap_or_default() {
            "WAITING" => self.upload(id, idx).await,
            "PENDING_REVIEW" => self.decide().await,
            "APPROVED" => {
                let failed = escrow["payments"].as_array().and_then(|ps| {
                    ps.iter().find(|p| p["milestone_id"] == open["id"] && p["status"] == "ERROR").cloned()
                });
                if let Some(payment) = failed {
                    let pid = payment["id"].as_str().unwrap_or_default().to_string();
                    let admin = self.world.admin.clone();
                    self.job(&format!("/payments/execute/{pid}"), &admin, json!({}), 0).await;
                }
            }
            "PAYING" if self.rng.chance(20) => {
                let provider = self.pair.beneficiary.key.clone();
                self.job(&format!("/escrows/{id}/mark-delivered"), &provider, json!({}), 0).await;
            }
            // Waiting on the PSP: re-drive a failed usage spend meanwhile.
            _ => {
                let failed: Vec<String> = escrow["payments"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .filter(|p| p["status"] == "ERROR" && p["milestone_id"].is_null())
                            .filter_map(|p| p["id"].as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                if let Some(pid) = self.rng.pick(&failed).cloned() {
                    let admin = self.world.admin.clone();
                    self.job(&format!("/payments/execute/{pid}"), &admin, json!({}), 0).await;
                }
            }
        }
    }

    async fn upload(&mut self, id: &str, idx: u64) {
        self.count += 1;
        let seed = (self.n as u64) << 40 | self.count;
        let now = chrono::Utc::now();
        let kind = self.rng.weighted(&[65, 8, 5, 5, 17]);
        let (north_m, minutes_ago, source) = match kind {
            1 => (1_000.0, 5, "camera"),
            2 => (10.0, 300, "camera"),
            4 => (20.0, 5, "whatsapp"),
            _ => (-30.0, 5, "app"),
        };
        let file = match kind {
            3 => e2e::jpeg::jpeg_without_exif(seed),
            _ => e2e::jpeg::jpeg(&e2e::jpeg::PhotoSpec {
                gps: Some((SITE_LAT + north_m / METRES_PER_DEGREE, SITE_LNG)),
                gps_time: Some(now - chrono::Duration::minutes(minutes_ago)),
                original: None,
                seed,
            }),
        };
        let idem = self.key();
        let url = format!("{}/proofs", self.http.api);
        let provider = self.pair.beneficiary.key.clone();
        let (escrow_id, idx_text) = (id.to_string(), idx.to_string());
        let answer = self
            .http
            .call("POST /proofs", true, &|c| {
                let part = reqwest::multipart::Part::bytes(file.clone()).file_name("proof.jpg");
                let part = match part.mime_str("image/jpeg") {
                    Ok(part) => part,
                    Err(_) => reqwest::multipart::Part::bytes(file.clone()),
                };
                let form = reqwest::multipart::Form::new()
                    .text("escrow_id", escrow_id.clone())
                    .text("milestone_idx", idx_text.clone())
                    .text("source", source)
                    .part("file", part);
                c.post(&url).bearer_auth(&provider).header("Idempotency-Key", &idem).multipart(form)
            })
            .await;
        let proof = answer.map(|a| a.s("/proof_id")).filter(|p| !p.is_empty());
        if let (Some(run), Some(proof)) = (self.escrow.as_mut(), proof) {
            run.last_proof = Some(proof);
        }
    }

    /// Approve (mostly) or reject the proof in review, as the client,
    /// support or admin.
    async fn decide(&mut self) {
        let Some(proof) = self.escrow.as_ref().and_then(|r| r.last_proof.clone()) else { return };
        let who = match self.rng.weighted(&[50, 30, 20]) {
            0 => self.pair.sender.key.clone(),
            1 => self.world.support.clone(),
            _ => self.world.admin.clone(),
        };
        let decision = if self.rng.chance(75) { "approve" } else { "reject" };
        self.job(&format!("/proofs/{proof}/decision"), &who, json!({"decision": decision, "note": "soak"}), 0).await;
    }

    /// Release (pay what is left to the provider) or refund; the next
    /// escrow after that.
    async fn close(&mut self, id: &str, release: bool) {
        let client = self.pair.sender.key.clone();
        let action = if release || self.rng.chance(60) { "client-approve" } else { "client-reject" };
        self.job(&format!("/escrows/{id}/{action}"), &client, json!({"note": "soak"}), 0).await;
        self.escrow = None;
    }

    /// A usage spend to the escrow's payee, sometimes of an amount the PSP
    /// fails.
    pub(super) async fn usage_spend(&mut self) {
        let Some(run) = &self.escrow else { return };
        let id = run.id.clone();
        let amount = match self.rng.weighted(&[15, 8, 77]) {
            0 => FAIL_AMOUNTS[1].to_string(),
            1 => REFUSED_AMOUNT.to_string(),
            _ => self.rng.cents(100, 1_500),
        };
        let body = json!({"escrow_id": id, "payee_ref": "shop-1", "amount": amount, "note": "soak"});
        let client = self.pair.sender.key.clone();
        self.job("/spend", &client, body, 0).await;
    }
}
