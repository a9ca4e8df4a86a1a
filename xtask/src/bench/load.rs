//! The load generator: `xtask bench-load`, a process of its own (open and closed loop).

use super::*;

// ---------------------------------------------------------------------------
// The load generator: `xtask bench-load`, a process of its own
// ---------------------------------------------------------------------------

/// What the generator sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum Target {
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
pub(super) enum Mode {
    Open { rate: u32, secs: u64 },
    Closed { connections: usize, secs: u64 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct LoadSpec {
    pub(super) base: String,
    pub(super) target: Target,
    pub(super) mode: Mode,
}

/// What the generator measured. Latency runs from issuing the request
/// (open loop: including the wait for a free connection) to the end of the
/// answer's body; `lag` is how late (open loop) a request was issued
/// against its schedule.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct LoadReport {
    pub(super) pid: u32,
    pub(super) mode: String,
    pub(super) requests: u64,
    pub(super) ok: u64,
    pub(super) errors: u64,
    pub(super) first_error: Option<String>,
    pub(super) secs: f64,
    pub(super) rate: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) max_ms: f64,
    pub(super) lag_p99_ms: f64,
    pub(super) lag_max_ms: f64,
}

impl LoadReport {
    pub(super) fn summary(&self) -> String {
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
pub(super) async fn load(ctx: &Ctx<'_>, name: &str, target: Target, mode: Mode) -> Result<LoadReport> {
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

pub(super) async fn load_run() -> Result<LoadReport> {
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

pub(super) struct Sample {
    pub(super) latency: Duration,
    pub(super) lag: Duration,
    pub(super) error: Option<String>,
}

pub(super) fn build_request(
    http: &reqwest::Client,
    spec: &LoadSpec,
    label: &str,
    i: u64,
) -> Result<reqwest::RequestBuilder> {
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

pub(super) fn expected_status(target: &Target) -> u16 {
    match target {
        Target::Purchase { .. } => 202,
        Target::Webhook { .. } | Target::Health => 200,
    }
}

/// Lower-case hex HMAC-SHA256 over `<timestamp>.<body>`, as a PSP signs.
pub(super) fn sign(secret: &str, timestamp: &str, body: &[u8]) -> Result<String> {
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
pub(super) async fn exchange(
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

pub(super) async fn open_loop(
    http: &reqwest::Client,
    spec: &Arc<LoadSpec>,
    rate: u32,
    secs: u64,
) -> Result<LoadReport> {
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

pub(super) async fn closed_loop(
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

pub(super) fn summarize(mode: String, samples: Vec<Sample>, elapsed: f64) -> LoadReport {
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
pub(super) fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
