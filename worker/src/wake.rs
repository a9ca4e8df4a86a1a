//! Waking idle workers. apalis-redis only fetches when its worker is woken;
//! we subscribe to `kobatela-wake:*` (published by every push) and wake the
//! queue's worker at once, with a one-second tick as a safety net for a lost
//! message or a reconnect.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc;
use futures::{Stream, StreamExt};
use shared::jobs::Queue;

#[derive(Clone, Default)]
pub struct WakeHub {
    senders: Arc<Mutex<HashMap<String, Vec<mpsc::Sender<()>>>>>,
}

impl WakeHub {
    /// The wake-up stream of one queue's worker.
    pub fn stream_for(&self, queue_name: &str) -> impl Stream<Item = ()> + Unpin + Send + use<> {
        let (tx, rx) = mpsc::channel(1);
        let mut map = match self.senders.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.entry(Queue::wake_channel(queue_name)).or_default().push(tx);
        let ticks = futures::stream::unfold((), |_| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Some(((), ()))
        });
        futures::stream::select(rx, ticks.boxed())
    }

    fn wake(&self, channel: &str) {
        let mut map = match self.senders.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if let Some(senders) = map.get_mut(channel) {
            for tx in senders.iter_mut() {
                // Full means a wake-up is already pending.
                let _ = tx.try_send(());
            }
        }
    }

    /// Listens for pushes until the process ends, reconnecting as needed.
    pub fn listen(&self, client: redis::Client) {
        let hub = self.clone();
        tokio::spawn(async move {
            loop {
                match client.get_async_pubsub().await {
                    Ok(mut pubsub) => {
                        if let Err(e) = pubsub.psubscribe("kobatela-wake:*").await {
                            tracing::warn!(error = %e, "cannot subscribe to wake-ups");
                        } else {
                            let mut messages = pubsub.on_message();
                            while let Some(msg) = messages.next().await {
                                hub.wake(msg.get_channel_name());
                            }
                            tracing::warn!("wake-up subscription ended; reconnecting");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot connect the wake-up subscription"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}
