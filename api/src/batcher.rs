//! Group commit of job rows: concurrent submissions share one multi-row
//! `INSERT` (one commit, one fsync) instead of paying one each. A request is
//! still answered only after its own row is durable, and an idempotency key
//! that was taken is resolved for that request alone.
//!
//! There is no timer: a batch is whatever arrived while the previous
//! flushes were busy. With no flush running, a request is flushed at once
//! (no added latency at low load); under load, requests queue behind the
//! `FLUSHES` in flight and the next batch takes up to `MAX_ROWS` of them.

use std::sync::Arc;

use shared::error::{Error, Result};
use shared::jobs::NewJob;
use shared::jobs::record::{self, JobRow};
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::breaker::Breaker;

const MAX_ROWS: usize = 128;
const FLUSHES: usize = 4;

type Reply = oneshot::Sender<Result<(JobRow, bool)>>;

#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::UnboundedSender<(NewJob, Reply)>,
}

impl Batcher {
    /// `breaker` is opened at once when a batch finds Postgres unreachable
    /// (its requests see only `Error::Unavailable`, which names no service).
    pub fn start(pool: PgPool, breaker: Arc<Breaker>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(NewJob, Reply)>();
        let flushes = Arc::new(Semaphore::new(FLUSHES));
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_ROWS);
            while rx.recv_many(&mut batch, MAX_ROWS).await > 0 {
                let Ok(permit) = flushes.clone().acquire_owned().await else { break };
                // Whatever arrived while waiting for a flush joins this one.
                while batch.len() < MAX_ROWS {
                    match rx.try_recv() {
                        Ok(request) => batch.push(request),
                        Err(_) => break,
                    }
                }
                let (pool, breaker) = (pool.clone(), breaker.clone());
                let taken = std::mem::replace(&mut batch, Vec::with_capacity(MAX_ROWS));
                tokio::spawn(async move {
                    flush(&pool, &breaker, taken).await;
                    drop(permit);
                });
            }
        });
        Self { tx }
    }

    /// Inserts the job row (with the others waiting now) and answers once it
    /// is committed: the row and whether it is new.
    pub async fn insert(&self, new: NewJob) -> Result<(JobRow, bool)> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((new, reply)).map_err(|_| Error::internal("the insert batcher is gone"))?;
        answer.await.map_err(|_| Error::internal("the insert batcher dropped a request"))?
    }
}

async fn flush(pool: &PgPool, breaker: &Breaker, batch: Vec<(NewJob, Reply)>) {
    metrics::histogram!("kobatela_insert_batch_rows").record(batch.len() as f64);
    let (news, replies): (Vec<NewJob>, Vec<Reply>) = batch.into_iter().unzip();
    let inserted = match pool.acquire().await {
        Ok(mut conn) => record::insert_many(&mut conn, &news).await,
        Err(e) => Err(e.into()),
    };
    match inserted {
        Ok(rows) => {
            for ((new, reply), row) in news.iter().zip(replies).zip(rows) {
                let answer = match row {
                    Some(row) => Ok((row, true)),
                    None => existing(pool, new).await,
                };
                let _ = reply.send(answer);
            }
        }
        // The whole batch failed: one request's bad row must not fail the
        // others, so each is inserted alone and gets its own answer.
        Err(e) if !e.is_unavailable() => {
            tracing::warn!(error = %e, rows = news.len(), "batch insert failed; inserting one by one");
            for (new, reply) in news.iter().zip(replies) {
                let answer = match pool.acquire().await {
                    Ok(mut conn) => record::insert(&mut conn, new).await,
                    Err(e) => Err(e.into()),
                };
                let _ = reply.send(answer);
            }
        }
        Err(e) => {
            breaker.trip("a job insert found Postgres unreachable");
            let message = e.to_string();
            for reply in replies {
                let _ = reply.send(Err(Error::Unavailable(message.clone())));
            }
        }
    }
}

async fn existing(pool: &PgPool, new: &NewJob) -> Result<(JobRow, bool)> {
    let mut conn = pool.acquire().await?;
    record::existing(&mut conn, new).await.map(|row| (row, false))
}
