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

// ---------------------------------------------------------------------------
// Build, database, processes
// ---------------------------------------------------------------------------

struct Binaries {
    api: PathBuf,
    worker: PathBuf,
}

async fn build_release(layout: &Layout, signals: &mut Signals) -> Result<Binaries> {
    println!("building the binaries: cargo build --release --bins");
    let status = procs::cargo(layout, ["build", "--release", "--bins"], &[], signals).await?;
    if !status.success() {
        bail!("cargo build --release failed ({status})");
    }
    let dir = layout.target.join("release");
    let binary = |name: &str| -> Result<PathBuf> {
        let path = dir.join(name);
        if !path.is_file() {
            bail!("cargo build did not produce {name} (looked for {})", path.display());
        }
        Ok(path)
    };
    Ok(Binaries { api: binary("api")?, worker: binary("worker")? })
}

/// Ports, secrets and environments of one bench run.
struct Setup {
    api_base: String,
    queue_prefix: String,
    admin_key: String,
    webhook_secret: String,
    common: Vec<(String, String)>,
}

impl Setup {
    fn new(database: &Url, services: &Services) -> Result<Self> {
        let api_port = procs::free_port()?;
        let queue_prefix = format!("bench-{}", crate::services::random_text(8).to_lowercase());
        let admin_key = crate::services::random_text(40);
        let webhook_secret = crate::services::random_text(32);
        let common = [
            ("DATABASE_URL", database.to_string()),
            ("REDIS_URL", services.redis.to_string()),
            ("PORT", api_port.to_string()),
            ("BIND_ADDR", format!("127.0.0.1:{api_port}")),
            ("QUEUE_PREFIX", queue_prefix.clone()),
            ("BOOTSTRAP_ADMIN_KEY", admin_key.clone()),
            ("PSP_WEBHOOK_SECRETS", webhook_secret.clone()),
            ("LOG_FORMAT", "json".to_string()),
            ("RUST_LOG", "warn".to_string()),
            ("RATE_LIMIT_PER_KEY", "100000/s".to_string()),
            ("DB_POOL_SIZE", DB_POOL_SIZE.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Ok(Self { api_base: format!("http://127.0.0.1:{api_port}"), queue_prefix, admin_key, webhook_secret, common })
    }

    fn api_env(&self) -> Vec<(String, String)> {
        self.common.clone()
    }

    fn worker_env(&self, name: &str, metrics_port: u16) -> Vec<(String, String)> {
        let mut env = self.common.clone();
        // Enough for the jobs in flight and the relay; the shared Postgres
        // has room for the api's 32 and two of these.
        env.retain(|(k, _)| k != "DB_POOL_SIZE");
        env.extend(
            [
                ("DB_POOL_SIZE", (WORKER_CONCURRENCY + 4).to_string()),
                ("WORKER_NAME", name.to_string()),
                ("WORKER_CONCURRENCY", WORKER_CONCURRENCY.to_string()),
                ("WORKER_METRICS_ADDR", format!("127.0.0.1:{metrics_port}")),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        env
    }
}

/// Starts worker `n` with its metrics endpoint and waits until it answers
/// (the worker has its Postgres pool and Redis connection by then).
async fn start_worker(fleet: &mut Fleet, ctx: &Ctx<'_>, n: usize) -> Result<()> {
    let name = format!("{}-worker-{n}", ctx.setup.queue_prefix);
    let port = procs::free_port()?;
    let proc = procs::spawn(
        &format!("bench-worker-{n}"),
        &ctx.binaries.worker,
        &[],
        &ctx.setup.worker_env(&name, port),
        ctx.logs,
    )?;
    fleet.workers.push(proc);
    fleet.metrics.push(format!("http://127.0.0.1:{port}/metrics"));
    let last = fleet.workers.len() - 1;
    let url = format!("http://127.0.0.1:{port}/health");
    fleet.workers[last].wait_http_ok(&url).await?;
    println!("started worker {n} ({name}, concurrency {WORKER_CONCURRENCY})");
    Ok(())
}

fn http_client(connections: usize) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(connections)
        .timeout(Duration::from_secs(30))
        .build()
        .context("building an HTTP client")
}

/// Removes the Redis keys of this run's queues (webhook jobs are left
/// queued there when the workers stop first).
async fn forget_queues(redis: &Url, prefix: &str) -> Result<()> {
    let client = redis::Client::open(redis.as_str()).context("the Redis URL")?;
    let mut conn = tokio::time::timeout(Duration::from_secs(5), client.get_multiplexed_async_connection())
        .await
        .map_err(|_| anyhow!("no Redis connection within 5 s"))?
        .context("connecting to Redis")?;
    let pattern = format!("*{prefix}*");
    let mut cursor: u64 = 0;
    let mut removed = 0usize;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .context("SCAN")?;
        if !keys.is_empty() {
            removed += keys.len();
            redis::cmd("UNLINK").arg(&keys).query_async::<i64>(&mut conn).await.context("UNLINK")?;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    println!("removed {removed} Redis keys of the queue prefix {prefix}");
    Ok(())
}

// ---------------------------------------------------------------------------
// Seed
// ---------------------------------------------------------------------------

struct Seed {
    sender_id: String,
    merchant_id: String,
    bens: Vec<Beneficiary>,
}

struct Beneficiary {
    user_id: String,
    key: String,
    key_id: String,
    mandate_id: String,
    /// The purchase of 1.00 this beneficiary makes.
    body: Value,
}

async fn seed(http: &reqwest::Client, setup: &Setup) -> Result<Seed> {
    let api = Api { http, base: &setup.api_base };
    let admin = setup.admin_key.as_str();
    let run = &setup.queue_prefix;
    let sender = api
        .post(
            admin,
            "/users",
            json!({"username": format!("{run}-sender"), "email": format!("{run}-sender@example.com")}),
        )
        .await?;
    let sender_id = text(&sender, "id")?;
    let sender_key =
        api.post(admin, "/api-keys", json!({"user_id": sender_id, "role": "sender", "name": "bench sender"})).await?;
    let sender_key = text(&sender_key, "key")?;
    let category = api.post(admin, "/spend/categories", json!({"code": "BENCH", "label": "Bench"})).await?;
    let category_id = text(&category, "id")?;
    let merchant = api
        .post(
            admin,
            "/spend/merchants",
            json!({"name": format!("{run} merchant"), "category_id": category_id, "is_certified": true}),
        )
        .await?;
    let merchant_id = text(&merchant, "id")?;
    if merchant.get("is_certified") != Some(&Value::Bool(true)) {
        bail!("the merchant was not created certified: {merchant}");
    }
    let expires_at =
        (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut bens = Vec::with_capacity(BENEFICIARIES);
    for n in 1..=BENEFICIARIES {
        let user = api
            .post(
                admin,
                "/users",
                json!({"username": format!("{run}-ben-{n}"), "email": format!("{run}-ben-{n}@example.com")}),
            )
            .await?;
        let user_id = text(&user, "id")?;
        let key = api
            .post(
                admin,
                "/api-keys",
                json!({"user_id": user_id, "role": "beneficiary", "name": format!("bench beneficiary {n}")}),
            )
            .await?;
        let mandate = api
            .post(
                &sender_key,
                "/mandates",
                json!({
                    "sender_id": sender_id, "beneficiary_id": user_id, "total_amount": "1000000.00",
                    "currency": "USD", "expires_at": expires_at,
                }),
            )
            .await?;
        let body = json!({
            "sender_id": sender_id, "beneficiary_id": user_id, "merchant_id": merchant_id,
            "amount": "1.00", "currency": "USD",
        });
        bens.push(Beneficiary {
            key: text(&key, "key")?,
            key_id: text(&key, "id")?,
            mandate_id: text(&mandate, "id")?,
            user_id,
            body,
        });
    }
    Ok(Seed { sender_id, merchant_id, bens })
}

struct Api<'a> {
    http: &'a reqwest::Client,
    base: &'a str,
}

impl Api<'_> {
    /// POST expecting 201 with a JSON body.
    async fn post(&self, key: &str, path: &str, body: Value) -> Result<Value> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .map_err(|e| anyhow!("POST {path}: {}", e.without_url()))?;
        let status = response.status();
        let text = response.text().await.with_context(|| format!("POST {path}: reading the answer"))?;
        if status != reqwest::StatusCode::CREATED {
            bail!("POST {path}: expected 201, got {status}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("POST {path}: the answer is not JSON"))
    }
}

fn text(value: &Value, field: &str) -> Result<String> {
    value.get(field).and_then(Value::as_str).map(str::to_string).with_context(|| format!("no `{field}` in {value}"))
}

/// The seeded rows pgbench picks from, and a time-ordered id like the
/// UUIDv7 our code makes (Postgres 15 has no `uuidv7()`): the ids land in
/// the indexes the same way.
async fn reference_tables(pool: &PgPool, seed: &Seed) -> Result<()> {
    sqlx::query(
        "CREATE TABLE bench_mandates (
            n int PRIMARY KEY, mandate_id uuid NOT NULL, sender_id uuid NOT NULL,
            beneficiary_id uuid NOT NULL, merchant_id uuid NOT NULL, key_id uuid NOT NULL)",
    )
    .execute(pool)
    .await
    .context("creating bench_mandates")?;
    sqlx::query(
        "CREATE FUNCTION bench_uuid7() RETURNS uuid LANGUAGE sql VOLATILE AS $$
           SELECT (lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')
                   || substr(md5(random()::text), 1, 20))::uuid
         $$",
    )
    .execute(pool)
    .await
    .context("creating bench_uuid7()")?;
    for (i, ben) in seed.bens.iter().enumerate() {
        sqlx::query("INSERT INTO bench_mandates VALUES ($1, $2::uuid, $3::uuid, $4::uuid, $5::uuid, $6::uuid)")
            .bind(i32::try_from(i + 1).context("beneficiary number")?)
            .bind(&ben.mandate_id)
            .bind(&seed.sender_id)
            .bind(&ben.user_id)
            .bind(&seed.merchant_id)
            .bind(&ben.key_id)
            .execute(pool)
            .await
            .context("filling bench_mandates")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Purchases end to end
// ---------------------------------------------------------------------------

/// Job-finished notifications (`LISTEN kobatela_jobs`), handed to the task
/// waiting for that job. A notification that comes before its waiter is
/// kept; a waiter that hears nothing for a while reads the row itself.
struct Watch {
    state: Arc<Mutex<WatchState>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct WatchState {
    waiting: HashMap<String, oneshot::Sender<()>>,
    early: HashSet<String>,
}

fn lock(state: &Mutex<WatchState>) -> MutexGuard<'_, WatchState> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Watch {
    async fn start(pool: &PgPool) -> Result<Arc<Self>> {
        let mut listener = PgListener::connect_with(pool).await.context("connecting the job listener")?;
        listener.listen(JOBS_CHANNEL).await.context("LISTEN kobatela_jobs")?;
        let state = Arc::new(Mutex::new(WatchState::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(note) => {
                        let id = note.payload().to_string();
                        let mut state = lock(&shared);
                        match state.waiting.remove(&id) {
                            Some(waiter) => {
                                waiter.send(()).ok();
                            }
                            None => {
                                state.early.insert(id);
                            }
                        }
                    }
                    // sqlx reconnects on the next call; waiters re-read rows meanwhile.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Ok(Arc::new(Self { state, task }))
    }

    fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Watch {
    /// The listener holds a pool connection: it must go for the pool to close.
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watch {
    fn forget_early(&self) {
        lock(&self.state).early.clear();
    }

    /// Until the job is `succeeded`, `failed` or `dead`.
    async fn wait(&self, id: &str, pool: &PgPool) -> Result<()> {
        let deadline = Instant::now() + DRAIN_LIMIT;
        loop {
            let notified = {
                let mut state = lock(&self.state);
                if state.early.remove(id) {
                    return Ok(());
                }
                let (tx, rx) = oneshot::channel();
                state.waiting.insert(id.to_string(), tx);
                rx
            };
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(2), notified).await {
                return Ok(());
            }
            lock(&self.state).waiting.remove(id);
            let status: Option<String> = sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1::uuid")
                .bind(id)
                .fetch_optional(pool)
                .await
                .context("reading a job's status")?;
            if matches!(status.as_deref(), Some("succeeded" | "failed" | "dead")) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "job {id} is still {} after {} s",
                    status.unwrap_or_else(|| "missing".into()),
                    DRAIN_LIMIT.as_secs()
                );
            }
        }
    }
}

/// What one purchase phase measured.
struct Phase {
    workers: usize,
    secs: u64,
    posted: u64,
    post_errors: u64,
    first_error: Option<String>,
    stats: JobStats,
    /// Per worker, what it ran in this phase (from its /metrics).
    per_worker: Vec<WorkerCount>,
}

impl Phase {
    fn summary(&self) -> String {
        let s = &self.stats;
        format!(
            "{} worker(s): {:.1} purchases/s ({} in a {:.1} s window), latency p50 {:.1} ms p99 {:.1} ms max {:.1} ms; \
             posted {}, succeeded {}, failed {}, dead {}, more than one attempt {}, POST errors {}; {}",
            self.workers,
            s.rate(),
            s.in_window,
            s.window_secs,
            s.p50_ms,
            s.p99_ms,
            s.max_ms,
            self.posted,
            s.succeeded,
            s.failed,
            s.dead,
            s.retried_jobs,
            self.post_errors,
            self.per_worker_text()
        )
    }

    fn per_worker_text(&self) -> String {
        self.per_worker
            .iter()
            .enumerate()
            .map(|(i, w)| format!("worker {}: {} purchases, {} serialization retries", i + 1, w.purchases, w.retries))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

struct DriveCtx {
    http: reqwest::Client,
    url: String,
    seed: Arc<Seed>,
    watch: Arc<Watch>,
    pool: PgPool,
    prefix: String,
    counter: AtomicU64,
}

#[derive(Default)]
struct TaskStats {
    posted: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Posts a purchase; the job id of its 202 receipt.
async fn post_purchase(drive: &DriveCtx, n: u64) -> Result<String> {
    let ben = &drive.seed.bens[(n % drive.seed.bens.len() as u64) as usize];
    let response = drive
        .http
        .post(&drive.url)
        .bearer_auth(&ben.key)
        .header("Idempotency-Key", format!("{}{n}", drive.prefix))
        .json(&ben.body)
        .send()
        .await
        .map_err(|e| anyhow!("POST /spend/purchases: {}", e.without_url()))?;
    let status = response.status();
    let body = response.text().await.context("reading the receipt")?;
    if status != reqwest::StatusCode::ACCEPTED {
        bail!("POST /spend/purchases: expected 202, got {status}: {body}");
    }
    let receipt: Value = serde_json::from_str(&body).context("the receipt is not JSON")?;
    text(&receipt, "job_id")
}

async fn purchase_task(drive: Arc<DriveCtx>, end: Instant) -> TaskStats {
    let mut stats = TaskStats::default();
    while Instant::now() < end {
        let n = drive.counter.fetch_add(1, Ordering::Relaxed);
        stats.posted += 1;
        let outcome = match post_purchase(&drive, n).await {
            Ok(job_id) => drive.watch.wait(&job_id, &drive.pool).await,
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            stats.errors += 1;
            stats.first_error.get_or_insert_with(|| format!("{e:#}"));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    stats
}

async fn purchase_phase(
    fleet: &mut Fleet,
    ctx: &Ctx<'_>,
    http: &reqwest::Client,
    seed: &Arc<Seed>,
    watch: &Arc<Watch>,
    workers: usize,
) -> Result<Phase> {
    let secs = ctx.options.purchase_secs();
    // Every worker warmed up (connections, statement caches) before the clock runs.
    let warm = Arc::new(DriveCtx {
        http: http.clone(),
        url: format!("{}/spend/purchases", ctx.setup.api_base),
        seed: seed.clone(),
        watch: watch.clone(),
        pool: ctx.pool.clone(),
        prefix: format!("{}-warm{workers}-", ctx.setup.queue_prefix),
        counter: AtomicU64::new(0),
    });
    let warm_end = Instant::now() + Duration::from_secs(1);
    // A JoinSet aborts its tasks when dropped: an interrupted run leaves none behind.
    let mut warmers = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        warmers.spawn(purchase_task(warm.clone(), warm_end));
    }
    while let Some(stats) = warmers.join_next().await {
        let stats = stats.context("a warm-up task panicked")?;
        if let Some(e) = stats.first_error {
            bail!("warm-up purchase failed: {e}");
        }
    }
    let before = worker_counts(http, fleet).await;
    watch.forget_early();

    println!("purchases end to end, {workers} worker(s): {IN_FLIGHT} in flight for {secs} s");
    let prefix = format!("{}-w{workers}-", ctx.setup.queue_prefix);
    let drive = Arc::new(DriveCtx {
        http: http.clone(),
        url: format!("{}/spend/purchases", ctx.setup.api_base),
        seed: seed.clone(),
        watch: watch.clone(),
        pool: ctx.pool.clone(),
        prefix: prefix.clone(),
        counter: AtomicU64::new(0),
    });
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        tasks.spawn(purchase_task(drive.clone(), end));
    }
    let mut posted = 0;
    let mut post_errors = 0;
    let mut first_error = None;
    while let Some(stats) = tasks.join_next().await {
        let stats = stats.context("a purchase task panicked")?;
        posted += stats.posted;
        post_errors += stats.errors;
        if first_error.is_none() {
            first_error = stats.first_error;
        }
    }
    fleet.check()?;
    let after = worker_counts(http, fleet).await;
    let per_worker = after
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let was = before.get(i).copied().unwrap_or_default();
            WorkerCount {
                purchases: n.purchases.saturating_sub(was.purchases),
                retries: n.retries.saturating_sub(was.retries),
            }
        })
        .collect();
    let stats = job_stats(ctx.pool, &prefix).await?;
    Ok(Phase { workers, secs, posted, post_errors, first_error, stats, per_worker })
}

/// What one worker reported on its /metrics.
#[derive(Debug, Clone, Copy, Default)]
struct WorkerCount {
    /// `kobatela_jobs_total{kind="purchase",outcome="succeeded"}`.
    purchases: u64,
    /// `kobatela_serialization_retries_total`, every kind.
    retries: u64,
}

/// The counters of each running worker (zeros when unreadable).
async fn worker_counts(http: &reqwest::Client, fleet: &Fleet) -> Vec<WorkerCount> {
    let mut counts = Vec::new();
    for url in &fleet.metrics {
        counts.push(worker_count(http, url).await.unwrap_or_default());
    }
    counts
}

async fn worker_count(http: &reqwest::Client, url: &str) -> Result<WorkerCount> {
    let body = http.get(url).send().await?.text().await?;
    Ok(WorkerCount {
        purchases: metric_sum(&body, "kobatela_jobs_total", &["kind=\"purchase\"", "outcome=\"succeeded\""]),
        retries: metric_sum(&body, "kobatela_serialization_retries_total", &[]),
    })
}

/// The api's `kobatela_serialization_retries_total`, all kinds.
async fn api_retries(http: &reqwest::Client, base: &str) -> Option<u64> {
    let body = http.get(format!("{base}/metrics")).send().await.ok()?.text().await.ok()?;
    Some(metric_sum(&body, "kobatela_serialization_retries_total", &[]))
}

fn delta(before: Option<u64>, after: Option<u64>) -> Option<u64> {
    Some(after?.saturating_sub(before?))
}

/// The sum of a Prometheus counter over the series carrying every label given.
fn metric_sum(metrics: &str, name: &str, labels: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next())
        .filter_map(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as u64)
        .sum()
}

/// Throughput and latency of one phase's jobs, from their rows.
#[derive(Debug, Default, Clone)]
struct JobStats {
    total: i64,
    succeeded: i64,
    failed: i64,
    dead: i64,
    pending: i64,
    in_window: i64,
    window_secs: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Jobs that took more than one attempt: a transaction that kept
    /// failing serialization until its retries ran out counts an attempt,
    /// and the next one waits for the back-off and the relay.
    retried_jobs: i64,
    first_problem: Option<String>,
}

impl JobStats {
    fn rate(&self) -> f64 {
        if self.window_secs > 0.0 { self.in_window as f64 / self.window_secs } else { 0.0 }
    }
}

type StatsRow = (i64, i64, i64, i64, i64, i64, i64, Option<f64>, Option<f64>, Option<f64>, Option<f64>);

async fn job_stats(pool: &PgPool, prefix: &str) -> Result<JobStats> {
    let row: StatsRow = sqlx::query_as(
        "WITH j AS (
             SELECT status, attempts, created_at, finished_at FROM jobs
              WHERE kind = 'purchase' AND starts_with(idempotency_key, $1)
         ), bounds AS (
             SELECT min(finished_at) + interval '1 second' AS lo,
                    max(finished_at) - interval '1 second' AS hi
               FROM j WHERE status = 'succeeded'
         ), w AS (
             SELECT extract(epoch FROM j.finished_at - j.created_at)::float8 * 1000 AS ms
               FROM j, bounds
              WHERE j.status = 'succeeded' AND j.finished_at >= bounds.lo AND j.finished_at < bounds.hi
         )
         SELECT (SELECT count(*) FROM j),
                (SELECT count(*) FROM j WHERE status = 'succeeded'),
                (SELECT count(*) FROM j WHERE status = 'failed'),
                (SELECT count(*) FROM j WHERE status = 'dead'),
                (SELECT count(*) FROM j WHERE status IN ('queued', 'running')),
                (SELECT count(*) FROM j WHERE attempts > 1),
                (SELECT count(*) FROM w),
                (SELECT extract(epoch FROM hi - lo)::float8 FROM bounds),
                (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) FROM w),
                (SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) FROM w),
                (SELECT max(ms) FROM w)",
    )
    .bind(prefix)
    .fetch_one(pool)
    .await
    .context("reading the phase's jobs")?;
    let first_problem: Option<String> = sqlx::query_scalar(
        "SELECT coalesce(error::text, last_error, status) FROM jobs
          WHERE kind = 'purchase' AND starts_with(idempotency_key, $1) AND status IN ('failed', 'dead')
          LIMIT 1",
    )
    .bind(prefix)
    .fetch_optional(pool)
    .await
    .context("reading a failed job")?;
    Ok(JobStats {
        total: row.0,
        succeeded: row.1,
        failed: row.2,
        dead: row.3,
        pending: row.4,
        retried_jobs: row.5,
        in_window: row.6,
        window_secs: row.7.unwrap_or(0.0).max(0.0),
        p50_ms: row.8.unwrap_or(0.0),
        p99_ms: row.9.unwrap_or(0.0),
        max_ms: row.10.unwrap_or(0.0),
        first_problem,
    })
}

/// Every purchase job of the HTTP runs, checked against the money.
struct Totals {
    succeeded: i64,
    failed: i64,
    dead: i64,
    /// Left queued when the workers stopped (the enqueue test's backlog).
    pending: i64,
    purchases: i64,
    amount: String,
    spent: String,
    amount_matches: bool,
}

impl Totals {
    fn ok(&self) -> bool {
        self.failed == 0 && self.dead == 0 && self.amount_matches && self.purchases == self.succeeded
    }

    fn summary(&self) -> String {
        format!(
            "check: {} purchase jobs succeeded, {} failed, {} dead, {} left queued; {} purchases, sum(amount) {} ({}), \
             sum(spent_amount) {}",
            self.succeeded,
            self.failed,
            self.dead,
            self.pending,
            self.purchases,
            self.amount,
            if self.amount_matches { "= succeeded jobs × 1.00" } else { "MISMATCH" },
            self.spent
        )
    }
}

async fn totals(pool: &PgPool) -> Result<Totals> {
    let row: (i64, i64, i64, i64, i64, String, String, bool) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM jobs WHERE kind = 'purchase' AND status = 'succeeded'),
                (SELECT count(*) FROM jobs WHERE kind = 'purchase' AND status = 'failed'),
                (SELECT count(*) FROM jobs WHERE kind = 'purchase' AND status = 'dead'),
                (SELECT count(*) FROM jobs WHERE kind = 'purchase' AND status IN ('queued', 'running')),
                (SELECT count(*) FROM purchases),
                (SELECT coalesce(sum(amount), 0)::text FROM purchases),
                (SELECT coalesce(sum(spent_amount), 0)::text FROM mandates),
                (SELECT coalesce(sum(amount), 0) FROM purchases)
                  = (SELECT count(*) FROM jobs WHERE kind = 'purchase' AND status = 'succeeded')
                AND (SELECT coalesce(sum(amount), 0) FROM purchases)
                  = (SELECT coalesce(sum(spent_amount), 0) FROM mandates)",
    )
    .fetch_one(pool)
    .await
    .context("checking the purchases")?;
    Ok(Totals {
        succeeded: row.0,
        failed: row.1,
        dead: row.2,
        pending: row.3,
        purchases: row.4,
        amount: row.5,
        spent: row.6,
        amount_matches: row.7,
    })
}

// ---------------------------------------------------------------------------
// pgbench
// ---------------------------------------------------------------------------

/// The statements one purchase costs Postgres, as our code sends them:
/// `record::insert` (api, autocommit), `record::claim` (worker, autocommit),
/// then `db::serializable` around exec.rs (`still_owned`, the `rule`
/// savepoint, `purchases::execute`, `record::finish`). With `-M prepared`
/// every statement is parsed once per connection, as sqlx caches them.
///
/// The seeded merchant is certified, so `purchases::execute` never runs the
/// `allowed_usage` EXISTS (`certified || …`), and neither does this script.
/// pgbench retries a serialization failure by re-running the whole script
/// (so a retry also re-inserts and re-claims a job); our worker re-runs the
/// transaction only.
const PURCHASE_SQL: &str = r#"-- One purchase of 1.00, statement for statement as Kobatela runs it.
-- Written by `cargo xtask bench`; bench_mandates and bench_uuid7() are its helpers.
\set n random(1, 50)
-- api: shared::jobs::record::insert (autocommit)
INSERT INTO jobs (id, kind, payload, actor_user_id, actor_key_id, actor_role, idempotency_key, request_hash, pushed_at)
SELECT bench_uuid7(), 'purchase',
       jsonb_build_object('sender_id', b.sender_id, 'beneficiary_id', b.beneficiary_id, 'merchant_id', b.merchant_id,
                          'amount', '1.00', 'currency', 'USD', 'category_id', NULL),
       b.beneficiary_id, b.key_id, 'beneficiary', 'pgbench-' || gen_random_uuid(),
       sha256(convert_to(gen_random_uuid()::text, 'UTF8')), now()
  FROM bench_mandates b WHERE b.n = :n
ON CONFLICT (actor_user_id, idempotency_key) WHERE idempotency_key IS NOT NULL AND parent_job_id IS NULL DO NOTHING
RETURNING id AS job_id, kind, payload, actor_user_id, actor_key_id, actor_role, idempotency_key, request_hash, status,
          attempts, created_at, started_at, finished_at, result, error,
          payload->>'sender_id' AS sender_id, payload->>'beneficiary_id' AS beneficiary_id,
          payload->>'merchant_id' AS merchant_id \gset
-- worker: shared::jobs::record::claim (autocommit)
UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = coalesce(started_at, now()),
       locked_by = 'pgbench', locked_until = now() + make_interval(secs => 300000::float8 / 1000)
 WHERE id = :job_id AND ((status = 'queued' AND next_attempt_at <= now())
                      OR (status = 'running' AND locked_until < now()))
RETURNING id, kind, payload, actor_user_id, actor_key_id, actor_role, idempotency_key, request_hash, status, attempts,
          created_at, started_at, finished_at, result, error, ctid::text AS job_ctid \gset
-- worker: shared::db::serializable
BEGIN ISOLATION LEVEL SERIALIZABLE;
SET LOCAL enable_seqscan = off;
SET LOCAL jit = off;
-- exec.rs: record::still_owned (by the claim's row address), then the rule's savepoint
SELECT status, attempts FROM jobs WHERE ctid = :job_ctid::text::tid AND id = :job_id FOR UPDATE;
SAVEPOINT rule;
-- purchases::execute: 1. the merchant
SELECT category_id AS merchant_category, is_certified FROM merchants WHERE id = :merchant_id \gset
-- 3. the mandate of the (sender, beneficiary, currency) triple
SELECT id, sender_id, beneficiary_id, total_amount, spent_amount, currency, allowed_merchant_id, allowed_category_id,
       expires_at, status, created_at
  FROM mandates
 WHERE sender_id = :sender_id AND beneficiary_id = :beneficiary_id AND currency = 'USD'
 ORDER BY (status = 'ACTIVE') DESC, id DESC LIMIT 1 \gset m_
-- 5. allowed usage: the merchant is certified, so no EXISTS query runs
-- 6. the guarded decrement
UPDATE mandates SET spent_amount = spent_amount + 1.00,
       status = CASE WHEN spent_amount + 1.00 = total_amount THEN 'CONSUMED' ELSE status END,
       updated_at = now()
 WHERE id = :m_id AND (status || '') = 'ACTIVE' AND spent_amount + 1.00 <= total_amount
RETURNING spent_amount, total_amount, status \gset u_
-- 7. the purchase and its two audit rows (shared::domain::audit::write)
INSERT INTO purchases (id, job_id, sender_id, beneficiary_id, merchant_id, category_id, mandate_id, amount, currency, status)
VALUES (bench_uuid7(), :job_id, :sender_id, :beneficiary_id, :merchant_id, :merchant_category, :m_id, 1.00, 'USD', 'COMPLETED')
RETURNING id, sender_id, beneficiary_id, merchant_id, category_id, mandate_id, amount, currency, status, created_at \gset p_
INSERT INTO audit_log (id, actor, action, entity, entity_id, data)
VALUES (bench_uuid7(), 'user:' || :beneficiary_id::text, 'PURCHASE_COMPLETED', 'purchase', :p_id,
        jsonb_build_object('mandate_id', :m_id::text, 'merchant_id', :merchant_id::text, 'amount', '1.00',
                           'currency', 'USD', 'job_id', :job_id::text));
INSERT INTO audit_log (id, actor, action, entity, entity_id, data)
VALUES (bench_uuid7(), 'user:' || :beneficiary_id::text, 'MANDATE_CONSUMED', 'mandate', :m_id,
        jsonb_build_object('purchase_id', :p_id::text, 'amount', '1.00', 'spent_amount', :u_spent_amount::text,
                           'remaining_amount', (:u_total_amount::numeric - :u_spent_amount::numeric)::text,
                           'status', :u_status::text));
-- exec.rs: record::finish
UPDATE jobs SET status = 'succeeded',
       result = jsonb_build_object('id', :p_id::text, 'sender_id', :sender_id::text, 'beneficiary_id', :beneficiary_id::text,
                                   'merchant_id', :merchant_id::text, 'category_id', :merchant_category::text,
                                   'mandate_id', :m_id::text, 'amount', '1.00', 'currency', 'USD',
                                   'status', 'COMPLETED', 'created_at', :p_created_at::text,
                                   'href', '/spend/purchases/' || :p_id::text),
       error = NULL, finished_at = now(), locked_by = NULL, locked_until = NULL
 WHERE ctid = :job_ctid::text::tid AND id = :job_id;
SELECT pg_notify('kobatela_jobs', :job_id::text);
COMMIT;
"#;

#[derive(Debug, Default, Clone)]
struct Pgbench {
    version: String,
    clients: u32,
    secs: u64,
    tps: f64,
    latency_avg_ms: f64,
    processed: u64,
    failed: u64,
    retried: u64,
    retries: u64,
    max_tries: Option<u32>,
    /// With `-r`: the average latency of the api's job INSERT (autocommit).
    job_insert_ms: Option<f64>,
}

impl Pgbench {
    fn summary(&self) -> String {
        format!(
            "pgbench, {} client(s): {:.1} tps ({} scripts in {} s, latency average {:.1} ms, {} retried, {} failed)",
            self.clients, self.tps, self.processed, self.secs, self.latency_avg_ms, self.retried, self.failed
        )
    }
}

/// Purchases made by pgbench scripts, and the money check, before and after.
#[derive(Debug, Clone)]
struct PgbenchCounts {
    pgbench_jobs_succeeded: i64,
    purchases: i64,
    money_matches: bool,
}

struct PgbenchCheck {
    before: PgbenchCounts,
    after: PgbenchCounts,
}

impl PgbenchCheck {
    fn purchases(&self) -> i64 {
        self.after.purchases - self.before.purchases
    }

    fn jobs(&self) -> i64 {
        self.after.pgbench_jobs_succeeded - self.before.pgbench_jobs_succeeded
    }
}

async fn pgbench_counts(pool: &PgPool) -> Result<PgbenchCounts> {
    let row: (i64, i64, bool) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM jobs WHERE status = 'succeeded' AND starts_with(idempotency_key, 'pgbench-')),
                (SELECT count(*) FROM purchases),
                (SELECT coalesce(sum(amount), 0) FROM purchases) = (SELECT coalesce(sum(spent_amount), 0) FROM mandates)",
    )
    .fetch_one(pool)
    .await
    .context("counting pgbench's purchases")?;
    Ok(PgbenchCounts { pgbench_jobs_succeeded: row.0, purchases: row.1, money_matches: row.2 })
}

