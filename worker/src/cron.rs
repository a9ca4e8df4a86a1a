//! Scheduled jobs. apalis-cron is a timer inside each process, so with N
//! replicas every tick fires N times: each tick is claimed by inserting
//! `(schedule, tick)` into `cron_ticks`, and only the winner creates the
//! job row and runs it (through the same executor as any job).

use std::sync::Arc;

use apalis::prelude::{BoxDynError, Data};
use apalis_cron::Tick;
use chrono::{DateTime, Utc};
use shared::jobs::{JobKind, NewJob, record};
use shared::principal::Principal;

use crate::WorkerCtx;

/// A schedule: its job kind and cron expression (with seconds).
pub struct Schedule {
    pub kind: JobKind,
    pub expr: String,
    /// Ticks in `SAKA_TIMEZONE` rather than UTC.
    pub saka_tz: bool,
}

pub fn schedules(config: &shared::config::Config) -> Vec<Schedule> {
    let s = |kind, expr: &str, saka_tz| Schedule { kind, expr: expr.to_string(), saka_tz };
    let relay = (config.relay_every_secs > 0)
        .then(|| s(JobKind::JobRelay, &format!("*/{} * * * * *", config.relay_every_secs), false));
    relay
        .into_iter()
        .chain([
            s(JobKind::MandateExpiry, &config.mandate_expiry_cron, false),
            s(JobKind::Retention, "0 17 * * * *", false),
            s(JobKind::EscrowDeadlines, &config.escrow_deadlines_cron, false),
            s(JobKind::SakaDayRollover, "0 0 0 * * *", true),
            s(JobKind::SakaApprovalExpiry, "30 * * * * *", false),
        ])
        .collect()
}

#[derive(Clone)]
pub struct CronJob {
    pub kind: JobKind,
    pub ctx: Arc<WorkerCtx>,
}

pub async fn on_tick<Tz: Send + Sync + 'static>(tick: Tick<Tz>, job: Data<CronJob>) -> Result<(), BoxDynError> {
    let at = i64::try_from(tick.get_timestamp()).unwrap_or(i64::MAX);
    let at = DateTime::<Utc>::from_timestamp(at, 0).unwrap_or_else(Utc::now);
    run_tick(&job, at).await.map_err(|e| {
        tracing::warn!(kind = %job.kind, error = %e, "cron tick failed");
        Box::new(e) as BoxDynError
    })
}

/// Claims the tick; the winner writes the job row and runs it now.
pub async fn run_tick(job: &CronJob, at: DateTime<Utc>) -> shared::Result<()> {
    let ctx = &job.ctx;
    let won: Option<i32> = sqlx::query_scalar(
        "INSERT INTO cron_ticks (schedule, tick, claimed_by) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING 1",
    )
    .bind(job.kind.as_str())
    .bind(at)
    .bind(&ctx.config.worker_name)
    .fetch_optional(&ctx.pool)
    .await?;
    // Every replica fires every tick; one wins it.
    let outcome = if won.is_some() { "won" } else { "lost" };
    metrics::counter!("kobatela_cron_ticks_total", "schedule" => job.kind.as_str(), "outcome" => outcome).increment(1);
    if won.is_none() {
        return Ok(());
    }
    if job.kind == JobKind::JobRelay {
        // Every few seconds: the relay runs in its tick and leaves no job
        // row (what it did is logged and counted in the metrics).
        crate::runners::maintenance::relay(&ctx.pool, &ctx.runners.queue, &ctx.config).await?;
        return Ok(());
    }
    let payload = serde_json::json!({"tick": at});
    let new =
        NewJob::new(job.kind, &payload, &Principal::system(), Some(format!("cron:{}:{}", job.kind, at.to_rfc3339())))?;
    let mut conn = ctx.pool.acquire().await?;
    let (row, _) = record::insert(&mut conn, &new).await?;
    sqlx::query("UPDATE cron_ticks SET job_id = $3 WHERE schedule = $1 AND tick = $2")
        .bind(job.kind.as_str())
        .bind(at)
        .bind(row.id)
        .execute(&mut *conn)
        .await?;
    drop(conn);
    ctx.execute(row.id, &shared::jobs::exec::Hint { ctid: row.ctid.clone(), redelivered: false }).await?;
    Ok(())
}
