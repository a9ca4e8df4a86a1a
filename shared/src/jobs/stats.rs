//! The state of each job kind's queue, read from the job rows (through the
//! partial indexes on open and dead jobs, never a scan of the whole table)
//! and from the kind's stream: what the api's metrics sampler exports and
//! what `GET /ops/queues` answers.

use serde::Serialize;
use sqlx::PgPool;

use crate::error::Result;
use crate::jobs::{JobKind, Queue};

/// One kind's queue (API.md, `GET /ops/queues`).
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct QueueStats {
    pub kind: &'static str,
    /// Rows `queued` (due or waiting for their back-off).
    pub queued: i64,
    pub running: i64,
    /// Seconds the oldest due `queued` row has waited (0 when none): a job
    /// in its retry back-off is not waiting yet.
    pub oldest_queued_age_s: f64,
    pub dead: i64,
    /// Entries in the kind's stream (waiting, or delivered and not acknowledged).
    pub stream_length: u64,
    /// Entries delivered to a consumer and not yet acknowledged.
    pub pending: u64,
    /// The consumers workers reported within the last hour, from their own
    /// record of their last completed poll (`Queue::report_polls`).
    pub consumers: Vec<ConsumerIdle>,
}

/// Reports older than this are of replicas that are gone.
pub const FORGET_CONSUMER_AFTER_MS: i64 = 3_600_000;

/// A consumer of the kind's group and how long since it last completed a poll.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ConsumerIdle {
    pub name: String,
    pub idle_ms: u64,
}

impl QueueStats {
    /// Consumers that read within `limit_ms` (a live consumer reads again
    /// every block period, so three of those is the bound the worker's own
    /// `/health` uses).
    pub fn consumers_alive(&self, limit_ms: u64) -> usize {
        self.consumers.iter().filter(|c| c.idle_ms <= limit_ms).count()
    }
}

/// `(kind, status, count, oldest due queued age in seconds)` of the open
/// and dead rows, per kind and status present.
type Row = (String, String, i64, Option<f64>);

async fn job_rows(pool: &PgPool) -> Result<Vec<Row>> {
    Ok(sqlx::query_as(
        "SELECT kind, status, count(*),
                extract(epoch FROM now() - min(next_attempt_at)
                                          FILTER (WHERE status = 'queued' AND next_attempt_at <= now()))::float8
           FROM jobs WHERE status IN ('queued', 'running') GROUP BY kind, status
         UNION ALL
         SELECT kind, 'dead', count(*), NULL FROM jobs WHERE status = 'dead' GROUP BY kind",
    )
    .fetch_all(pool)
    .await?)
}

/// Every kind's queue, one entry per kind in [`JobKind::ALL`] order, zeros
/// included: a kind with no row is a kind with nothing queued, not a kind
/// that is missing. A stream Redis cannot answer for fails the whole read
/// (the caller decides what a partial view would be worth).
pub async fn queues(pool: &PgPool, queue: &Queue) -> Result<Vec<QueueStats>> {
    let rows = job_rows(pool).await?;
    let count = |kind: &str, status: &str| {
        rows.iter().find(|(k, s, _, _)| k == kind && s == status).map_or((0, None), |r| (r.2, r.3))
    };
    let mut out = Vec::with_capacity(JobKind::ALL.len());
    for kind in JobKind::ALL {
        let name = kind.as_str();
        let stream = queue.stats(*kind).await?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut consumers: Vec<ConsumerIdle> = queue
            .polls(*kind)
            .await?
            .into_iter()
            .map(|(name, at)| ConsumerIdle { name, idle_ms: u64::try_from(now_ms - at).unwrap_or(0) })
            .filter(|c| c.idle_ms < FORGET_CONSUMER_AFTER_MS as u64)
            .collect();
        consumers.sort_by(|a, b| a.name.cmp(&b.name));
        let (queued, oldest) = count(name, "queued");
        out.push(QueueStats {
            kind: name,
            queued,
            running: count(name, "running").0,
            oldest_queued_age_s: oldest.unwrap_or(0.0).max(0.0),
            dead: count(name, "dead").0,
            stream_length: stream.length,
            pending: stream.pending,
            consumers,
        });
    }
    Ok(out)
}
