//! Pushing committed jobs to Redis after the answer has gone: one task per
//! API process drains a channel and pushes what accumulated in one pipelined
//! batch (`XADD` per job, every kind in one round trip), so a burst of
//! requests costs one Redis round trip instead of one each. A push that fails, or a process
//! that dies with ids in the channel, loses nothing: the rows are the
//! record and the relay delivers them a few seconds later.

use shared::jobs::Queue;
use shared::jobs::transport::JobRef;
use tokio::sync::mpsc;

#[derive(Clone)]
pub struct Pusher {
    tx: mpsc::UnboundedSender<JobRef>,
}

impl Pusher {
    pub fn start(queue: Queue) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<JobRef>();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(512);
            while rx.recv_many(&mut batch, 512).await > 0 {
                if let Err(e) = queue.push_batch(&batch).await {
                    tracing::warn!(jobs = batch.len(), error = %e, "push to Redis failed; the relay will deliver the jobs");
                }
                batch.clear();
            }
        });
        Pusher { tx }
    }

    pub fn push(&self, job: JobRef) {
        let id = job.id;
        if self.tx.send(job).is_err() {
            tracing::warn!(job_id = %id, "the pusher is gone; the relay will deliver the job");
        }
    }
}
