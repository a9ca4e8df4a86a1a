//! Database access: the pool, migrations, the one way to open a write
//! transaction ([`serializable`]) and the mapping of named constraints to
//! client errors.
//!
//! A habit of our guarded UPDATEs: a row-local status check is written
//! `(status || '') = 'ACTIVE'`. The expression keeps the planner from
//! matching it to an index on `status`, so the statement finds its row by
//! primary key alone and its SERIALIZABLE predicate lock covers that row, not
//! the range of every active row (which made unrelated purchases conflict).

use std::time::Duration;

use futures::future::BoxFuture;
use rand::Rng;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use crate::error::{Error, ErrorCode, Problem};

/// The sqlx migrations of this repository (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Attempts of one transaction on serialization failures before giving up
/// (the job then counts an infrastructure attempt).
const MAX_TX_ATTEMPTS: u32 = 12;

/// How long a caller of [`connect`]'s pool waits for a connection.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn connect(url: &str, max: u32) -> Result<PgPool, Error> {
    connect_with(url, max, ACQUIRE_TIMEOUT, SessionBounds::default()).await
}

/// How long the server keeps a session of ours that its client no longer
/// serves: a host that drops off the network leaves its sessions open on
/// the server (default TCP keepalive: two hours), with their row locks,
/// and every other replica's work on those rows waits. Set per session at
/// connection (startup options), on every connection the product opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionBounds {
    /// `idle_in_transaction_session_timeout`: a transaction whose client
    /// has sent nothing for this long is ended, its locks released. The
    /// job lease: a live worker has given up on the job by then anyway.
    pub idle_in_transaction: Duration,
}

impl Default for SessionBounds {
    fn default() -> Self {
        Self { idle_in_transaction: Duration::from_secs(30) }
    }
}

impl SessionBounds {
    /// The bounds for a process whose jobs hold a transaction at most `lease`.
    pub fn for_lease(lease: Duration) -> Self {
        Self { idle_in_transaction: lease.max(Duration::from_secs(1)) }
    }

    /// TCP keepalive probes after 5 s of silence, every 2 s, 3 lost ones
    /// end the session (a vanished client is noticed within about 11 s even
    /// mid-statement, where `client_connection_check_interval` looks every
    /// 2 s), and unacknowledged data is given up after 10 s.
    fn options(&self) -> [(&'static str, String); 6] {
        [
            ("idle_in_transaction_session_timeout", self.idle_in_transaction.as_millis().to_string()),
            ("tcp_keepalives_idle", "5".into()),
            ("tcp_keepalives_interval", "2".into()),
            ("tcp_keepalives_count", "3".into()),
            ("tcp_user_timeout", "10000".into()),
            ("client_connection_check_interval", "2000".into()),
        ]
    }
}

/// A pool whose callers wait at most `acquire_timeout` for a connection
/// (the api's request paths wait much less than the worker's jobs), each
/// session bounded by `bounds`.
pub async fn connect_with(
    url: &str,
    max: u32,
    acquire_timeout: Duration,
    bounds: SessionBounds,
) -> Result<PgPool, Error> {
    let opts: PgConnectOptions = url.parse()?;
    let opts = opts.application_name("kobatela").options(bounds.options());
    let pool = PgPoolOptions::new()
        .max_connections(max)
        .min_connections(1)
        .acquire_timeout(acquire_timeout)
        .connect_with(opts)
        .await?;
    Ok(pool)
}

/// One round trip: Postgres answers (`/ready`).
pub async fn ping(pool: &PgPool) -> Result<(), Error> {
    sqlx::query("SELECT 1").execute(pool).await?;
    Ok(())
}

pub async fn migrate(pool: &PgPool) -> Result<(), Error> {
    MIGRATOR.run(pool).await.map_err(|e| Error::internal(format!("migrations: {e}")))
}

/// Serialization retries, for the metrics.
pub fn note_retry(kind: &'static str) {
    metrics::counter!("kobatela_serialization_retries_total", "kind" => kind).increment(1);
}

/// Runs `f` in one SERIALIZABLE transaction and commits. A serialization
/// failure or deadlock (40001, 40P01), in any statement or at commit,
/// restarts the whole transaction after a jittered back-off, a bounded
/// number of times. `ctx` is handed back to `f` so it can borrow.
///
/// `f` decides what to return; an `Err` rolls the transaction back. To
/// commit while reporting a business refusal, return the refusal inside `Ok`.
pub async fn serializable<C, T, F>(pool: &PgPool, ctx: &C, f: F) -> Result<T, Error>
where
    C: ?Sized + Sync,
    F: for<'c> FnMut(&'c mut PgConnection, &'c C) -> BoxFuture<'c, Result<T, Error>>,
{
    serializable_with(pool, BEGIN, ctx, f).await
}

/// One round trip opens the transaction. A sequential scan under
/// SERIALIZABLE takes a predicate lock on the whole table and makes every
/// concurrent writer of it a conflict (PostgreSQL's manual advises favouring
/// index scans); our transactions read by key, so the planner is told to
/// prefer the indexes even on small tables.
const BEGIN: &str = "BEGIN ISOLATION LEVEL SERIALIZABLE; SET LOCAL enable_seqscan = off; SET LOCAL jit = off";

async fn serializable_with<C, T, F>(pool: &PgPool, begin: &'static str, ctx: &C, mut f: F) -> Result<T, Error>
where
    C: ?Sized + Sync,
    F: for<'c> FnMut(&'c mut PgConnection, &'c C) -> BoxFuture<'c, Result<T, Error>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = async {
            let mut conn = pool.acquire().await?;
            let mut tx = conn.begin_with(begin).await?;
            let value = f(&mut tx, ctx).await?;
            tx.commit().await?;
            Ok::<T, Error>(value)
        }
        .await;
        match result {
            Err(e) if e.is_retryable_conflict() && attempt < MAX_TX_ATTEMPTS => {
                note_retry("tx");
                let base = 2u64.pow(attempt.min(6));
                let jitter = rand::rng().random_range(0..=base * 2);
                tokio::time::sleep(Duration::from_millis(base + jitter)).await;
            }
            other => return other,
        }
    }
}

/// Runs `f` in one read-only REPEATABLE READ transaction: several reads
/// that must agree with each other (an escrow, its milestones and its
/// payments) see one snapshot, never a job's commit half-way between them.
pub async fn snapshot<C, T, F>(pool: &PgPool, ctx: &C, f: F) -> Result<T, Error>
where
    C: ?Sized + Sync,
    F: for<'c> FnOnce(&'c mut PgConnection, &'c C) -> BoxFuture<'c, Result<T, Error>>,
{
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
    let value = f(&mut tx, ctx).await?;
    tx.commit().await?;
    Ok(value)
}

/// Maps a unique or check violation on a named constraint to a problem;
/// anything else passes through untouched.
pub trait OnConstraint<T> {
    fn on_constraint(self, name: &str, code: ErrorCode, detail: &str) -> Result<T, Error>;
}

impl<T> OnConstraint<T> for Result<T, Error> {
    fn on_constraint(self, name: &str, code: ErrorCode, detail: &str) -> Result<T, Error> {
        match self {
            Err(Error::Db(sqlx::Error::Database(db))) if db.constraint() == Some(name) => {
                Err(Error::Problem(Problem::new(code, detail)))
            }
            other => other,
        }
    }
}

impl<T> OnConstraint<T> for Result<T, sqlx::Error> {
    fn on_constraint(self, name: &str, code: ErrorCode, detail: &str) -> Result<T, Error> {
        self.map_err(Error::from).on_constraint(name, code, detail)
    }
}
