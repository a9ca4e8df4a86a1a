//! [`StreamBackend`]: the apalis 1.0 `Backend` of one kind. It owns the
//! receiving end of its consumer's channel and the consumer task; apalis
//! polls it like any backend (builder, layers, concurrency and graceful
//! shutdown stay apalis').

use std::sync::Arc;
use std::task::{Context, Poll};

use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::task::Task;
use apalis_core::task::task_id::RandomId;
use apalis_core::worker::context::WorkerContext;
use tokio::sync::{mpsc, watch};
use tower_layer::Identity;

use super::consumer::{Consumer, ConsumerConfig, ConsumerStatus, Delivery};

/// Never produced: the consumer meets every Redis error itself, so the
/// worker's stream never ends on one (apalis ends a worker whose backend
/// reports an error).
#[derive(Debug, thiserror::Error)]
#[error("stream backend error")]
pub struct NeverFails;

pub struct StreamBackend {
    rx: mpsc::Receiver<Delivery>,
}

impl StreamBackend {
    /// Starts the kind's consumer task (supervised: restarted should it ever
    /// panic) and returns the backend apalis polls. `buffer` entries at most
    /// wait between Redis and apalis.
    pub fn start(
        client: redis::Client,
        config: ConsumerConfig,
        status: Arc<ConsumerStatus>,
        buffer: usize,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        tokio::spawn(async move {
            loop {
                let consumer =
                    Consumer::new(client.clone(), config.clone(), status.clone(), tx.clone(), shutdown.clone());
                match tokio::spawn(consumer.run()).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::error!(kind = %config.kind, error = %e, "stream consumer crashed; restarting it");
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                }
            }
        });
        Self { rx }
    }
}

impl Backend for StreamBackend {
    type Task = Task<Delivery>;
    type Error = NeverFails;

    fn poll_ready(&mut self, _cx: &mut Context<'_>, _worker: &WorkerContext) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        // `None` only once the consumer stopped for shutdown.
        self.rx.poll_recv(cx).map(|d| d.map(|d| Ok(Task::new(d))))
    }

    fn poll_close(&mut self, _cx: &mut Context<'_>, _worker: &WorkerContext) -> Poll<Result<(), Self::Error>> {
        // Entries fetched but not started stay pending in the group: another
        // consumer takes them over once idle past the lease, and the relay
        // pushes their rows again.
        self.rx.close();
        Poll::Ready(Ok(()))
    }
}

impl BackendConfig for StreamBackend {
    type Args = Delivery;
    type Id = RandomId;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = Identity;

    fn config(&self) -> &Self::Config {
        &()
    }

    fn middleware(&mut self, _worker: &mut WorkerContext) -> Self::Layer {
        Identity::new()
    }
}
