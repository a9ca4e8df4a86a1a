//! `cargo xtask bench [--quick]`: how fast the job pipeline is on this
//! machine, each number beside a reference measured in the same run (the
//! machine is small, shared and noisy; absolute numbers travel badly).
//!
//! One run, in this order, against a fresh `kobatela_bench` database:
//!
//! 1. `cargo build --release --bins`, `api migrate`, `api serve`; the seed
//!    goes through the HTTP API: a sender, [`BENEFICIARIES`] beneficiaries
//!    each with a key and a 1,000,000.00 USD mandate, one more beneficiary
//!    whose mandate is the hot one, a category and a certified merchant.
//! 2. **Purchases end to end**, with 1 worker then 2 (each
//!    `WORKER_CONCURRENCY=16`), spread over every mandate and then all on
//!    the hot one: [`IN_FLIGHT`] tasks of this process each post a purchase
//!    of 1.00, wait for the job's end (announced on Redis like the api's
//!    receipt waiters hear it) and post the next, for a fixed time. So
//!    [`IN_FLIGHT`] jobs are always between receipt and commit. Throughput
//!    and latency are read back from the `jobs` rows: succeeded jobs per
//!    second of `finished_at` in the steady window (first and last second
//!    left out); receipt to committed is `finished_at - created_at`, push to
//!    start `started_at - created_at`. Then one purchase at a time: the
//!    pipeline's own latency, with nothing queued.
//! 3. **Enqueue latency** with both workers running: a separate process
//!    (`xtask bench-load`) posts purchases open-loop at each of
//!    [`ENQUEUE_RATES`]; the time until the 202.
//! 4. **Webhook acknowledgement** with both workers consuming: signed
//!    `POST /psp/webhook` closed-loop on [`WEBHOOK_CONNECTIONS`] connections.
//!    Then the peak memory (`VmHWM`) of the api and the workers; the money is
//!    checked: no job failed or died, `sum(purchases.amount)` = succeeded
//!    jobs × 1.00 = `sum(mandates.spent_amount)`.
//! 5. **The reference** (api and workers stopped): pgbench runs the purchase
//!    rule's own SERIALIZABLE transaction written by hand (select the
//!    mandate, guarded update, insert the purchase, insert one audit row) on
//!    [`PGBENCH_CLIENTS`] clients, spread and hot, as long as one phase.
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
use sqlx::postgres::PgPoolOptions;
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
const BENEFICIARIES: usize = 200;
/// Purchases between receipt and commit at any time in the throughput phases.
const IN_FLIGHT: usize = 64;
const WORKER_CONCURRENCY: usize = 16;
const DB_POOL_SIZE: u32 = 32;
/// End to end ≥ this × the reference, spread and hot.
const THROUGHPUT_TARGET: f64 = 0.50;
/// Open-loop enqueue rates and their p99 targets (ms).
const ENQUEUE_RATES: [(u32, f64); 2] = [(200, 5.0), (1000, 20.0)];
const WEBHOOK_CONNECTIONS: usize = 8;
const WEBHOOK_RATE_TARGET: f64 = 1000.0;
const WEBHOOK_P99_TARGET_MS: f64 = 10.0;
const RSS_TARGET_MB: f64 = 150.0;
const PGBENCH_CLIENTS: u32 = 16;
const PGBENCH_THREADS: u32 = 2;
const PGBENCH_MAX_TRIES: u32 = 10;
/// The open-loop generator's connections at most; a request waits for one.
const OPEN_LOOP_CONNECTIONS: usize = 256;
/// A request without an answer this long after it was due is an error.
const REQUEST_LIMIT: Duration = Duration::from_secs(10);
/// How long the jobs of a phase may take to end once posting stops.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

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
    let ctx = Ctx {
        binaries: &binaries,
        setup: &setup,
        logs: &logs,
        out: &out,
        pool: &pool,
        database: &database,
        redis: &services.redis,
        options,
    };
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
    redis: &'a Url,
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
    /// Spread and hot, with 1 and 2 workers, then one at a time.
    phases: Vec<Phase>,
    totals: Totals,
    /// The reference, spread and hot.
    pgbench: Pgbench,
    pgbench_hot: Pgbench,
    pgbench_check: PgbenchCheck,
    /// Open-loop enqueue at each of [`ENQUEUE_RATES`], workers running.
    enqueue: Vec<(f64, LoadReport)>,
    enqueue_reference: LoadReport,
    webhook: LoadReport,
    /// Peak resident memory (MB): the api, each worker.
    rss: Vec<(String, Option<f64>)>,
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
    println!("seeding through the HTTP API: 1 sender, {} beneficiaries and mandates", BENEFICIARIES + 1);
    let seed = Arc::new(seed(&http, setup).await?);
    reference_tables(ctx.pool, &seed).await?;
    let watch = Watch::start(ctx.redis, &setup.queue_prefix).await?;

    let secs = ctx.options.purchase_secs();
    let mut phases = Vec::new();
    for workers in 1..=2 {
        start_worker(fleet, ctx, workers).await?;
        for hot in [false, true] {
            let spec = PhaseSpec { workers, hot, in_flight: IN_FLIGHT, secs };
            let phase = purchase_phase(fleet, ctx, &http, &seed, &watch, spec).await?;
            println!("  {}", phase.summary());
            phases.push(phase);
        }
    }
    let alone = PhaseSpec { workers: 2, hot: false, in_flight: 1, secs: ctx.options.reference_secs() };
    let phase = purchase_phase(fleet, ctx, &http, &seed, &watch, alone).await?;
    println!("  {}", phase.summary());
    phases.push(phase);
    watch.stop();

    let purchase_target = |label: &str| Target::Purchase {
        keys: seed.bens.iter().map(|b| b.key.clone()).collect(),
        bodies: seed.bens.iter().map(|b| b.body.clone()).collect(),
        idempotency_prefix: format!("{}-{label}-", setup.queue_prefix),
    };
    let mut enqueue = Vec::new();
    for (rate, target_ms) in ENQUEUE_RATES {
        println!(
            "enqueue latency, both workers running: POST /spend/purchases at {rate}/s for {} s from a separate process",
            ctx.options.open_secs()
        );
        let mode = Mode::Open { rate, secs: ctx.options.open_secs() };
        let report = load(ctx, &format!("enqueue-{rate}"), purchase_target(&format!("e{rate}")), mode).await?;
        println!("  {}", report.summary());
        enqueue.push((target_ms, report));
        fleet.check()?;
    }
    let enqueue_reference = load(
        ctx,
        "enqueue-reference",
        Target::Health,
        Mode::Open { rate: ENQUEUE_RATES[0].0, secs: ctx.options.reference_secs() },
    )
    .await?;
    println!("  GET /health: {}", enqueue_reference.summary());

    let webhook_target =
        Target::Webhook { secret: setup.webhook_secret.clone(), event_prefix: format!("{}-", setup.queue_prefix) };
    println!(
        "webhook acknowledgement, both workers consuming: closed loop on {WEBHOOK_CONNECTIONS} connections for {} s",
        ctx.options.closed_secs()
    );
    let webhook = load(
        ctx,
        "webhook",
        webhook_target,
        Mode::Closed { connections: WEBHOOK_CONNECTIONS, secs: ctx.options.closed_secs() },
    )
    .await?;
    println!("  {}", webhook.summary());
    fleet.check()?;

    let mut rss = vec![("api".to_string(), peak_rss_mb(fleet.api.first().and_then(Proc::pid)))];
    for (i, worker) in fleet.workers.iter().enumerate() {
        rss.push((format!("worker {}", i + 1), peak_rss_mb(worker.pid())));
    }
    // Jobs the workers have in hand end; the rest of the backlog stays queued.
    println!("stopping the api and the workers: pgbench gets the machine to itself");
    procs::stop_all(std::mem::take(&mut fleet.workers)).await;
    fleet.metrics.clear();
    procs::stop_all(std::mem::take(&mut fleet.api)).await;
    let totals = totals(ctx.pool).await?;
    println!("  {}", totals.summary());

    let before = pgbench_counts(ctx.pool).await?;
    let pgbench = run_pgbench(ctx, PGBENCH_CLIENTS, secs, "pgbench", false).await?;
    println!("  spread: {}", pgbench.summary());
    let pgbench_hot = run_pgbench(ctx, PGBENCH_CLIENTS, secs, "pgbench-hot", true).await?;
    println!("  hot: {}", pgbench_hot.summary());
    let after = pgbench_counts(ctx.pool).await?;
    let pgbench_check = PgbenchCheck { before, after };

    Ok(Report { phases, totals, pgbench, pgbench_hot, pgbench_check, enqueue, enqueue_reference, webhook, rss })
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
