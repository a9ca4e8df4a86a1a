//! `cargo xtask bench [--quick]`: how fast the job pipeline is on this
//! machine, each number beside a reference measured in the same run (the
//! machine is small, shared and noisy; absolute numbers travel badly).
//!
//! One run, in this order, against a fresh `kobatela_bench` database:
//!
//! 1. `cargo build --release --bins`, `api migrate`, `api serve`; the seed
//!    goes through the HTTP API: a sender, [`BENEFICIARIES`] beneficiaries
//!    each with a key and a 1,000,000.00 USD mandate, a category and a
//!    certified merchant.
//! 2. **Purchases end to end**, with 1 worker then 2 (each
//!    `WORKER_CONCURRENCY=16`): [`IN_FLIGHT`] tasks of this process each post
//!    a purchase of 1.00 (no `Prefer: wait`), wait for the job's
//!    `kobatela_jobs` notification (we `LISTEN` like the API does), and post
//!    the next, for a fixed time. So [`IN_FLIGHT`] jobs are always between
//!    receipt and commit: the queue stays full without growing a backlog
//!    that would turn the latency into a measure of the backlog. Throughput
//!    and latency are read back from the `jobs` rows: succeeded jobs per
//!    second of `finished_at` in the steady window (first and last second
//!    left out), latency `finished_at - created_at`.
//! 3. **Enqueue latency**: a separate process (`xtask bench-load`) posts
//!    purchases open-loop at [`ENQUEUE_RATE`]/s, first while both workers
//!    run (context: they share the two cores), then, the workers stopped,
//!    against the api alone; the time until the 202. Reference: `GET
//!    /health` at the same rate. In between, the money is checked: no job
//!    failed or died, `sum(purchases.amount)` = succeeded jobs × 1.00 =
//!    `sum(mandates.spent_amount)`.
//! 4. **Webhook acknowledgement** (workers stopped): the same generator
//!    sends signed `POST /psp/webhook` at [`WEBHOOK_RATE`]/s open-loop, then
//!    closed-loop on [`WEBHOOK_CONNECTIONS`] connections. Reference: `GET
//!    /health` the same ways.
//! 5. **pgbench** (api stopped): `target/bench/purchase.sql` runs the
//!    statements one purchase costs Postgres, as our code runs them, on 16
//!    clients for as long as one purchase phase, then on 1 client (the cost
//!    without serialization conflicts).
//!
//! The table goes to stdout and `target/bench/results.md`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use reqwest::Url;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::procs::{self, Proc};
use crate::services::{Origin, Services, redact};
use crate::{Layout, Signals};

mod load;
mod pgbench;
mod phase;
mod setup;
mod table;

pub use load::load_main;
use load::*;
use pgbench::*;
use phase::*;
use setup::*;
use table::*;

const DATABASE: &str = "kobatela_bench";
/// Beneficiaries, each with one mandate: jobs spread over this many rows.
const BENEFICIARIES: usize = 50;
/// Purchases between receipt and commit at any time in the throughput phases.
const IN_FLIGHT: usize = 64;
const WORKER_CONCURRENCY: usize = 16;
const DB_POOL_SIZE: u32 = 32;
const THROUGHPUT_TARGET: f64 = 0.50;
const ENQUEUE_RATE: u32 = 200;
const ENQUEUE_P99_TARGET_MS: f64 = 5.0;
const WEBHOOK_RATE: u32 = 1000;
const WEBHOOK_P99_TARGET_MS: f64 = 10.0;
const WEBHOOK_CONNECTIONS: usize = 32;
const PGBENCH_CLIENTS: u32 = 16;
const PGBENCH_THREADS: u32 = 2;
const PGBENCH_MAX_TRIES: u32 = 10;
/// The open-loop generator's connections at most; a request waits for one.
const OPEN_LOOP_CONNECTIONS: usize = 256;
/// A request without an answer this long after it was due is an error.
const REQUEST_LIMIT: Duration = Duration::from_secs(10);
/// How long the jobs of a phase may take to end once posting stops.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);
const JOBS_CHANNEL: &str = "kobatela_jobs";

/// `bench` arguments.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub quick: bool,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut options = Self { quick: false };
        for arg in args {
            match arg.as_str() {
                "--quick" => options.quick = true,
                // Release binaries are the default and the only choice: debug
                // numbers mean nothing.
                "--release" => {}
                other => bail!("`bench` takes --quick and --release, not `{other}`"),
            }
        }
        Ok(options)
    }

    fn purchase_secs(self) -> u64 {
        if self.quick { 8 } else { 20 }
    }

    fn open_secs(self) -> u64 {
        if self.quick { 5 } else { 10 }
    }

    fn reference_secs(self) -> u64 {
        if self.quick { 3 } else { 5 }
    }

    fn closed_secs(self) -> u64 {
        if self.quick { 3 } else { 5 }
    }
}

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

