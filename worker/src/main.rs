//! The worker: one apalis worker per job kind, fed by our Redis Streams
//! backend (`shared::jobs::transport`), plus the cron schedules. Any number
//! of replicas may run; each needs a unique `WORKER_NAME` (host + pid by
//! default), though reusing one is harmless.

mod cron;
mod keylocks;
mod ops;
mod progress;
mod runners;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use apalis::prelude::*;
use apalis_cron::CronScheduler;
use metrics_exporter_prometheus::PrometheusBuilder;
use shared::config::Config;
use shared::ids::JobId;
use shared::jobs::exec::{Executor, Hint, Report};
use shared::jobs::transport::consumer::ConsumerConfig;
use shared::jobs::transport::{ConsumerStatus, Delivery, StreamBackend};
use shared::jobs::{JobKind, Queue};
use shared::{db, telemetry};
use sqlx::PgPool;
use tokio::sync::{Semaphore, watch};

use crate::runners::Runners;

pub struct WorkerCtx {
    pub pool: PgPool,
    pub config: Config,
    pub runners: Runners,
    /// `WORKER_CONCURRENCY` jobs in flight per process, across all kinds.
    pub slots: Semaphore,
    /// Jobs contending on one row run one after the other.
    pub keys: keylocks::KeyLocks,
    pub acker: Acker,
    /// Jobs in flight and the last finish, per kind (`/health`).
    pub progress: Arc<progress::Progress>,
}

impl WorkerCtx {
    pub async fn execute(&self, id: JobId, hint: &Hint) -> shared::Result<Report> {
        let exec = Executor {
            pool: &self.pool,
            runner: &self.runners,
            queue: &self.runners.queue,
            worker: &self.config.worker_name,
            lease: self.config.job_timeout,
            max_attempts: self.config.job_max_attempts,
        };
        exec.run(id, hint).await
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("worker: {e:#}");
        std::process::exit(1);
    }
}

/// One delivery from a stream. Once the job row records an outcome (or
/// there is nothing to do) the entry is acknowledged; Postgres keeps
/// attempts, back-off and `dead`. It stays pending, to be taken over once
/// idle past the lease, when the job runs elsewhere under a live lease or
/// when even recording the outcome failed (the database is down).
async fn handle(delivery: Delivery, ctx: Data<Arc<WorkerCtx>>) -> Result<(), BoxDynError> {
    let queue = &ctx.acker;
    // Held from here until handled: a consumer holding jobs that never
    // finish is unhealthy (`progress`).
    let in_flight = ctx.progress.start(delivery.kind);
    let Some(job_id) = delivery.job_id else {
        tracing::warn!(entry = %delivery.entry, kind = %delivery.kind, "unreadable stream entry dropped");
        ack(queue, &delivery, &[]).await;
        return Ok(());
    };
    // The key first: jobs waiting for a hot row hold no slot other kinds need.
    let key = match &delivery.key {
        Some(key) => Some(ctx.keys.lock(key).await),
        None => None,
    };
    let slot = ctx.slots.acquire().await.map_err(|e| Box::new(e) as BoxDynError)?;
    if shared::failpoint::any() {
        // A slow consumer (tests): it holds its entries without holding locks.
        shared::failpoint::hit(&format!("deliver.{}", delivery.kind)).await;
    }
    let hint = Hint { ctid: delivery.ctid.clone(), redelivered: delivery.redelivered };
    let report = ctx.execute(job_id, &hint).await;
    drop(slot);
    drop(key);
    if let Some(in_flight) = in_flight {
        in_flight.done(&report);
    }
    match report {
        Ok(Report::Busy) => tracing::debug!(%job_id, "job runs elsewhere under a live lease; delivery kept"),
        Ok(report) => {
            tracing::debug!(%job_id, ?report, "delivery handled");
            let ended = if report.ended() { vec![job_id] } else { Vec::new() };
            ack(queue, &delivery, &ended).await;
        }
        Err(e) => {
            tracing::error!(%job_id, error = %e, "cannot record the job's outcome; the delivery stays pending");
        }
    }
    Ok(())
}

/// Hands the entry's acknowledgement (and the job's end, for receipt
/// waiters) to the [`Acker`]. A lost acknowledgement costs a second
/// delivery later, which finds the job ended and acknowledges it then.
async fn ack(acker: &Acker, delivery: &Delivery, ended: &[JobId]) {
    acker.ack(delivery.kind, delivery.entry.clone(), ended.first().copied());
}

/// Acknowledgements of every kind go to Redis in batches: one task drains
/// what the handlers queued and sends it in one pipelined round trip
/// (`XACK` and `XDEL` per kind, one `PUBLISH` of the ended jobs).
#[derive(Clone)]
pub struct Acker {
    tx: tokio::sync::mpsc::UnboundedSender<(JobKind, String, Option<JobId>)>,
}

impl Acker {
    fn start(queue: Queue) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(JobKind, String, Option<JobId>)>();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(256);
            while rx.recv_many(&mut batch, 256).await > 0 {
                let entries: Vec<(JobKind, &str)> = batch.iter().map(|(k, e, _)| (*k, e.as_str())).collect();
                let ended: Vec<JobId> = batch.iter().filter_map(|(_, _, id)| *id).collect();
                if let Err(e) = queue.ack_many(&entries, &ended).await {
                    tracing::warn!(entries = entries.len(), error = %e, "acknowledgement failed; the entries will be delivered again");
                }
                batch.clear();
            }
        });
        Self { tx }
    }

    fn ack(&self, kind: JobKind, entry: String, ended: Option<JobId>) {
        // Gone only when the process is ending: the entry is delivered again.
        let _ = self.tx.send((kind, entry, ended));
    }
}