/// pgbench from PATH or Debian's `/usr/lib/postgresql/<version>/bin`
/// (newest first).
fn find_pgbench() -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    dirs.extend(versions.into_iter().map(|(_, dir)| dir));
    dirs.into_iter()
        .map(|dir| dir.join("pgbench"))
        .find(|path| path.is_file())
        .ok_or_else(|| anyhow!("pgbench not found: install it with: sudo apt-get install -y postgresql-client"))
}

/// `purchase.sql` on `clients` clients for `secs`; the output goes to
/// `target/bench/<name>.log`.
async fn run_pgbench(ctx: &Ctx<'_>, clients: u32, secs: u64, name: &str, per_statement: bool) -> Result<Pgbench> {
    let program = find_pgbench()?;
    let version_out = Command::new(&program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .context("running pgbench --version")?;
    let version = String::from_utf8_lossy(&version_out.stdout).trim().to_string();
    let major = pgbench_major(&version).unwrap_or(0);
    let max_tries = (major >= 15).then_some(PGBENCH_MAX_TRIES);
    let script = ctx.out.join("purchase.sql");
    std::fs::write(&script, PURCHASE_SQL).with_context(|| format!("writing {}", script.display()))?;
    let threads = PGBENCH_THREADS.min(clients);
    println!(
        "pgbench: {} -c {clients} -j {threads} -T {secs}{}",
        script.display(),
        max_tries.map(|n| format!(" --max-tries={n}")).unwrap_or_else(|| " (no --max-tries before pgbench 15)".into())
    );

    let mut target = ctx.database.clone();
    let password = target.password().map(str::to_string);
    target.set_password(None).ok();
    let mut command = Command::new(&program);
    command
        .args(["-n", "-M", "prepared", "-f"])
        .arg(&script)
        .args(["-c", &clients.to_string(), "-j", &threads.to_string(), "-T", &secs.to_string()])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(n) = max_tries {
        command.arg(format!("--max-tries={n}"));
    }
    if per_statement {
        command.arg("-r");
    }
    command.arg(target.as_str());
    if let Some(password) = password {
        command.env("PGPASSWORD", crate::services::percent_decode(&password));
    }
    let output = tokio::time::timeout(Duration::from_secs(secs + 60), command.output())
        .await
        .map_err(|_| anyhow!("pgbench did not finish within {} s", secs + 60))?
        .context("running pgbench")?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let log = ctx.out.join(format!("{name}.log"));
    std::fs::write(&log, format!("{stdout}\n--- stderr ---\n{stderr}")).ok();
    if !output.status.success() {
        bail!(
            "pgbench failed ({}), see {}\n{}",
            output.status,
            log.display(),
            stderr.lines().take(20).collect::<Vec<_>>().join("\n")
        );
    }
    let mut result =
        parse_pgbench(&stdout).with_context(|| format!("reading pgbench's output (in {})", log.display()))?;
    result.version = version;
    result.clients = clients;
    result.secs = secs;
    result.max_tries = max_tries;
    Ok(result)
}

fn pgbench_major(version: &str) -> Option<u32> {
    version.split_whitespace().find_map(|word| word.split('.').next()?.parse().ok())
}

/// The numbers of pgbench's summary.
fn parse_pgbench(out: &str) -> Result<Pgbench> {
    let number_after = |label: &str| -> Option<f64> {
        out.lines().find_map(|line| {
            let rest = line.trim().strip_prefix(label)?;
            let word = rest.trim_start_matches([' ', '=', ':']).split([' ', '/']).next()?;
            word.parse().ok()
        })
    };
    let tps = number_after("tps").context("no `tps =` line")?;
    Ok(Pgbench {
        tps,
        latency_avg_ms: number_after("latency average").unwrap_or(0.0),
        processed: number_after("number of transactions actually processed").unwrap_or(0.0) as u64,
        failed: number_after("number of failed transactions").unwrap_or(0.0) as u64,
        retried: number_after("number of transactions retried").unwrap_or(0.0) as u64,
        retries: number_after("total number of retries").unwrap_or(0.0) as u64,
        job_insert_ms: out
            .lines()
            .find(|line| line.contains("INSERT INTO jobs"))
            .and_then(|line| line.split_whitespace().next())
            .and_then(|word| word.parse().ok()),
        ..Pgbench::default()
    })
}

// ---------------------------------------------------------------------------
// The load generator: `xtask bench-load`, a process of its own
// ---------------------------------------------------------------------------

/// What the generator sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Target {
    /// `POST /spend/purchases` (202), beneficiary `i % n` with its key.
    Purchase { keys: Vec<String>, bodies: Vec<Value>, idempotency_prefix: String },
    /// Signed `POST /psp/webhook` of an unknown event type (200).
    Webhook { secret: String, event_prefix: String },
    /// `GET /health` (200): the floor of an HTTP round trip here.
    Health,
}

