//! Fail fast while Postgres is away (API.md, "Fail fast"). A probe runs
//! `/ready`'s Postgres check every [`PROBE_EVERY`] on a connection of its
//! own (so a pool busy with requests never reads as an outage), with a
//! short time limit. While the breaker is open, every route that needs
//! Postgres answers `503 UNAVAILABLE` with `Retry-After` at once (the
//! [`guard`] middleware) instead of waiting for a pool that cannot connect.
//!
//! It opens when the probe fails twice in a row, or at once when a request
//! finds Postgres unreachable (its error response carries
//! `PostgresUnavailable`, or the batcher reports its insert failed so);
//! only the probe closes it, on its first success, and it is woken at once
//! when a request opens the breaker, so a lone dropped connection costs a
//! probe's round trip. The api's pool has a short acquire timeout too
//! (`REQUEST_ACQUIRE_TIMEOUT` in `main.rs`): the backstop for the requests
//! that started before the breaker opened.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use shared::{ErrorCode, Problem};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Notify;

use crate::error::{PostgresUnavailable, problem_response};
use crate::state::AppState;

/// How often the probe asks Postgres.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);

/// How long one probe may take before it counts as a failure.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Consecutive failed probes that open the breaker (one slow answer under
/// load is not an outage; a refused connection fails twice within 0.3 s).
const PROBE_FAILURES_TO_OPEN: u32 = 2;

pub struct Breaker {
    open: AtomicBool,
    /// When it opened, in ms since `epoch` (for the log line at closing).
    opened_at_ms: AtomicU64,
    epoch: Instant,
    wake: Notify,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            open: AtomicBool::new(false),
            opened_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            wake: Notify::new(),
        }
    }
}

impl Breaker {
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Opens it (a request found Postgres unreachable) and wakes the probe.
    pub fn trip(&self, why: &str) {
        self.set_open(why);
        self.wake.notify_one();
    }

    fn set_open(&self, why: &str) {
        if !self.open.swap(true, Ordering::AcqRel) {
            self.opened_at_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Release);
            tracing::warn!(why, "Postgres unreachable: requests that need it answer 503 until it is back");
        }
    }

    fn close(&self) {
        if self.open.swap(false, Ordering::AcqRel) {
            let took_ms =
                (self.epoch.elapsed().as_millis() as u64).saturating_sub(self.opened_at_ms.load(Ordering::Acquire));
            tracing::info!(took_ms, "Postgres reachable again: requests are served");
        }
    }

    /// Probes Postgres in the background for as long as the breaker lives.
    /// The probe's pool holds one connection from `pool`'s options.
    pub fn start_probe(self: &Arc<Self>, pool: &PgPool) {
        let probe = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(PROBE_TIMEOUT)
            .connect_lazy_with((*pool.connect_options()).clone());
        let breaker = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                let Some(b) = breaker.upgrade() else { return };
                if postgres_answers(&probe).await {
                    failures = 0;
                    b.close();
                } else {
                    failures += 1;
                    if failures >= PROBE_FAILURES_TO_OPEN {
                        b.set_open("the probe got no answer");
                    }
                }
                // Woken early when a request opens it; otherwise one period.
                tokio::select! {
                    _ = b.wake.notified() => {}
                    _ = tokio::time::sleep(PROBE_EVERY) => {}
                }
            }
        });
    }
}

/// `/ready`'s Postgres check: one round trip within [`PROBE_TIMEOUT`].
pub async fn postgres_answers(pool: &PgPool) -> bool {
    tokio::time::timeout(PROBE_TIMEOUT, shared::db::ping(pool)).await.is_ok_and(|r| r.is_ok())
}

/// The middleware on every route that needs Postgres: `503` at once while
/// the breaker is open; a response that found Postgres unreachable opens it.
pub async fn guard(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if s.breaker.is_open() {
        tracing::debug!("refused at once: Postgres is unreachable");
        return problem_response(&Problem::new(ErrorCode::Unavailable, "the database is unreachable; retry later"))
            .into_response();
    }
    let res = next.run(req).await;
    if res.extensions().get::<PostgresUnavailable>().is_some() {
        s.breaker.trip("a request found Postgres unreachable");
    }
    res
}
