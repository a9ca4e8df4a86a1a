//! Background load for fault tests: clients posting purchases in a loop
//! until stopped, keeping every accepted job id and every other answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinHandle;

use crate::client::Client;

pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<anyhow::Result<Tally>>>,
}

/// What the clients got back.
#[derive(Debug, Default)]
pub struct Tally {
    /// Job ids of the requests answered 202.
    pub accepted: Vec<String>,
    /// Every other answer: (status, body).
    pub refused: Vec<(u16, String)>,
}

impl Load {
    /// `clients` loops posting `body` to `path` with fresh idempotency keys,
    /// each pausing `pause` between requests.
    pub fn start(client: &Client, path: &str, body: Value, clients: usize, pause: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|n| {
                let (client, path, body, stop) = (client.clone(), path.to_string(), body.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut tally = Tally::default();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let key = format!("load-{n}-{i}-{}", uuid::Uuid::new_v4().simple());
                        let r = client.job(&path, &key, body.clone(), 0).await?;
                        if r.status == 202 {
                            tally.accepted.push(r.s("job_id"));
                        } else {
                            tally.refused.push((r.status, r.text));
                        }
                        tokio::time::sleep(pause).await;
                    }
                    Ok(tally)
                })
            })
            .collect();
        Self { stop, tasks }
    }

    /// Stops the clients and adds up what they got.
    pub async fn stop(self) -> anyhow::Result<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Tally::default();
        for t in self.tasks {
            let tally = t.await??;
            all.accepted.extend(tally.accepted);
            all.refused.extend(tally.refused);
        }
        Ok(all)
    }
}
