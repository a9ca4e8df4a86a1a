//! Application state shared by every handler.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use shared::config::{Config, RateLimit};
use shared::ids::ApiKeyId;
use shared::jobs::Queue;
use shared::storage::ProofStore;
use sqlx::PgPool;

use crate::batcher::Batcher;
use crate::pusher::Pusher;
use crate::waiter::JobWaiter;

#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

pub struct Inner {
    pub pool: PgPool,
    pub queue: Queue,
    pub config: Config,
    pub limiter: DefaultKeyedRateLimiter<ApiKeyId>,
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
        let quota = match config.rate_limit {
            RateLimit::PerSecond(n) => Quota::per_second(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)),
            RateLimit::PerMinute(n) => Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)),
        };
        let limiter = RateLimiter::keyed(quota);
        let pusher = Pusher::start(queue.clone());
        let batcher = Batcher::start(pool.clone());
        let psp = shared::psp::client::HttpPspClient::new(
            config.psp_base_url.clone(),
            config.psp_api_key.clone(),
            std::time::Duration::from_secs(5),
        );
        AppState(Arc::new(Inner { pool, queue, config, limiter, waiter, store, pusher, batcher, psp }))
    }
}
