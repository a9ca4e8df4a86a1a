//! Application state shared by every handler.

use std::sync::Arc;

use shared::config::Config;
use shared::jobs::Queue;
use shared::storage::ProofStore;
use sqlx::PgPool;

use crate::batcher::Batcher;
use crate::breaker::Breaker;
use crate::limits::Limits;
use crate::pusher::Pusher;
use crate::waiter::JobWaiter;

#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

pub struct Inner {
    pub pool: PgPool,
    pub queue: Queue,
    pub config: Config,
    /// Failed authentications per address, requests per key, bad keys.
    pub limits: Limits,
    /// Open while Postgres is unreachable: requests that need it answer 503 at once.
    pub breaker: Arc<Breaker>,
    pub waiter: JobWaiter,
    pub store: Arc<dyn ProofStore>,
    pub pusher: Pusher,
    pub batcher: Batcher,
    /// The PSP over HTTP, for reading its log (reconciliation).
    pub psp: shared::psp::client::HttpPspClient,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(pool: PgPool, queue: Queue, config: Config, waiter: JobWaiter, store: Arc<dyn ProofStore>) -> Self {
        let shared = shared::ratelimit::SharedBudgets::new(
            queue.connection(),
            queue.prefix(),
            config.auth_failures_per_addr,
            config.rate_limit,
        );
        let limits = Limits::new(Some(shared), config.auth_failures_per_addr, config.rate_limit);
        let breaker = Arc::new(Breaker::default());
        breaker.start_probe(&pool);
        let pusher = Pusher::start(queue.clone());
        let batcher = Batcher::start(pool.clone(), breaker.clone());
        let psp = shared::psp::client::HttpPspClient::new(
            config.psp_base_url.clone(),
            config.psp_api_key.clone(),
            std::time::Duration::from_secs(5),
        );
        AppState(Arc::new(Inner { pool, queue, config, limits, breaker, waiter, store, pusher, batcher, psp }))
    }
}
