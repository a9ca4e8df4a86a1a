//! Purchases end to end: tasks that post a purchase, wait for its job to end and post the next; what the phase measured, read back from the job rows.

use super::*;

// ---------------------------------------------------------------------------
// Purchases end to end
// ---------------------------------------------------------------------------

/// Job ends as the workers announce them (Redis `{prefix}.ended`, the
/// channel the api's receipt waiters use), handed to the task waiting for
/// that job. An announcement that comes before its waiter is kept; a waiter
/// that hears nothing for a while reads the row itself.
pub(super) struct Watch {
    pub(super) state: Arc<Mutex<WatchState>>,
    pub(super) task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
pub(super) struct WatchState {
    pub(super) waiting: HashMap<String, oneshot::Sender<()>>,
    pub(super) early: HashSet<String>,
}

pub(super) fn lock(state: &Mutex<WatchState>) -> MutexGuard<'_, WatchState> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Watch {
    pub(super) async fn start(redis: &Url, prefix: &str) -> Result<Arc<Self>> {
        let client = redis::Client::open(redis.as_str()).context("the Redis URL")?;
        let mut pubsub = client.get_async_pubsub().await.context("connecting the job-end subscription")?;
        pubsub.subscribe(format!("{prefix}.ended")).await.context("SUBSCRIBE to job ends")?;
        let state = Arc::new(Mutex::new(WatchState::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut messages = pubsub.on_message();
            while let Some(message) = futures::StreamExt::next(&mut messages).await {
                let Ok(ids) = message.get_payload::<String>() else { continue };
                let mut state = lock(&shared);
                for id in ids.split(',') {
                    match state.waiting.remove(id) {
                        Some(waiter) => {
                            waiter.send(()).ok();
                        }
                        None => {
                            state.early.insert(id.to_string());
                        }
                    }
                }
            }
        });
        Ok(Arc::new(Self { state, task }))
    }

