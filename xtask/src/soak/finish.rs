//! The end of a soak: every accepted job followed to a terminal status
//! (bounded), psp-sim's webhooks delivered, then the checks: the
//! invariants and the PSP reconciliation (`GET /ops/invariants?run=1`),
//! receipts whose job row is missing, jobs and payments left unfinished,
//! settled payments moved by a late failure.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use sqlx::PgPool;
use tokio::time::Instant;

use super::http::Http;

/// How long the end waits for jobs and webhooks to settle.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(240);

/// What the end found.
#[derive(Default)]
pub struct Outcome {
    pub drained_in: Duration,
    pub jobs_by_status: BTreeMap<String, i64>,
    pub jobs_by_kind: Vec<(String, String, i64)>,
    pub stuck_jobs: Vec<String>,
    pub dead_jobs: Vec<String>,
    pub stuck_payments: Vec<String>,
    /// Proofs or milestones in review on an escrow that has ended: no
    /// decision can ever apply to them.
    pub stuck_reviews: Vec<String>,
    pub missing_receipts: Vec<String>,
    pub moved_back: Vec<String>,
    pub undelivered_webhooks: Vec<String>,
    /// (name, violations, sample)
    pub invariants: Vec<(String, i64, Value)>,
    pub invariant_error: Option<String>,
    /// What the workload left behind: rows by table and status.
    pub effects: Vec<(String, String, i64)>,
}

impl Outcome {
    pub fn violations(&self) -> i64 {
        self.invariants.iter().map(|(_, n, _)| n).sum()
    }
}

