//! Pushing committed jobs to Redis after the answer has gone: one task per
//! API process drains a channel and pushes what accumulated in batches (one
//! Lua call and one wake-up per kind), so a burst of requests costs a few
//! Redis round trips instead of two each. A push that fails, or a process
//! that dies with ids in the channel, loses nothing: the rows are the
//! record and the relay delivers them a few seconds later.

use std::collections::HashMap;

use shared::ids::JobId;
use shared::jobs::{JobKind, Queue};
use tokio::sync::mpsc;

#[derive(Clone)]
pub struct Pusher {
    tx: mpsc::UnboundedSender<(JobKind, JobId)>,
}

impl Pusher {
    pub fn start(queue: Queue) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(JobKind, JobId)>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch: HashMap<JobKind, Vec<JobId>> = HashMap::new();
                batch.entry(first.0).or_default().push(first.1);
                let mut taken = 1;
                while taken < 512 {
                    match rx.try_recv() {
                        Ok((kind, id)) => {
                            batch.entry(kind).or_default().push(id);
                            taken += 1;
                        }
                        Err(_) => break,
                    }
                }
                for (kind, ids) in batch {
                    if let Err(e) = queue.push_many(kind, &ids).await {
                        tracing::warn!(kind = %kind, jobs = ids.len(), error = %e, "push to Redis failed; the relay will deliver the jobs");
                    }
                }
            }
        });
        Pusher { tx }
    }

    pub fn push(&self, kind: JobKind, id: JobId) {
        if self.tx.send((kind, id)).is_err() {
            tracing::warn!(job_id = %id, "the pusher is gone; the relay will deliver the job");
        }
    }
}
