//! Receipt waiting (`Prefer: wait=N`): one `LISTEN kobatela_jobs` connection
//! per API process fans job-finished notifications out to waiting requests.
//! A periodic re-read covers notifications lost while reconnecting.

use std::time::Duration;

use shared::ids::JobId;
use shared::jobs::record::{self, JobRow};
use shared::principal::Principal;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;

#[derive(Clone)]
pub struct JobWaiter {
    tx: broadcast::Sender<JobId>,
}

impl JobWaiter {
    pub fn start(pool: PgPool) -> Self {
        let (tx, _) = broadcast::channel(4096);
        let sender = tx.clone();
        tokio::spawn(async move {
            loop {
                match PgListener::connect_with(&pool).await {
                    Ok(mut listener) => {
                        if let Err(e) = listener.listen("kobatela_jobs").await {
                            tracing::warn!(error = %e, "LISTEN failed");
                        } else {
                            loop {
                                match listener.recv().await {
                                    Ok(n) => {
                                        if let Ok(id) = n.payload().parse() {
                                            let _ = sender.send(id);
                                        }
                                    }
                                    Err(e) => {
                                        tracing::warn!(error = %e, "job notification listener lost its connection");
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot connect the job notification listener"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        JobWaiter { tx }
    }

    /// Waits until the job is terminal or `max` passes; returns the latest row.
    pub async fn wait(&self, pool: &PgPool, id: JobId, who: &Principal, max: Duration) -> shared::Result<JobRow> {
        let mut rx = self.tx.subscribe();
        let deadline = tokio::time::Instant::now() + max;
        loop {
            let mut conn = pool.acquire().await?;
            let row = record::get_for(&mut conn, id, who).await?;
            drop(conn);
            if row.is_terminal() || tokio::time::Instant::now() >= deadline {
                return Ok(row);
            }
            let recheck = tokio::time::Instant::now() + Duration::from_millis(500);
            let until = recheck.min(deadline);
            loop {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Ok(done)) if done == id => break,
                    Ok(Ok(_)) => continue,
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) => break,
                    Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => break,
                }
            }
        }
    }
}