/// Open loop: requests start on a fixed schedule whatever the answers do.
/// Closed loop: `connections` tasks each send the next request when the
/// last one is answered.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Mode {
    Open { rate: u32, secs: u64 },
    Closed { connections: usize, secs: u64 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LoadSpec {
    base: String,
    target: Target,
    mode: Mode,
}

/// What the generator measured. Latency runs from issuing the request
/// (open loop: including the wait for a free connection) to the end of the
/// answer's body; `lag` is how late (open loop) a request was issued
/// against its schedule.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct LoadReport {
    pid: u32,
    mode: String,
    requests: u64,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    secs: f64,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    lag_p99_ms: f64,
    lag_max_ms: f64,
}

impl LoadReport {
    fn summary(&self) -> String {
        let mut line = format!(
            "{}: {:.0} req/s achieved, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {} errors of {}",
            self.mode, self.rate, self.p50_ms, self.p99_ms, self.max_ms, self.errors, self.requests
        );
        if self.mode.starts_with("open") {
            line.push_str(&format!(", start lag p99 {:.2} ms max {:.2} ms", self.lag_p99_ms, self.lag_max_ms));
        }
        if let Some(e) = &self.first_error {
            line.push_str(&format!(" (first error: {e})"));
        }
        line
    }
}

/// Runs the generator in a separate process (this binary, `bench-load`),
/// the spec on its stdin, its report on its stdout.
async fn load(ctx: &Ctx<'_>, name: &str, target: Target, mode: Mode) -> Result<LoadReport> {
    let spec = LoadSpec { base: ctx.setup.api_base.clone(), target, mode };
    let secs = match mode {
        Mode::Open { secs, .. } | Mode::Closed { secs, .. } => secs,
    };
    let exe = std::env::current_exe().context("finding the xtask binary")?;
    let log = ctx.logs.join(format!("bench-load-{name}.log"));
    let stderr = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = Command::new(&exe)
        .arg("bench-load")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} bench-load", exe.display()))?;
    let mut stdin = child.stdin.take().context("no stdin for bench-load")?;
    stdin.write_all(&serde_json::to_vec(&spec)?).await.context("handing the spec to bench-load")?;
    drop(stdin);
    let mut stdout = child.stdout.take().context("no stdout for bench-load")?;
    let limit = Duration::from_secs(secs + 60);
    let run = async {
        let mut text = String::new();
        stdout.read_to_string(&mut text).await?;
        let status = child.wait().await?;
        Ok::<_, std::io::Error>((status, text))
    };
    let (status, text) = tokio::time::timeout(limit, run)
        .await
        .map_err(|_| anyhow!("bench-load {name} did not finish within {} s", limit.as_secs()))?
        .context("waiting for bench-load")?;
    if !status.success() {
        bail!("bench-load {name} failed ({status})\n{}", procs::tail(&log));
    }
    let line = text.lines().rev().find(|l| !l.trim().is_empty()).context("bench-load printed nothing")?;
    serde_json::from_str(line).with_context(|| format!("bench-load {name} printed `{line}`"))
}

