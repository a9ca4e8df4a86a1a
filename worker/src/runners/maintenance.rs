//! Maintenance jobs: the relay (re-push what no worker took in time) and
//! retention (old cron ticks and finished jobs, proof files no proof
//! references).

use std::collections::HashMap;

use shared::config::Config;
use shared::domain::escrow::proofs;
use shared::error::Result;
use shared::ids::JobId;
use shared::jobs::transport::JobRef;
use shared::jobs::{JobKind, Outcome, Queue, record};
use sqlx::{PgConnection, PgPool};

use super::Runners;

/// Streams longer than this are not read by the relay (20,000 entries are
/// about 2 MB to read).
pub const STREAM_CHECK_MAX: u64 = 20_000;

/// Pushes again every job that is due but was not taken: lost messages
/// (Redis flushed or restarted, a stream trimmed), pushes that failed,
/// retries whose back-off ended, and jobs whose worker died (lease expired;
/// `dead` instead when that was their last attempt). The picked rows are
/// marked in their own short statement, so the push happens outside any
/// transaction. Returns (pushed, made dead).
///
/// A job whose entry is still in its stream (a backlog being worked, or a
/// dead consumer's pending entry that `XAUTOCLAIM` will move) is not pushed
/// again: duplicates would only lengthen the backlog. A stream longer than
/// [`STREAM_CHECK_MAX`] is not read on a tick; its jobs wait for a later one.
pub async fn relay(pool: &PgPool, queue: &Queue, config: &Config) -> Result<(u64, u64)> {
    let candidates = record::relay_candidates(pool, config.job_relay_after, 1000).await?;
    let mut by_kind: HashMap<JobKind, Vec<JobId>> = HashMap::new();
    for (id, kind) in candidates {
        if let Some(kind) = JobKind::parse(&kind) {
            by_kind.entry(kind).or_default().push(id);
        }
    }
    let mut missing = Vec::new();
    for (kind, ids) in by_kind {
        match queue.job_ids_in_stream(kind, STREAM_CHECK_MAX).await {
            Ok(Some(present)) => missing.extend(ids.into_iter().filter(|id| !present.contains(id))),
            Ok(None) => tracing::info!(kind = %kind, "stream backlog too long to check; relay waits"),
            Err(e) => {
                tracing::warn!(error = %e, "relay cannot read the streams; the next tick retries");
                return Ok((0, 0));
            }
        }
    }
    let taken = record::take_for_relay(pool, &missing, config.job_relay_after, config.job_max_attempts).await?;
    let mut to_push = Vec::with_capacity(taken.len());
    let mut dead = Vec::new();
    for (id, kind, status, ctid) in taken {
        if status == "dead" {
            tracing::warn!(job_id = %id, kind = %kind, "job gave up: its last attempt never ended");
            dead.push(id);
        } else if let Some(kind) = JobKind::parse(&kind) {
            to_push.push(JobRef { kind, id, ctid: Some(ctid), key: None });
        }
    }
    if let Err(e) = queue.announce_ended(&dead).await {
        tracing::warn!(error = %e, "cannot announce dead jobs; their waiters read the rows");
    }
    let dead = dead.len() as u64;
    if let Err(e) = queue.push_batch(&to_push).await {
        tracing::warn!(jobs = to_push.len(), error = %e, "relay push failed; the next tick retries");
        return Ok((0, dead));
    }
    let pushed = to_push.len() as u64;
    if pushed > 0 || dead > 0 {
        tracing::info!(pushed, dead, "relay re-pushed jobs");
        metrics::counter!("kobatela_relay_pushed_total").increment(pushed);
        metrics::counter!("kobatela_relay_dead_total").increment(dead);
    }
    Ok((pushed, dead))
}

/// A `job_relay` row (older versions ran the relay as a job) runs it too.
pub async fn relay_job(r: &Runners) -> Result<Outcome> {
    let (pushed, dead) = relay(&r.pool, &r.queue, &r.config).await?;
    Ok(Outcome::succeeded(serde_json::json!({"pushed": pushed, "dead": dead})))
}

/// Hourly. The relay's cron ticks (one every few seconds, no job row) go
/// after an hour, other cron ticks after two days. The receipts of
/// maintenance runs go after a day, those of the other scheduled jobs after
/// 30 days; jobs that move value are the record and stay. Stored proof
/// files that no proof references go after a day. The audit log is never
/// touched.
pub async fn retention(r: &Runners, conn: &mut PgConnection) -> Result<Outcome> {
    let files = proofs::sweep_files(conn, r.store.as_ref(), std::time::Duration::from_secs(86_400)).await?;
    let relay_ticks =
        sqlx::query("DELETE FROM cron_ticks WHERE schedule = 'job_relay' AND tick < now() - interval '1 hour'")
            .execute(&mut *conn)
            .await?
            .rows_affected();
    let ticks = sqlx::query("DELETE FROM cron_ticks WHERE claimed_at < now() - interval '2 days'")
        .execute(&mut *conn)
        .await?
        .rows_affected()
        + relay_ticks;
    // Both through the small `jobs_scheduled` index (migration 0013).
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
    Ok(Outcome::succeeded(serde_json::json!({
        "cron_ticks_deleted": ticks, "jobs_deleted": relays + scheduled, "proof_files_deleted": files,
    })))
}