async fn run() -> anyhow::Result<()> {
    shared::tls::install_crypto_provider();
    let config = Config::from_env()?;
    telemetry::init(config.log_json);
    shared::money::install_currencies(config.currencies.clone());
    if std::env::args().nth(1).is_some_and(|a| a != "run") {
        bail!("usage: worker [run]  (configuration comes from the environment)");
    }
    // Histograms with buckets (not summaries), so latency aggregates across
    // replicas; gauges nothing writes any more age out instead of going stale.
    let metrics = PrometheusBuilder::new()
        .set_buckets(shared::telemetry::LATENCY_BUCKETS)?
        .idle_timeout(metrics_util::MetricKindMask::GAUGE, Some(shared::telemetry::GAUGE_IDLE))
        .install_recorder()?;
    shared::telemetry::describe_metrics();
    let pool = db::connect_with(
        &config.database_url,
        (config.worker_concurrency as u32 + 4).max(config.db_pool_size.min(64)),
        db::ACQUIRE_TIMEOUT,
        db::SessionBounds::for_lease(config.job_timeout),
    )
    .await
    .context("connecting to Postgres")?;
    if config.migrate_on_start {
        db::migrate(&pool).await?;
    }
    let queue = Queue::new(&config.redis_url, &config.queue_prefix, config.stream_maxlen).context("Redis URL")?;
    let statuses: Vec<Arc<ConsumerStatus>> = JobKind::ALL.iter().map(|k| ConsumerStatus::new(*k)).collect();
    let progress = Arc::new(progress::Progress::new(config.job_timeout));
    let ops = ops::Ops {
        progress: progress.clone(),
        pool: pool.clone(),
        queue: queue.clone(),
        statuses: statuses.clone(),
        block: config.stream_block,
        metrics,
        name: config.worker_name.clone(),
    };
    let ops_addr = ops.serve(config.worker_metrics_addr).await?;
    let psp_http = shared::psp::client::HttpPspClient::new(
        config.psp_base_url.clone(),
        config.psp_api_key.clone(),
        Duration::from_secs(5),
    );
    let ctx = Arc::new(WorkerCtx {
        pool: pool.clone(),
        runners: Runners {
            pool,
            queue: queue.clone(),
            config: config.clone(),
            store: Arc::new(shared::storage::ObjectProofStore::open(&config.storage).context("STORAGE_URL")?),
            psp: Arc::new(psp_http.clone()),
            psp_http,
        },
        slots: Semaphore::new(config.worker_concurrency),
        keys: keylocks::KeyLocks::default(),
        acker: Acker::start(queue.clone()),
        progress,
        config: config.clone(),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut monitor = Monitor::new().shutdown_timeout(config.job_timeout + Duration::from_secs(5));
    for status in statuses {
        let kind = status.kind;
        let consumer = ConsumerConfig {
            kind,
            stream: queue.stream_key(kind),
            consumer: config.worker_name.clone(),
            block: config.stream_block,
            // A moment past the lease, so that the job row's own lease (taken
            // a little after the delivery) has run out too.
            claim_idle: config.job_timeout + Duration::from_secs(1),
            claim_every: (config.job_timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(15)),
        };
        let name = format!("{}.{}", config.worker_name, kind);
        let client = queue.client().clone();
        let ctx = ctx.clone();
        let stop_rx = stop_rx.clone();
        let concurrency = config.worker_concurrency;
        monitor = monitor.register(move |_| {
            let backend =
                StreamBackend::start(client.clone(), consumer.clone(), status.clone(), concurrency, stop_rx.clone());
            WorkerBuilder::new(name.clone())
                .backend(backend)
                .data(ctx.clone())
                .concurrency(concurrency)
                .parallelize(tokio::spawn)
                .build(handle)
        });
    }
    for schedule in cron::schedules(&config) {
        let expr = cron_parse(&schedule.expr)?;
        let job = cron::CronJob { action: schedule.action, ctx: ctx.clone() };
        let name = format!("{}.cron.{}", config.worker_name, schedule.action);
        let tz = config.saka_timezone;
        if schedule.saka_tz {
            monitor = monitor.register(move |_| {
                WorkerBuilder::new(name.clone())
                    .backend(CronScheduler::new(expr.clone()).with_timezone(tz))
                    .data(job.clone())
                    .build(cron::on_tick::<chrono_tz::Tz>)
            });
        } else {
            monitor = monitor.register(move |_| {
                WorkerBuilder::new(name.clone())
                    .backend(CronScheduler::new(expr.clone()))
                    .data(job.clone())
                    .build(cron::on_tick::<chrono::Utc>)
            });
        }
    }
    tracing::info!(
        worker = %config.worker_name,
        concurrency = config.worker_concurrency,
        ops = %ops_addr,
        "worker started"
    );
    monitor
        .run_with_signal(async move {
            shutdown_signal().await;
            tracing::info!("SIGTERM: finishing jobs in hand, taking no new ones");
            let _ = stop_tx.send(true);
            Ok(())
        })
        .await?;
    tracing::info!("worker stopped");
    Ok(())
}

fn cron_parse(expr: &str) -> anyhow::Result<::cron::Schedule> {
    ::cron::Schedule::from_str(expr).with_context(|| format!("cron expression {expr}"))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}
