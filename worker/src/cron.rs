//! Scheduled work. apalis-cron is a timer inside each process, so with N
//! replicas every tick fires N times: each tick is claimed by inserting
//! `(schedule, tick)` into `cron_ticks`, and only the winner acts. A job
//! schedule writes the job row and runs it (through the same executor as
//! any job); the relay and the invariants run in their tick and leave no
//! job row (the relay logs and counts what it did, the invariants store
//! their run).

use std::sync::Arc;

use apalis::prelude::{BoxDynError, Data};
use apalis_cron::Tick;
use chrono::{DateTime, Utc};
use shared::jobs::{JobKind, NewJob, record};
use shared::principal::Principal;

use crate::WorkerCtx;

/// What a tick does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Job(JobKind),
    Relay,
    Invariants,
}

impl Action {
    /// The schedule's name in `cron_ticks`.
    pub fn name(self) -> &'static str {
        match self {
            Action::Job(kind) => kind.as_str(),
            Action::Relay => JobKind::JobRelay.as_str(),
            Action::Invariants => "invariants",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A schedule: what it does and its cron expression (with seconds).
pub struct Schedule {
    pub action: Action,
    pub expr: String,
    /// Ticks in `SAKA_TIMEZONE` rather than UTC.
    pub saka_tz: bool,
}

pub fn schedules(config: &shared::config::Config) -> Vec<Schedule> {
    let s = |action, expr: &str, saka_tz| Schedule { action, expr: expr.to_string(), saka_tz };
    let job = |kind, expr: &str, saka_tz| s(Action::Job(kind), expr, saka_tz);
    let relay = (config.relay_every_secs > 0)
        .then(|| s(Action::Relay, &format!("*/{} * * * * *", config.relay_every_secs), false));
    relay
        .into_iter()
        .chain([
            job(JobKind::MandateExpiry, &config.mandate_expiry_cron, false),
            job(JobKind::Retention, &config.retention_cron, false),
            job(JobKind::EscrowDeadlines, &config.escrow_deadlines_cron, false),
            job(JobKind::SakaDayRollover, "0 0 0 * * *", true),
            job(JobKind::SakaApprovalExpiry, "30 * * * * *", false),
            s(Action::Invariants, &config.invariants_cron, false),
        ])
        .collect()
}

#[derive(Clone)]
pub struct CronJob {
    pub action: Action,
    pub ctx: Arc<WorkerCtx>,
}

pub async fn on_tick<Tz: Send + Sync + 'static>(tick: Tick<Tz>, job: Data<CronJob>) -> Result<(), BoxDynError> {
    let at = i64::try_from(tick.get_timestamp()).unwrap_or(i64::MAX);
    let at = DateTime::<Utc>::from_timestamp(at, 0).unwrap_or_else(Utc::now);
    run_tick(&job, at).await.map_err(|e| {
        tracing::warn!(schedule = %job.action, error = %e, "cron tick failed");
        Box::new(e) as BoxDynError
    })
}

/// Claims the tick; the winner acts on it now.
pub async fn run_tick(job: &CronJob, at: DateTime<Utc>) -> shared::Result<()> {
    let ctx = &job.ctx;
    let won: Option<i32> = sqlx::query_scalar(
        "INSERT INTO cron_ticks (schedule, tick, claimed_by) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING 1",
    )
    .bind(job.action.name())
    .bind(at)
    .bind(&ctx.config.worker_name)
    .fetch_optional(&ctx.pool)
    .await?;
    // Every replica fires every tick; one wins it.
    let outcome = if won.is_some() { "won" } else { "lost" };
    metrics::counter!("kobatela_cron_ticks_total", "schedule" => job.action.name(), "outcome" => outcome).increment(1);
    if won.is_none() {
        return Ok(());
    }
    let kind = match job.action {
        Action::Job(kind) => kind,
        Action::Relay => {
            crate::runners::maintenance::relay(&ctx.pool, &ctx.runners.queue, &ctx.config).await?;
            return Ok(());
        }
        Action::Invariants => {
            let psp = shared::domain::ops::invariants::PspSide { client: &ctx.runners.psp_http };
            let run = shared::domain::ops::invariants::run(
                &ctx.pool,
                Some(psp),
                ctx.config.saka_timezone.name(),
                shared::domain::ops::invariants::stale_lease_secs(&ctx.config),
            )
            .await?;
            tracing::info!(run_id = %run.run_id, violations = run.violations(), "invariants checked");
            return Ok(());
        }
    };
    let payload = serde_json::json!({"tick": at});
    let new = NewJob::new(kind, &payload, &Principal::system(), Some(format!("cron:{kind}:{}", at.to_rfc3339())))?;
    let mut conn = ctx.pool.acquire().await?;
    let (row, _) = record::insert(&mut conn, &new).await?;
    sqlx::query("UPDATE cron_ticks SET job_id = $3 WHERE schedule = $1 AND tick = $2")
        .bind(kind.as_str())
        .bind(at)
        .bind(row.id)
        .execute(&mut *conn)
        .await?;
    drop(conn);
    ctx.execute(row.id, &shared::jobs::exec::Hint { ctid: row.ctid.clone(), redelivered: false }).await?;
    Ok(())
}