/// Runs the benchmark; everything it started is stopped before it returns.
pub async fn run(layout: &Layout, services: &Services, signals: &mut Signals, options: Options) -> Result<()> {
    let out = layout.target.join("bench");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let binaries = build_release(layout, signals).await?;
    let database = crate::services::fresh_database(&services.postgres, DATABASE).await?;
    let logs = layout.logs();
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let setup = Setup::new(&database, services)?;
    println!("database: {} (fresh)", redact(&database));
    println!("api: {}  queue prefix: {}", setup.api_base, setup.queue_prefix);
    println!("migrating: api migrate");
    procs::run_to_end(
        "api migrate",
        Command::new(&binaries.api).arg("migrate").envs(setup.api_env()),
        &logs.join("bench-api-migrate.log"),
        Duration::from_secs(120),
    )
    .await?;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect(database.as_str())
        .await
        .context("connecting to the bench database")?;

    let mut fleet = Fleet::default();
    let ctx =
        Ctx { binaries: &binaries, setup: &setup, logs: &logs, out: &out, pool: &pool, database: &database, options };
    let outcome = tokio::select! {
        outcome = measure(&mut fleet, &ctx) => outcome,
        name = signals.recv() => Err(anyhow!("interrupted by {name}")),
    };
    println!("stopping what the bench started");
    procs::stop_all(fleet.workers).await;
    procs::stop_all(fleet.api).await;
    if tokio::time::timeout(Duration::from_secs(5), pool.close()).await.is_err() {
        eprintln!("xtask: the bench's database connections did not close within 5 s");
    }
    if let Err(e) = forget_queues(&services.redis, &setup.queue_prefix).await {
        eprintln!("xtask: removing the bench's Redis keys: {e:#}");
    }
    println!("logs: {}", logs.display());
    let report = outcome?;

    let header = header(services, &database, options).await;
    let text = format!("{header}\n{}\n{}", report.table(), report.notes());
    println!("\n{text}");
    let results = out.join("results.md");
    std::fs::write(&results, &text).with_context(|| format!("writing {}", results.display()))?;
    println!("written to {}", results.display());
    if !matches!(services.postgres_origin, Origin::Private(_)) {
        println!("the database {DATABASE} is left for a look; the next bench recreates it");
    }
    Ok(())
}

struct Ctx<'a> {
    binaries: &'a Binaries,
    setup: &'a Setup,
    logs: &'a Path,
    out: &'a Path,
    pool: &'a PgPool,
    database: &'a Url,
    options: Options,
}

#[derive(Default)]
struct Fleet {
    api: Vec<Proc>,
    workers: Vec<Proc>,
    /// The /metrics URL of each worker, in the order of `workers`.
    metrics: Vec<String>,
}

impl Fleet {
    /// An error naming every process that has exited, with its log.
    fn check(&mut self) -> Result<()> {
        let mut report = procs::report_exited(&mut self.api);
        report.push_str(&procs::report_exited(&mut self.workers));
        if !report.is_empty() {
            bail!("a process of the bench stopped early:{report}");
        }
        Ok(())
    }
}