/// Waits until no job is queued or running and psp-sim has nothing left
/// to deliver (for at most [`DRAIN_LIMIT`]); the time it took.
pub async fn drain(pool: &PgPool, http: &Http) -> Duration {
    let started = Instant::now();
    let mut quiet = 0;
    while started.elapsed() < DRAIN_LIMIT {
        let open: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')")
            .fetch_one(pool)
            .await
            .unwrap_or(1);
        let sending = webhooks(http).await.map_or(1, |list| {
            list.iter().filter(|w| w["delivered"] != true && w["attempts"].as_u64().unwrap_or(0) < 30).count()
        });
        quiet = if open == 0 && sending == 0 { quiet + 1 } else { 0 };
        // Twice in a row: a webhook acknowledged a moment ago has its job.
        if quiet >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    started.elapsed()
}

async fn webhooks(http: &Http) -> Option<Vec<Value>> {
    let url = format!("{}/sim/webhooks", http.psp);
    let response = http.client().get(&url).send().await.ok()?;
    response.json::<Vec<Value>>().await.ok()
}

pub async fn check(pool: &PgPool, http: &Http, admin: &str, drained_in: Duration) -> Result<Outcome> {
    let mut out = Outcome { drained_in, ..Outcome::default() };
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM jobs GROUP BY status").fetch_all(pool).await?;
    out.jobs_by_status = rows.into_iter().collect();
    out.jobs_by_kind =
        sqlx::query_as("SELECT kind, status, count(*) FROM jobs GROUP BY kind, status ORDER BY kind, status")
            .fetch_all(pool)
            .await?;
    let lines = |rows: Vec<(String, String, i32, Option<String>)>| -> Vec<String> {
        rows.into_iter()
            .map(|(id, kind, attempts, error)| format!("{kind} {id} attempts={attempts} {}", error.unwrap_or_default()))
            .collect()
    };
    out.stuck_jobs = lines(
        sqlx::query_as(
            "SELECT id::text, kind, attempts, last_error FROM jobs WHERE status IN ('queued', 'running') ORDER BY created_at",
        )
        .fetch_all(pool)
        .await?,
    );
    out.dead_jobs = lines(
        sqlx::query_as(
            "SELECT id::text, kind, attempts, last_error FROM jobs WHERE status = 'dead' ORDER BY created_at",
        )
        .fetch_all(pool)
        .await?,
    );
    // A payment still PENDING or SENT once everything settled holds money
    // that nothing will move.
    out.stuck_payments = sqlx::query_as::<_, (String, String, String, Option<String>)>(
        "SELECT id::text, status, amount::text, psp_ref FROM payments WHERE status IN ('PENDING', 'SENT')",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|(id, status, amount, psp_ref)| {
        format!("payment {id} {status} {amount} psp_ref={}", psp_ref.unwrap_or_default())
    })
    .collect();
    out.stuck_reviews = sqlx::query_as::<_, (String, String, String)>(
        "SELECT 'proof', p.id::text, e.status FROM proofs p JOIN escrows e ON e.id = p.escrow_id \
         WHERE p.status = 'PENDING_REVIEW' AND e.status NOT IN ('FUNDED', 'RELEASABLE') \
         UNION ALL SELECT 'milestone', m.id::text, e.status FROM milestones m JOIN escrows e ON e.id = m.escrow_id \
         WHERE m.status = 'PENDING_REVIEW' AND e.status NOT IN ('FUNDED', 'RELEASABLE')",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|(what, id, status)| format!("{what} {id} in review on a {status} escrow"))
    .collect();
    let (accepted, late): (Vec<String>, Vec<String>) = {
        let tally = http.shared.tally();
        (tally.accepted.iter().cloned().collect(), tally.late_failures.iter().cloned().collect())
    };
    let found: Vec<String> = sqlx::query_scalar("SELECT id::text FROM jobs WHERE id::text = ANY($1)")
        .bind(&accepted)
        .fetch_all(pool)
        .await?;
    let found: std::collections::HashSet<String> = found.into_iter().collect();
    out.missing_receipts = accepted.into_iter().filter(|id| !found.contains(id)).collect();
    out.moved_back = sqlx::query_as::<_, (String, String)>(
        "SELECT id::text, status FROM payments WHERE id::text = ANY($1) AND status <> 'SETTLED'",
    )
    .bind(&late)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|(id, status)| format!("payment {id} settled, then {status} after a late payment.failed"))
    .collect();
    out.undelivered_webhooks = webhooks(http)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|w| w["delivered"] != true)
        .map(|w| format!("{} {} attempts={} last_status={}", w["type"], w["event_id"], w["attempts"], w["last_status"]))
        .collect();
    out.effects = sqlx::query_as(
        "SELECT 'escrows', status, count(*) FROM escrows GROUP BY status \
         UNION ALL SELECT 'milestones', status, count(*) FROM milestones GROUP BY status \
         UNION ALL SELECT 'payments ' || kind, status, count(*) FROM payments GROUP BY kind, status \
         UNION ALL SELECT 'proofs', status, count(*) FROM proofs GROUP BY status \
         UNION ALL SELECT 'mandates', status, count(*) FROM mandates GROUP BY status \
         UNION ALL SELECT 'purchases', status, count(*) FROM purchases GROUP BY status \
         UNION ALL SELECT 'saka adjustments', status, count(*) FROM saka_adjustments GROUP BY status \
         ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await?;
    match invariants(http, admin).await {
        Ok(list) => out.invariants = list,
        Err(e) => out.invariant_error = Some(format!("{e:#}")),
    }
    Ok(out)
}

/// `GET /ops/invariants?run=1`: each invariant with its violations.
async fn invariants(http: &Http, admin: &str) -> Result<Vec<(String, i64, Value)>> {
    let url = format!("{}/ops/invariants?run=1", http.api);
    let answer = http
        .call("GET /ops/invariants?run=1", true, &|c| c.get(&url).bearer_auth(admin))
        .await
        .context("GET /ops/invariants?run=1: no answer")?;
    anyhow::ensure!(answer.status == 200, "GET /ops/invariants?run=1: HTTP {} {}", answer.status, answer.body);
    let list = answer.body["invariants"].as_array().context("no invariants in the answer")?;
    anyhow::ensure!(!list.is_empty(), "the run checked no invariant");
    Ok(list
        .iter()
        .map(|i| {
            (i["name"].as_str().unwrap_or("?").to_string(), i["violations"].as_i64().unwrap_or(0), i["sample"].clone())
        })
        .collect())
}
