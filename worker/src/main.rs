//! The worker: one apalis worker per job kind on its Redis queue, plus the
//! cron schedules. Any number of replicas may run; each needs a unique
//! `WORKER_NAME` (host + pid by default).

mod cron;
mod runners;
mod wake;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use apalis::prelude::*;
use apalis_cron::CronScheduler;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use shared::config::Config;
use shared::ids::JobId;
use shared::jobs::exec::{Executor, Report};
use shared::jobs::{JobKind, JobMsg, Queue};
use shared::{db, telemetry};
use sqlx::PgPool;
use tokio::sync::Semaphore;

use crate::runners::Runners;

pub struct WorkerCtx {
    pub pool: PgPool,
    pub config: Config,
    pub runners: Runners,
    /// `WORKER_CONCURRENCY` jobs in flight per process, across all kinds.
    pub slots: Semaphore,
}

impl WorkerCtx {
    pub async fn execute(&self, id: JobId) -> shared::Result<Report> {
        let exec = Executor {
            pool: &self.pool,
            runner: &self.runners,
            queue: &self.runners.queue,
            worker: &self.config.worker_name,
            lease: self.config.job_timeout,
            max_attempts: self.config.job_max_attempts,
        };
        exec.run(id).await
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("worker: {e:#}");
        std::process::exit(1);
    }
}

/// One delivery from Redis. The message is acknowledged whatever the job's
/// outcome (Postgres keeps attempts, back-off and `dead`); an error goes back
/// to apalis only when even recording the outcome failed.
async fn handle(msg: JobMsg, ctx: Data<Arc<WorkerCtx>>) -> Result<(), BoxDynError> {
    let _slot = ctx.slots.acquire().await.map_err(|e| Box::new(e) as BoxDynError)?;
    match ctx.execute(msg.job_id).await {
        Ok(report) => {
            tracing::debug!(job_id = %msg.job_id, ?report, "delivery handled");
            Ok(())
        }
        Err(e) => {
            tracing::error!(job_id = %msg.job_id, error = %e, "cannot record the job's outcome; apalis will redeliver");
            Err(Box::new(e))
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    telemetry::init(config.log_json);
    shared::money::install_currencies(config.currencies.clone());
    if std::env::args().nth(1).is_some_and(|a| a != "run") {
        bail!("usage: worker [run]  (configuration comes from the environment)");
    }
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let pool =
        db::connect(&config.database_url, (config.worker_concurrency as u32 + 4).max(config.db_pool_size.min(64)))
            .await
            .context("connecting to Postgres")?;
    if config.migrate_on_start {
        db::migrate(&pool).await?;
    }
    let queue = Queue::connect(&config.redis_url, &config.queue_prefix).await.context("connecting to Redis")?;
    let client = redis::Client::open(config.redis_url.as_str()).context("Redis URL")?;
    let hub = wake::WakeHub::default();
    hub.listen(client);
    if let Ok(addr) = std::env::var("WORKER_METRICS_ADDR") {
        serve_metrics(&addr, metrics.clone()).await?;
    }
    let ctx = Arc::new(WorkerCtx {
        pool: pool.clone(),
        runners: Runners {
            pool,
            queue: queue.clone(),
            config: config.clone(),
            store: Arc::new(shared::storage::LocalDirStore::new(config.storage_dir.clone())),
            psp: Arc::new(shared::psp::client::HttpPspClient::new(
                config.psp_base_url.clone(),
                config.psp_api_key.clone(),
                Duration::from_secs(5),
            )),
        },
        slots: Semaphore::new(config.worker_concurrency),
        config: config.clone(),
    });

    let mut monitor = Monitor::new().shutdown_timeout(config.job_timeout + Duration::from_secs(5));
    for kind in JobKind::ALL.iter().copied() {
        let name = format!("{}.{}", config.worker_name, kind);
        let queue = queue.clone();
        let hub = hub.clone();
        let ctx = ctx.clone();
        let concurrency = config.worker_concurrency;
        monitor = monitor.register(move |_| {
            let wake = StreamStrategy::new(hub.stream_for(&queue.queue_name(kind)));
            let backend = PollWith::new(queue.storage(kind), wake);
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
        let job = cron::CronJob { kind: schedule.kind, ctx: ctx.clone() };
        let name = format!("{}.cron.{}", config.worker_name, schedule.kind);
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
    tracing::info!(worker = %config.worker_name, concurrency = config.worker_concurrency, "worker started");
    monitor
        .run_with_signal(async {
            shutdown_signal().await;
            tracing::info!("SIGTERM: finishing jobs in hand, taking no new ones");
            Ok(())
        })
        .await?;
    tracing::info!("worker stopped");
    Ok(())
}

fn cron_parse(expr: &str) -> anyhow::Result<::cron::Schedule> {
    ::cron::Schedule::from_str(expr).with_context(|| format!("cron expression {expr}"))
}

async fn serve_metrics(addr: &str, handle: PrometheusHandle) -> anyhow::Result<()> {
    use axum::routing::get;
    let app =
        axum::Router::new().route("/health", get(|| async { axum::Json(serde_json::json!({"status": "ok"})) })).route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move { handle.render() }
            }),
        );
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding WORKER_METRICS_ADDR {addr}"))?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    });
    Ok(())
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