    pub(super) fn stop(&self) {
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
    pub(super) fn forget_early(&self) {
        lock(&self.state).early.clear();
    }

    /// Until the job is `succeeded`, `failed` or `dead`.
    pub(super) async fn wait(&self, id: &str, pool: &PgPool) -> Result<()> {
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

/// How a purchase phase drives the api.
#[derive(Debug, Clone, Copy)]
pub(super) struct PhaseSpec {
    pub(super) workers: usize,
    /// Every purchase on the one hot mandate, else spread over all.
    pub(super) hot: bool,
    /// Purchases between receipt and commit at any time.
    pub(super) in_flight: usize,
    pub(super) secs: u64,
}

impl PhaseSpec {
    pub(super) fn label(&self) -> String {
        let workers = format!("{} worker{}", self.workers, plural(self.workers));
        match (self.in_flight, self.hot) {
            (1, _) => format!("{workers}, one at a time"),
            (_, true) => format!("{workers}, one hot mandate"),
            (_, false) => format!("{workers}, spread"),
        }
    }
}

/// What one purchase phase measured.
pub(super) struct Phase {
    pub(super) spec: PhaseSpec,
    pub(super) posted: u64,
    pub(super) post_errors: u64,
    pub(super) first_error: Option<String>,
    pub(super) stats: JobStats,
    /// Per worker, what it ran in this phase (from its /metrics).
    pub(super) per_worker: Vec<WorkerCount>,
    /// Cores used on average by each process, while the clock ran.
    pub(super) cpu: Vec<(String, f64)>,
}

impl Phase {
    pub(super) fn summary(&self) -> String {
        let s = &self.stats;
        format!(
            "{}: {:.1} purchases/s ({} in a {:.1} s window), latency p50 {:.1} ms p99 {:.1} ms max {:.1} ms; \
             posted {}, succeeded {}, failed {}, dead {}, more than one attempt {}, POST errors {}; {}",
            self.spec.label(),
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
            self.per_worker_text(),
        ) + &format!("; {}", self.cpu_text())
    }

    pub(super) fn cpu_text(&self) -> String {
        let parts: Vec<String> = self.cpu.iter().map(|(who, cores)| format!("{who} {cores:.2}")).collect();
        format!("CPU in cores: {}", parts.join(", "))
    }

    pub(super) fn per_worker_text(&self) -> String {
        self.per_worker
            .iter()
            .enumerate()
            .map(|(i, w)| format!("worker {}: {} purchases, {} serialization retries", i + 1, w.purchases, w.retries))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Serialization retries the workers counted per job of the phase.
    pub(super) fn retries_per_job(&self) -> f64 {
        let retries: u64 = self.per_worker.iter().map(|w| w.retries).sum();
        ratio_of(retries as f64, self.stats.total as f64)
    }
}

pub(super) struct DriveCtx {
    pub(super) http: reqwest::Client,
    pub(super) url: String,
    pub(super) seed: Arc<Seed>,
    pub(super) watch: Arc<Watch>,
    pub(super) pool: PgPool,
    pub(super) prefix: String,
    pub(super) counter: AtomicU64,
    pub(super) hot: bool,
}

#[derive(Default)]
pub(super) struct TaskStats {
    pub(super) posted: u64,
    pub(super) errors: u64,
    pub(super) first_error: Option<String>,
}

/// Posts a purchase; the job id of its 202 receipt.
pub(super) async fn post_purchase(drive: &DriveCtx, n: u64) -> Result<String> {
    let ben = match drive.hot {
        true => &drive.seed.hot,
        false => &drive.seed.bens[(n % drive.seed.bens.len() as u64) as usize],
    };
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

pub(super) async fn purchase_task(drive: Arc<DriveCtx>, end: Instant) -> TaskStats {
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

pub(super) async fn purchase_phase(
    fleet: &mut Fleet,
    ctx: &Ctx<'_>,
    http: &reqwest::Client,
    seed: &Arc<Seed>,
    watch: &Arc<Watch>,
    spec: PhaseSpec,
) -> Result<Phase> {
    let tag = format!("w{}{}{}", spec.workers, if spec.hot { "h" } else { "s" }, spec.in_flight);
    let drive = |prefix: String| {
        Arc::new(DriveCtx {
            http: http.clone(),
            url: format!("{}/spend/purchases", ctx.setup.api_base),
            seed: seed.clone(),
            watch: watch.clone(),
            pool: ctx.pool.clone(),
            prefix,
            counter: AtomicU64::new(0),
            hot: spec.hot,
        })
    };
    // Every worker warmed up (connections, statement caches) before the clock runs.
    let warm = drive(format!("{}-warm-{tag}-", ctx.setup.queue_prefix));
    let warm_end = Instant::now() + Duration::from_secs(1);
    // A JoinSet aborts its tasks when dropped: an interrupted run leaves none behind.
    let mut warmers = tokio::task::JoinSet::new();
    for _ in 0..spec.in_flight {
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
    let cpu_before = CpuSnapshot::take(fleet);

    println!("purchases end to end, {}: {} in flight for {} s", spec.label(), spec.in_flight, spec.secs);
    let prefix = format!("{}-{tag}-", ctx.setup.queue_prefix);
    let drive = drive(prefix.clone());
    let end = Instant::now() + Duration::from_secs(spec.secs);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..spec.in_flight {
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
    let cpu = cpu_before.cores_until(&CpuSnapshot::take(fleet));
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
    Ok(Phase { spec, posted, post_errors, first_error, stats, per_worker, cpu })
}

/// What one worker reported on its /metrics.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct WorkerCount {
    /// `kobatela_jobs_total{kind="purchase",outcome="succeeded"}`.
    pub(super) purchases: u64,
    /// `kobatela_serialization_retries_total`, every kind.
    pub(super) retries: u64,
}

/// The counters of each running worker (zeros when unreadable).
pub(super) async fn worker_counts(http: &reqwest::Client, fleet: &Fleet) -> Vec<WorkerCount> {
    let mut counts = Vec::new();
    for url in &fleet.metrics {
        counts.push(worker_count(http, url).await.unwrap_or_default());
    }
    counts
}

pub(super) async fn worker_count(http: &reqwest::Client, url: &str) -> Result<WorkerCount> {
    let body = http.get(url).send().await?.text().await?;
    Ok(WorkerCount {
        purchases: metric_sum(&body, "kobatela_jobs_total", &["kind=\"purchase\"", "outcome=\"succeeded\""]),
        retries: metric_sum(&body, "kobatela_serialization_retries_total", &[]),
    })
}

/// The sum of a Prometheus counter over the series carrying every label given.
pub(super) fn metric_sum(metrics: &str, name: &str, labels: &[&str]) -> u64 {
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
pub(super) struct JobStats {
    pub(super) total: i64,
    pub(super) succeeded: i64,
    pub(super) failed: i64,
    pub(super) dead: i64,
    pub(super) pending: i64,
    pub(super) in_window: i64,
    pub(super) window_secs: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) max_ms: f64,
    /// Created → started (the claim): the api's push, the stream and the
    /// wait for a free slot.
    pub(super) start_p50_ms: f64,
    pub(super) start_p99_ms: f64,
    /// Jobs that took more than one attempt: a transaction that kept
    /// failing serialization until its retries ran out counts an attempt,
    /// and the next one waits for the back-off and the relay.
    pub(super) retried_jobs: i64,
    pub(super) first_problem: Option<String>,
}

impl JobStats {
    pub(super) fn rate(&self) -> f64 {
        if self.window_secs > 0.0 { self.in_window as f64 / self.window_secs } else { 0.0 }
    }
}

pub(super) type StatsRow =
    (i64, i64, i64, i64, i64, i64, i64, Option<f64>, Option<f64>, Option<f64>, Option<f64>, Option<f64>, Option<f64>);

pub(super) async fn job_stats(pool: &PgPool, prefix: &str) -> Result<JobStats> {
    let row: StatsRow = sqlx::query_as(
        "WITH j AS (
             SELECT status, attempts, created_at, started_at, finished_at FROM jobs
              WHERE kind = 'purchase' AND starts_with(idempotency_key, $1)
         ), bounds AS (
             SELECT min(finished_at) + interval '1 second' AS lo,
                    max(finished_at) - interval '1 second' AS hi
               FROM j WHERE status = 'succeeded'
         ), w AS (
             SELECT extract(epoch FROM j.finished_at - j.created_at)::float8 * 1000 AS ms,
                    extract(epoch FROM j.started_at - j.created_at)::float8 * 1000 AS start_ms
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
                (SELECT max(ms) FROM w),
                (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY start_ms) FROM w),
                (SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY start_ms) FROM w)",
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
        start_p50_ms: row.11.unwrap_or(0.0),
        start_p99_ms: row.12.unwrap_or(0.0),
        first_problem,
    })
}

/// Every purchase job of the HTTP runs, checked against the money.
pub(super) struct Totals {
    pub(super) succeeded: i64,
    pub(super) failed: i64,
    pub(super) dead: i64,
    /// Left queued when the workers stopped (the enqueue test's backlog).
    pub(super) pending: i64,
    pub(super) purchases: i64,
    pub(super) amount: String,
    pub(super) spent: String,
    pub(super) amount_matches: bool,
}

impl Totals {
    pub(super) fn ok(&self) -> bool {
        self.failed == 0 && self.dead == 0 && self.amount_matches && self.purchases == self.succeeded
    }

    pub(super) fn summary(&self) -> String {
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

pub(super) async fn totals(pool: &PgPool) -> Result<Totals> {
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
