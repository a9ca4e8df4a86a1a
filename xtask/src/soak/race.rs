//! Two requests that compete, sent at once with different keys (two
//! people, or two screens of one person): two decisions on one proof,
//! release against refund, two re-drives of one failed payment, one photo
//! uploaded twice, two approvals of one SAKA adjustment. One may win; the
//! invariants at the end say whether the loser left a trace.

use serde_json::{Value, json};

use super::actor::Actor;
use super::http::Answer;

impl Actor {
    pub(super) async fn race(&mut self) {
        match self.rng.range(0, 4) {
            0 => self.race_adjustment().await,
            _ => self.race_escrow().await,
        }
    }

    /// Each `(path, who, body)` posted at once, each with a fresh key.
    async fn at_once(&mut self, calls: Vec<(String, String, Value)>) -> Vec<Option<Answer>> {
        let calls = calls.into_iter().map(|(path, who, body)| {
            let key = self.key();
            let http = self.http.clone();
            async move {
                let url = format!("{}{path}", http.api);
                let what = format!("POST {path} (race)");
                http.call(&what, true, &|c| c.post(&url).bearer_auth(&who).header("Idempotency-Key", &key).json(&body))
                    .await
            }
        });
        let calls: Vec<_> = calls.collect();
        futures::future::join_all(calls).await
    }

    async fn race_adjustment(&mut self) {
        let Some(id) = self.pending_adjustment.take() else { return };
        let admin2 = self.world.admin2.clone();
        let path = format!("/saka/adjustments/{id}/approve");
        self.at_once(vec![(path.clone(), admin2.clone(), json!({})), (path, admin2, json!({}))]).await;
    }

    async fn race_escrow(&mut self) {
        let Some(run) = &self.escrow else { return };
        let id = run.id.clone();
        let client = self.pair.sender.key.clone();
        let Some(escrow) = self.get(&format!("/escrows/{id}"), &client).await else { return };
        let body = escrow.body;
        let admin = self.world.admin.clone();
        let failed = body["payments"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["status"] == "ERROR"))
            .and_then(|p| p["id"].as_str())
            .map(String::from);
        let in_review =
            body["milestones"].as_array().is_some_and(|ms| ms.iter().any(|m| m["status"] == "PENDING_REVIEW"));
        let proof = self.escrow.as_ref().and_then(|r| r.last_proof.clone());
        if let Some(payment) = failed {
            let path = format!("/payments/execute/{payment}");
            self.at_once(vec![(path.clone(), admin.clone(), json!({})), (path, admin, json!({}))]).await;
        } else if let (true, Some(proof)) = (in_review, proof) {
            let support = self.world.support.clone();
            let path = format!("/proofs/{proof}/decision");
            let approve = json!({"decision": "approve"});
            self.at_once(vec![(path.clone(), client, approve.clone()), (path, support, approve)]).await;
        } else if matches!(body["status"].as_str(), Some("FUNDED" | "RELEASABLE")) && self.rng.chance(30) {
            self.at_once(vec![
                (format!("/escrows/{id}/client-approve"), client.clone(), json!({})),
                (format!("/escrows/{id}/client-reject"), client, json!({})),
            ])
            .await;
            self.escrow = None;
        }
    }
}
