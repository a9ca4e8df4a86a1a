//! What the api's `/metrics` reads of the job rows at scrape time, each
//! through an index (no scan of the whole table per scrape).

use sqlx::PgPool;

use crate::error::Result;

/// `(kind, status, count)` of the jobs `queued`, `running` and `dead`.
pub async fn open_and_dead(pool: &PgPool) -> Result<Vec<(String, String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT kind, status, count(*) FROM jobs WHERE status IN ('queued', 'running') GROUP BY kind, status
         UNION ALL
         SELECT kind, 'dead', count(*) FROM jobs WHERE status = 'dead' GROUP BY kind",
    )
    .fetch_all(pool)
    .await?)
}

/// Kind, status, count, latency p50 and p99 (seconds) of finished jobs.
pub type RecentRow = (String, String, i64, Option<f64>, Option<f64>);

/// Outcomes and latency (created → finished) of the `last` most recent
/// jobs, read backwards by id.
pub async fn recent(pool: &PgPool, last: i64) -> Result<Vec<RecentRow>> {
    Ok(sqlx::query_as(
        "SELECT kind, status, count(*),
                (percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at)))::float8,
                (percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at)))::float8
           FROM (SELECT kind, status, created_at, finished_at FROM jobs ORDER BY id DESC LIMIT $1) recent
          WHERE finished_at IS NOT NULL GROUP BY kind, status",
    )
    .bind(last)
    .fetch_all(pool)
    .await?)
}
