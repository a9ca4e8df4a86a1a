//! The cron schedules as the ops console shows them: each schedule's last
//! claimed tick, which replica claimed it and the job it made, read from
//! `cron_ticks` by its primary key (one index probe per schedule).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

use crate::error::Result;

/// One schedule's last claimed tick.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct CronTick {
    pub schedule: String,
    pub tick: DateTime<Utc>,
    /// The `WORKER_NAME` of the replica whose claim won.
    pub claimed_by: String,
    pub claimed_at: DateTime<Utc>,
    /// The job the tick made, when it made one.
    pub job_id: Option<uuid::Uuid>,
}

/// The last tick of every schedule that ever ran (kept two days, an hour
/// for the relay), by schedule name.
pub async fn last_ticks(conn: &mut PgConnection) -> Result<Vec<CronTick>> {
    Ok(sqlx::query_as(
        "SELECT DISTINCT ON (schedule) schedule, tick, claimed_by, claimed_at, job_id
           FROM cron_ticks ORDER BY schedule, tick DESC",
    )
    .fetch_all(conn)
    .await?)
}
