//! Maintenance jobs: the relay (re-push what no worker took in time) and
//! retention (old cron ticks and finished jobs, proof files no proof
//! references).

use shared::domain::proofs;
use shared::error::Result;
use shared::jobs::{JobKind, Outcome, record};
use sqlx::PgConnection;

use super::Runners;

/// Pushes again every job that is due but was not taken: lost messages
/// (Redis flushed or restarted), pushes that failed, retries whose back-off
/// ended, and jobs whose worker died (lease expired). The picked rows are
/// marked in their own short statement so the push happens outside any
/// transaction that holds money rows.
pub async fn relay(r: &Runners, _conn: &mut PgConnection) -> Result<Outcome> {
    let picked = record::take_for_relay(&r.pool, r.config.job_relay_after, 1000).await?;
    let mut pushed = 0;
    for (id, kind) in &picked {
        let Some(kind) = JobKind::parse(kind) else { continue };
        match r.queue.push(kind, *id).await {
            Ok(()) => pushed += 1,
            Err(e) => tracing::warn!(job_id = %id, error = %e, "relay push failed; next tick retries"),
        }
    }
    if pushed > 0 {
        tracing::info!(pushed, "relay re-pushed jobs");
        metrics::counter!("kobatela_relay_pushed_total").increment(pushed);
    }
    Ok(Outcome::Succeeded(serde_json::json!({"pushed": pushed})))
}

/// Old cron ticks go after two days. The receipts of maintenance runs (a
/// relay every few seconds) go after a day, those of the other scheduled
/// jobs after 30 days; jobs that move value are the record and stay. Stored
/// proof files that no proof references go after a day. The audit log is
/// never touched.
pub async fn retention(r: &Runners, conn: &mut PgConnection) -> Result<Outcome> {
    let files = proofs::sweep_files(conn, r.store.as_ref(), std::time::Duration::from_secs(86_400)).await?;
    let ticks = sqlx::query("DELETE FROM cron_ticks WHERE claimed_at < now() - interval '2 days'")
        .execute(&mut *conn)
        .await?
        .rows_affected();
    let relays = sqlx::query("DELETE FROM jobs WHERE kind IN ('job_relay', 'retention') AND status IN ('succeeded', 'failed') AND finished_at < now() - interval '1 day'")
        .execute(&mut *conn)
        .await?
        .rows_affected();
    let scheduled = sqlx::query(
        "DELETE FROM jobs WHERE status IN ('succeeded', 'failed') AND finished_at < now() - interval '30 days'
           AND kind IN ('mandate_expiry', 'saka_day_rollover', 'saka_approval_expiry', 'escrow_deadlines')",
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(Outcome::Succeeded(serde_json::json!({
        "cron_ticks_deleted": ticks, "jobs_deleted": relays + scheduled, "proof_files_deleted": files,
    })))
}