/// Everything measured, for the table.
struct Report {
    phases: Vec<Phase>,
    totals: Totals,
    pgbench: Pgbench,
    /// The same script on one client: the statements' cost without conflicts.
    pgbench_single: Pgbench,
    pgbench_check: PgbenchCheck,
    /// Enqueue latency while both workers run the jobs (same two cores).
    enqueue_busy: LoadReport,
    /// Enqueue latency of the api alone.
    enqueue: LoadReport,
    enqueue_reference: LoadReport,
    webhook: LoadReport,
    webhook_reference: LoadReport,
    webhook_closed: LoadReport,
    webhook_closed_reference: LoadReport,
    /// Serialization retries the api counted during these tests.
    api_retries: [(&'static str, Option<u64>); 3],
}

async fn measure(fleet: &mut Fleet, ctx: &Ctx<'_>) -> Result<Report> {
    let setup = ctx.setup;
    let api = procs::spawn("bench-api", &ctx.binaries.api, &["serve"], &setup.api_env(), ctx.logs)?;
    fleet.api.push(api);
    let api = fleet.api.first_mut().context("the api process is gone")?;
    println!("started api, waiting for /ready");
    api.wait_http_ok(&format!("{}/health", setup.api_base)).await?;
    api.wait_http_ok(&format!("{}/ready", setup.api_base)).await?;

    let http = http_client(IN_FLIGHT * 2)?;
    println!("seeding through the HTTP API: 1 sender, {BENEFICIARIES} beneficiaries and mandates");
    let seed = Arc::new(seed(&http, setup).await?);
    reference_tables(ctx.pool, &seed).await?;
    let watch = Watch::start(ctx.pool).await?;

    let mut phases = Vec::new();
    for n in 1..=2 {
        start_worker(fleet, ctx, n).await?;
        let phase = purchase_phase(fleet, ctx, &http, &seed, &watch, n).await?;
        println!("  {}", phase.summary());
        phases.push(phase);
    }
    watch.stop();

    let purchase_target = |label: &str| Target::Purchase {
        keys: seed.bens.iter().map(|b| b.key.clone()).collect(),
        bodies: seed.bens.iter().map(|b| b.body.clone()).collect(),
        idempotency_prefix: format!("{}-{label}-", setup.queue_prefix),
    };
    let enqueue_mode = Mode::Open { rate: ENQUEUE_RATE, secs: ctx.options.open_secs() };
    println!(
        "enqueue latency with both workers running: POST /spend/purchases at {ENQUEUE_RATE}/s for {} s \
         from a separate process",
        ctx.options.open_secs()
    );
    let enqueue_busy = load(ctx, "enqueue-busy", purchase_target("busy"), enqueue_mode).await?;
    println!("  {}", enqueue_busy.summary());
    fleet.check()?;

    // Jobs the workers have in hand end; the rest of the backlog stays queued.
    println!("stopping the workers: from here on the api's own path is measured");
    procs::stop_all(std::mem::take(&mut fleet.workers)).await;
    fleet.metrics.clear();
    let totals = totals(ctx.pool).await?;
    println!("  {}", totals.summary());

    println!(
        "enqueue latency, api alone: POST /spend/purchases at {ENQUEUE_RATE}/s for {} s from a separate process",
        ctx.options.open_secs()
    );
    let before = api_retries(&http, &setup.api_base).await;
    let enqueue = load(ctx, "enqueue", purchase_target("enqueue"), enqueue_mode).await?;
    let enqueue_retries = delta(before, api_retries(&http, &setup.api_base).await);
    println!("  {}", enqueue.summary());
    let enqueue_reference = load(
        ctx,
        "enqueue-reference",
        Target::Health,
        Mode::Open { rate: ENQUEUE_RATE, secs: ctx.options.reference_secs() },
    )
    .await?;
    println!("  GET /health: {}", enqueue_reference.summary());

    let webhook_target =
        Target::Webhook { secret: setup.webhook_secret.clone(), event_prefix: format!("{}-", setup.queue_prefix) };
    println!(
        "webhook acknowledgement: POST /psp/webhook at {WEBHOOK_RATE}/s for {} s from a separate process",
        ctx.options.open_secs()
    );
    let before = api_retries(&http, &setup.api_base).await;
    let webhook =
        load(ctx, "webhook", webhook_target.clone(), Mode::Open { rate: WEBHOOK_RATE, secs: ctx.options.open_secs() })
            .await?;
    let webhook_retries = delta(before, api_retries(&http, &setup.api_base).await);
    println!("  {}", webhook.summary());
    let webhook_reference = load(
        ctx,
        "webhook-reference",
        Target::Health,
        Mode::Open { rate: WEBHOOK_RATE, secs: ctx.options.reference_secs() },
    )
    .await?;
    println!("  GET /health: {}", webhook_reference.summary());
    println!("webhook closed loop: {WEBHOOK_CONNECTIONS} connections for {} s", ctx.options.closed_secs());
    let before = api_retries(&http, &setup.api_base).await;
    let webhook_closed = load(
        ctx,
        "webhook-closed",
        webhook_target,
        Mode::Closed { connections: WEBHOOK_CONNECTIONS, secs: ctx.options.closed_secs() },
    )
    .await?;
    let webhook_closed_retries = delta(before, api_retries(&http, &setup.api_base).await);
    println!("  {}", webhook_closed.summary());
    let webhook_closed_reference = load(
        ctx,
        "webhook-closed-reference",
        Target::Health,
        Mode::Closed { connections: WEBHOOK_CONNECTIONS, secs: ctx.options.closed_secs() },
    )
    .await?;
    println!("  GET /health: {}", webhook_closed_reference.summary());
    fleet.check()?;

    println!("stopping the api: pgbench gets the machine to itself");
    procs::stop_all(std::mem::take(&mut fleet.api)).await;
    let before = pgbench_counts(ctx.pool).await?;
    let pgbench = run_pgbench(ctx, PGBENCH_CLIENTS, ctx.options.purchase_secs(), "pgbench", false).await?;
    println!("  {}", pgbench.summary());
    let pgbench_single = run_pgbench(ctx, 1, ctx.options.reference_secs(), "pgbench-1-client", true).await?;
    println!("  {}", pgbench_single.summary());
    let after = pgbench_counts(ctx.pool).await?;
    let pgbench_check = PgbenchCheck { before, after };

    Ok(Report {
        phases,
        totals,
        pgbench,
        pgbench_single,
        pgbench_check,
        enqueue_busy,
        enqueue,
        enqueue_reference,
        webhook,
        webhook_reference,
        webhook_closed,
        webhook_closed_reference,
        api_retries: [
            ("enqueue, api alone", enqueue_retries),
            ("webhook open loop", webhook_retries),
            ("webhook closed loop", webhook_closed_retries),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hex_hmac_of_timestamp_dot_body() -> Result<()> {
        let body = br#"{"id":"e1","type":"bench.ping","data":{}}"#;
        assert_eq!(
            sign("bench-secret-0123456789", "1700000000", body)?,
            "e023bf0c19012a0e8a9f7ce0cf2ba60defcaa00d3598aea53c9db484a39c6e89"
        );
        Ok(())
    }

    #[test]
    fn pgbench_summary_is_read() -> Result<()> {
        let out = "transaction type: purchase.sql
scaling factor: 1
query mode: prepared
number of clients: 16
number of threads: 2
maximum number of tries: 10
duration: 20 s
number of transactions actually processed: 12345
number of failed transactions: 2 (0.016%)
number of transactions retried: 120 (0.972%)
total number of retries: 130
latency average = 25.894 ms
initial connection time = 12.345 ms
tps = 617.123456 (without initial connection time)
statement latencies in milliseconds, failures and retries:
         0.003           0           0  \\set n random(1, 50)
         1.196           0           0  INSERT INTO jobs (id, kind, payload, actor_user_id)
         1.017           0           0  UPDATE jobs SET status = 'running', attempts = attempts + 1,
";
        let result = parse_pgbench(out)?;
        assert!((result.tps - 617.123456).abs() < 1e-9);
        assert!((result.latency_avg_ms - 25.894).abs() < 1e-9);
        assert_eq!(result.processed, 12345);
        assert_eq!(result.failed, 2);
        assert_eq!(result.retried, 120);
        assert_eq!(result.retries, 130);
        assert_eq!(result.job_insert_ms, Some(1.196));
        assert_eq!(pgbench_major("pgbench (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)"), Some(15));
        Ok(())
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&values, 0.50), Duration::from_millis(50));
        assert_eq!(percentile(&values, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&[], 0.99), Duration::ZERO);
    }

    #[test]
    fn worker_metrics_are_summed() {
        let metrics = "# TYPE kobatela_jobs_total counter
kobatela_jobs_total{kind=\"purchase\",outcome=\"succeeded\"} 120
kobatela_jobs_total{kind=\"purchase\",outcome=\"failed\"} 3
kobatela_jobs_total{outcome=\"succeeded\",kind=\"purchase\"} 5
kobatela_jobs_total{kind=\"transfer\",outcome=\"succeeded\"} 7
";
        let purchases = ["kind=\"purchase\"", "outcome=\"succeeded\""];
        assert_eq!(metric_sum(metrics, "kobatela_jobs_total", &purchases), 125);
        assert_eq!(metric_sum(metrics, "kobatela_jobs_total", &[]), 135);
        let retries = "kobatela_serialization_retries_total{kind=\"tx\"} 42\n";
        assert_eq!(metric_sum(retries, "kobatela_serialization_retries_total", &[]), 42);
        assert_eq!(metric_sum(retries, "kobatela_serialization", &[]), 0);
    }

    #[test]
    fn options_parse() -> Result<()> {
        assert!(Options::parse(&["--quick".into()])?.quick);
        assert!(!Options::parse(&["--release".into()])?.quick);
        assert!(Options::parse(&["--fast".into()]).is_err());
        Ok(())
    }
}
