//! Receipt waiting (`Prefer: wait=N`): workers announce each job that ended
//! on the Redis channel `{prefix}.ended` after its commit (with the entry's
//! acknowledgement, one round trip); one subscription per api process fans
//! the ids out to waiting requests. No `NOTIFY` in any job transaction: it
//! would serialise every job commit of the cluster. The row stays the truth:
//! a waiter re-reads it on every wake-up and at least every 500 ms, so a
//! missed message (Redis away, a reconnect) costs at most that.

use std::time::Duration;

use futures::StreamExt;
use shared::ids::JobId;
use shared::jobs::record::{self, JobRow};
use shared::principal::Principal;
use sqlx::PgPool;
use tokio::sync::broadcast;

#[derive(Clone)]
pub struct JobWaiter {
    tx: broadcast::Sender<JobId>,
}

const RECHECK: Duration = Duration::from_millis(500);

impl JobWaiter {
    pub fn start(client: redis::Client, channel: String) -> Self {
        let (tx, _) = broadcast::channel(4096);
        let sender = tx.clone();
        tokio::spawn(async move {
            loop {
                match client.get_async_pubsub().await {
                    Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                        Ok(()) => {
                            let mut messages = pubsub.on_message();
                            while let Some(msg) = messages.next().await {
                                let Ok(ids) = msg.get_payload::<String>() else { continue };
                                for id in ids.split(',').filter_map(|id| id.parse().ok()) {
                                    let _ = sender.send(id);
                                }
                            }
                            tracing::warn!("job-end subscription lost; reconnecting");
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot subscribe to job ends"),
                    },
                    Err(e) => tracing::debug!(error = %e, "cannot connect the job-end subscription"),
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
            let until = (tokio::time::Instant::now() + RECHECK).min(deadline);
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