/// `xtask bench-load`: the load generator process. Reads a [`LoadSpec`]
/// (JSON) on stdin, prints a [`LoadReport`] (JSON) on stdout. One thread:
/// it shares two cores with the api and Postgres.
pub fn load_main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bench-load: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(load_run()) {
        Ok(report) => match serde_json::to_string(&report) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("bench-load: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("bench-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn load_run() -> Result<LoadReport> {
    let mut input = String::new();
    // Handed over whole before anything starts: a blocking read is fine.
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut input).context("reading the spec on stdin")?;
    let spec: LoadSpec = serde_json::from_str(&input).context("the spec is not valid JSON")?;
    let connections = match spec.mode {
        Mode::Open { .. } => OPEN_LOOP_CONNECTIONS,
        Mode::Closed { connections, .. } => connections,
    };
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(connections * 2)
        .timeout(REQUEST_LIMIT + Duration::from_secs(5))
        .build()
        .context("building an HTTP client")?;
    let spec = Arc::new(spec);
    // Connections open and warm before the clock runs.
    let warm: Vec<_> = (0..connections.min(16) as u64)
        .map(|i| {
            let request = build_request(&http, &spec, "warm", i);
            tokio::spawn(async move { request.map(|r| r.send()) })
        })
        .collect();
    for task in warm {
        if let Ok(Ok(send)) = task.await {
            send.await.ok();
        }
    }
    let mut report = match spec.mode {
        Mode::Open { rate, secs } => open_loop(&http, &spec, rate, secs).await?,
        Mode::Closed { connections, secs } => closed_loop(&http, &spec, connections, secs).await?,
    };
    report.pid = std::process::id();
    Ok(report)
}

struct Sample {
    latency: Duration,
    lag: Duration,
    error: Option<String>,
}

fn build_request(http: &reqwest::Client, spec: &LoadSpec, label: &str, i: u64) -> Result<reqwest::RequestBuilder> {
    Ok(match &spec.target {
        Target::Purchase { keys, bodies, idempotency_prefix } => {
            let n = keys.len().min(bodies.len()).max(1) as u64;
            let pick = (i % n) as usize;
            let key = keys.get(pick).context("no beneficiary keys")?;
            let body = bodies.get(pick).context("no purchase bodies")?;
            http.post(format!("{}/spend/purchases", spec.base))
                .bearer_auth(key)
                .header("Idempotency-Key", format!("{idempotency_prefix}{label}-{i}"))
                .json(body)
        }
        Target::Webhook { secret, event_prefix } => {
            let id = format!("{event_prefix}{label}-{i}");
            let body = json!({"id": id, "type": "bench.ping", "data": {}}).to_string();
            let timestamp = chrono::Utc::now().timestamp().to_string();
            let signature = sign(secret, &timestamp, body.as_bytes())?;
            http.post(format!("{}/psp/webhook", spec.base))
                .header("Content-Type", "application/json")
                .header("X-PSP-Signature", signature)
                .header("X-PSP-Timestamp", timestamp)
                .header("X-PSP-Event-Id", id)
                .body(body)
        }
        Target::Health => http.get(format!("{}/health", spec.base)),
    })
}

fn expected_status(target: &Target) -> u16 {
    match target {
        Target::Purchase { .. } => 202,
        Target::Webhook { .. } | Target::Health => 200,
    }
}

/// Lower-case hex HMAC-SHA256 over `<timestamp>.<body>`, as a PSP signs.
fn sign(secret: &str, timestamp: &str, body: &[u8]) -> Result<String> {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).map_err(|e| anyhow!("HMAC key: {e}"))?;
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(hex::encode(mac.finalize().into_bytes()))
}

/// Sends one request and reads the whole answer, within [`REQUEST_LIMIT`]
/// counted from `issued`. Open loop passes `slots`: a request waits for one
/// of the generator's connections, and that wait counts in its latency.
async fn exchange(
    request: reqwest::RequestBuilder,
    expected: u16,
    issued: Instant,
    slots: Option<Arc<tokio::sync::Semaphore>>,
) -> (Duration, Option<String>) {
    let attempt = async {
        let _slot = match &slots {
            Some(slots) => Some(slots.acquire().await.map_err(|e| e.to_string())?),
            None => None,
        };
        let response = request.send().await.map_err(|e| e.without_url().to_string())?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|e| e.without_url().to_string())?;
        if status != expected {
            let text = String::from_utf8_lossy(&body);
            let text: String = text.chars().take(200).collect();
            return Err(format!("HTTP {status}: {text}"));
        }
        Ok(())
    };
    let outcome = match tokio::time::timeout_at(issued + REQUEST_LIMIT, attempt).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!("no answer within {} s", REQUEST_LIMIT.as_secs())),
    };
    (issued.elapsed(), outcome.err())
}

async fn open_loop(http: &reqwest::Client, spec: &Arc<LoadSpec>, rate: u32, secs: u64) -> Result<LoadReport> {
    let rate = rate.max(1);
    let total = u64::from(rate) * secs;
    let expected = expected_status(&spec.target);
    let slots = Arc::new(tokio::sync::Semaphore::new(OPEN_LOOP_CONNECTIONS));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Sample>();
    let start = Instant::now() + Duration::from_millis(20);
    for i in 0..total {
        let at = start + Duration::from_nanos(i * 1_000_000_000 / u64::from(rate));
        tokio::time::sleep_until(at).await;
        let issued = Instant::now();
        let lag = issued.saturating_duration_since(at);
        let request = build_request(http, spec, "open", i)?;
        let tx = tx.clone();
        let slots = slots.clone();
        tokio::spawn(async move {
            let (latency, error) = exchange(request, expected, issued, Some(slots)).await;
            tx.send(Sample { latency, lag, error }).ok();
        });
    }
    drop(tx);
    let mut samples = Vec::with_capacity(total as usize);
    while let Some(sample) = rx.recv().await {
        samples.push(sample);
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(summarize(format!("open loop {rate}/s"), samples, elapsed))
}

async fn closed_loop(
    http: &reqwest::Client,
    spec: &Arc<LoadSpec>,
    connections: usize,
    secs: u64,
) -> Result<LoadReport> {
    let expected = expected_status(&spec.target);
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..connections.max(1))
        .map(|_| {
            let http = http.clone();
            let spec = spec.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut samples = Vec::new();
                while Instant::now() < end {
                    let i = counter.fetch_add(1, Ordering::Relaxed);
                    let request = match build_request(&http, &spec, "closed", i) {
                        Ok(request) => request,
                        Err(e) => {
                            samples.push(Sample {
                                latency: Duration::ZERO,
                                lag: Duration::ZERO,
                                error: Some(format!("{e:#}")),
                            });
                            break;
                        }
                    };
                    let (latency, error) = exchange(request, expected, Instant::now(), None).await;
                    samples.push(Sample { latency, lag: Duration::ZERO, error });
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await.context("a closed-loop task panicked")?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(summarize(format!("closed loop {connections} connections"), samples, elapsed))
}

fn summarize(mode: String, samples: Vec<Sample>, elapsed: f64) -> LoadReport {
    let requests = samples.len() as u64;
    let first_error = samples.iter().find_map(|s| s.error.clone());
    let errors = samples.iter().filter(|s| s.error.is_some()).count() as u64;
    let mut latencies: Vec<Duration> = samples.iter().filter(|s| s.error.is_none()).map(|s| s.latency).collect();
    latencies.sort();
    let mut lags: Vec<Duration> = samples.iter().map(|s| s.lag).collect();
    lags.sort();
    let ok = latencies.len() as u64;
    LoadReport {
        pid: 0,
        mode,
        requests,
        ok,
        errors,
        first_error,
        secs: elapsed,
        rate: if elapsed > 0.0 { ok as f64 / elapsed } else { 0.0 },
        p50_ms: ms(percentile(&latencies, 0.50)),
        p99_ms: ms(percentile(&latencies, 0.99)),
        max_ms: ms(latencies.last().copied().unwrap_or_default()),
        lag_p99_ms: ms(percentile(&lags, 0.99)),
        lag_max_ms: ms(lags.last().copied().unwrap_or_default()),
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------

async fn header(services: &Services, database: &Url, options: Options) -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get().to_string()).unwrap_or_else(|_| "?".into());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let postgres = server_version(database).await.unwrap_or_else(|e| format!("unknown ({e:#})"));
    format!(
        "## Kobatela benchmark ({})\n\n\
         - machine: {cores} cores (nproc), {cpu}\n\
         - date: {}\n\
         - Postgres {postgres} ({}), Redis ({}); release binaries\n",
        if options.quick { "quick run" } else { "full run" },
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        services.postgres_origin,
        services.redis_origin,
    )
}

/// The server's version and the settings that decide what a commit costs.
async fn server_version(database: &Url) -> Result<String> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(database.as_str())
        .await?;
    let (version, fsync, synchronous_commit): (String, String, String) = sqlx::query_as(
        "SELECT current_setting('server_version'), current_setting('fsync'),
                current_setting('synchronous_commit')",
    )
    .fetch_one(&pool)
    .await?;
    pool.close().await;
    Ok(format!("{version}, fsync={fsync}, synchronous_commit={synchronous_commit}"))
}

fn yes_no(ok: bool) -> &'static str {
    if ok { "**yes**" } else { "**no**" }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

impl Report {
    fn table(&self) -> String {
        let pg = &self.pgbench;
        let single = &self.pgbench_single;
        let mut rows: Vec<[String; 5]> = Vec::new();
        for phase in &self.phases {
            let s = &phase.stats;
            // Judged against the better of the two pgbench rates: with 16
            // clients pgbench loses much to its own immediate retries.
            let best = pg.tps.max(single.tps);
            let ratio = ratio_of(s.rate(), best);
            let workers = format!("{} worker{}", phase.workers, plural(phase.workers));
            rows.push([
                format!("Purchases end to end, {workers}"),
                format!("{:.0} purchases/s", s.rate()),
                format!("pgbench {:.0} tps ({} clients), {:.0} tps (1 client)", pg.tps, pg.clients, single.tps),
                format!(
                    "{:.0} % / {:.0} %",
                    ratio_of(s.rate(), pg.tps) * 100.0,
                    ratio_of(s.rate(), single.tps) * 100.0
                ),
                format!(
                    "≥ {:.0} % of the better: {}",
                    THROUGHPUT_TARGET * 100.0,
                    yes_no(ratio >= THROUGHPUT_TARGET && s.failed == 0 && s.dead == 0)
                ),
            ]);
            rows.push([
                format!("Purchase latency, {workers} (created → finished, {IN_FLIGHT} in flight)"),
                format!("p50 {:.0} ms, p99 {:.0} ms", s.p50_ms, s.p99_ms),
                format!("pgbench, 1 client: {:.1} ms per purchase", single.latency_avg_ms),
                format!("p50 {:.1}×", ratio_of(s.p50_ms, single.latency_avg_ms)),
                "—".into(),
            ]);
        }
        rows.push([
            format!("pgbench, `purchase.sql`, {} clients", pg.clients),
            format!("{:.0} tps", pg.tps),
            format!("{} retried, {} failed after {} tries", pg.retried, pg.failed, pg.max_tries.unwrap_or(1)),
            "—".into(),
            "reference".into(),
        ]);
        rows.push([
            "pgbench, `purchase.sql`, 1 client".into(),
            format!("{:.0} tps", single.tps),
            format!("{:.1} ms per purchase, no conflicts", single.latency_avg_ms),
            "—".into(),
            "reference".into(),
        ]);
        let e = &self.enqueue;
        let er = &self.enqueue_reference;
        rows.push([
            format!("Enqueue latency at {ENQUEUE_RATE} req/s (POST → 202), api alone"),
            format!(
                "p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms ({:.0} req/s, {} errors)",
                e.p50_ms, e.p99_ms, e.max_ms, e.rate, e.errors
            ),
            format!(
                "GET /health at {ENQUEUE_RATE}/s: p50 {:.2} ms, p99 {:.2} ms; the job INSERT alone (pgbench): {}",
                er.p50_ms,
                er.p99_ms,
                single.job_insert_ms.map(|ms| format!("{ms:.2} ms avg")).unwrap_or_else(|| "?".into())
            ),
            format!("p99 {:.1}×", ratio_of(e.p99_ms, er.p99_ms)),
            format!(
                "p99 < {ENQUEUE_P99_TARGET_MS:.0} ms: {}",
                yes_no(e.errors == 0 && e.p99_ms < ENQUEUE_P99_TARGET_MS)
            ),
        ]);
        let b = &self.enqueue_busy;
        rows.push([
            format!("Enqueue latency at {ENQUEUE_RATE} req/s, 2 workers busy on the same cores"),
            format!(
                "p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms ({:.0} req/s, {} errors)",
                b.p50_ms, b.p99_ms, b.max_ms, b.rate, b.errors
            ),
            "api alone (row above)".into(),
            format!("p99 {:.1}×", ratio_of(b.p99_ms, e.p99_ms)),
            "context".into(),
        ]);
        let w = &self.webhook;
        let wr = &self.webhook_reference;
        rows.push([
            format!("Webhook acknowledgement at {WEBHOOK_RATE} req/s"),
            format!(
                "{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms, {} errors",
                w.rate, w.p50_ms, w.p99_ms, w.max_ms, w.errors
            ),
            format!("GET /health at {WEBHOOK_RATE}/s: p50 {:.2} ms, p99 {:.2} ms", wr.p50_ms, wr.p99_ms),
            format!("p99 {:.1}×", ratio_of(w.p99_ms, wr.p99_ms)),
            format!(
                "p99 < {WEBHOOK_P99_TARGET_MS:.0} ms: {}",
                yes_no(w.errors == 0 && w.p99_ms < WEBHOOK_P99_TARGET_MS && w.rate >= f64::from(WEBHOOK_RATE) * 0.95)
            ),
        ]);
        let c = &self.webhook_closed;
        let cr = &self.webhook_closed_reference;
        rows.push([
            format!("Webhook acknowledgement, closed loop, {WEBHOOK_CONNECTIONS} connections"),
            format!("{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} errors", c.rate, c.p50_ms, c.p99_ms, c.errors),
            format!("GET /health: {:.0} req/s, p99 {:.2} ms", cr.rate, cr.p99_ms),
            format!("{:.0} %", ratio_of(c.rate, cr.rate) * 100.0),
            "context".into(),
        ]);
        let mut table =
            String::from("| Measure | Value | Reference (same run) | Ratio | Target |\n|---|---|---|---|---|\n");
        for row in rows {
            table.push_str(&format!("| {} |\n", row.join(" | ")));
        }
        table
    }

    fn notes(&self) -> String {
        let mut notes = String::from("\n");
        for phase in &self.phases {
            let s = &phase.stats;
            notes.push_str(&format!(
                "- {} worker{} (`WORKER_CONCURRENCY={WORKER_CONCURRENCY}`): {} purchases posted in {} s by {IN_FLIGHT} tasks \
                 that each wait for their job's notification before the next; {} committed in the {:.1} s steady \
                 window (first and last second of `finished_at` left out). Of the phase's {} jobs: {} succeeded, \
                 {} failed, {} dead, {} pending, {} needed more than one attempt; {} POST or wait errors; max \
                 latency {:.0} ms; {}.{}{}\n",
                phase.workers,
                plural(phase.workers),
                phase.posted,
                phase.secs,
                s.in_window,
                s.window_secs,
                s.total,
                s.succeeded,
                s.failed,
                s.dead,
                s.pending,
                s.retried_jobs,
                phase.post_errors,
                s.max_ms,
                phase.per_worker_text(),
                phase
                    .first_error
                    .as_ref()
                    .map(|e| format!(" First error: {e}."))
                    .unwrap_or_default(),
                s.first_problem
                    .as_ref()
                    .map(|e| format!(" First failed job: {e}."))
                    .unwrap_or_default(),
            ));
        }
        let t = &self.totals;
        notes.push_str(&format!("- {} — {}.\n", t.summary(), if t.ok() { "consistent" } else { "**NOT consistent**" }));
        let check = &self.pgbench_check;
        for pg in [&self.pgbench, &self.pgbench_single] {
            notes.push_str(&format!(
                "- {}: `-n -M prepared -f target/bench/purchase.sql -c {} -j {} -T {}{}`: {} scripts, \
                 {} retried ({} retries; a retry re-runs the whole script, at once), {} failed, latency average \
                 {:.1} ms.\n",
                pg.version,
                pg.clients,
                PGBENCH_THREADS.min(pg.clients),
                pg.secs,
                pg.max_tries.map(|n| format!(" --max-tries={n}")).unwrap_or_default(),
                pg.processed,
                pg.retried,
                pg.retries,
                pg.failed,
                pg.latency_avg_ms,
            ));
        }
        let retries: Vec<String> = self
            .api_retries
            .iter()
            .map(|(what, n)| format!("{what} {}", n.map(|n| n.to_string()).unwrap_or_else(|| "?".into())))
            .collect();
        notes
            .push_str(&format!("- Serialization retries counted by the api (its /metrics): {}.\n", retries.join(", ")));
        notes.push_str(&format!(
            "- pgbench added {} purchases and {} succeeded jobs; money {}.\n",
            check.purchases(),
            check.jobs(),
            if check.after.money_matches && check.before.money_matches { "consistent" } else { "**NOT consistent**" }
        ));
        for (what, r) in [
            ("Enqueue, 2 workers busy", &self.enqueue_busy),
            ("Enqueue, api alone", &self.enqueue),
            ("Enqueue reference", &self.enqueue_reference),
            ("Webhook", &self.webhook),
            ("Webhook reference", &self.webhook_reference),
            ("Webhook closed loop", &self.webhook_closed),
            ("Webhook closed-loop reference", &self.webhook_closed_reference),
        ] {
            notes.push_str(&format!(
                "- {what}: separate process (`xtask bench-load`, pid {}, one thread): {}.\n",
                r.pid,
                r.summary()
            ));
        }
        notes.push_str(&format!(
            "- Open loop: requests are issued on a fixed schedule whatever the answers do (start lag = how late \
             the generator issued one; at most {OPEN_LOOP_CONNECTIONS} connections, a request waiting for one counts \
             that wait). Latency runs from issuing the request to the end of the answer's body. The workers are stopped \
             before the api-alone enqueue and the webhook tests (their jobs stay queued); on this machine they would share the two cores with the api and Postgres.\n",
        ));
        notes
    }
}

fn ratio_of(value: f64, reference: f64) -> f64 {
    if reference > 0.0 { value / reference } else { 0.0 }
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
