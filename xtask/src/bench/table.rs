//! The table and the notes under it.

use super::*;

// ---------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------

pub(super) async fn header(services: &Services, database: &Url, options: Options) -> String {
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
pub(super) async fn server_version(database: &Url) -> Result<String> {
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

pub(super) fn yes_no(ok: bool) -> &'static str {
    if ok { "**yes**" } else { "**no**" }
}

pub(super) fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

impl Report {
    pub(super) fn table(&self) -> String {
        let mut rows: Vec<[String; 5]> = Vec::new();
        for (label, pg) in [("spread", &self.pgbench), ("one hot mandate", &self.pgbench_hot)] {
            rows.push([
                format!("Reference: the rule's own transaction by hand, pgbench, {} clients, {label}", pg.clients),
                format!("{:.0} tps", pg.tps),
                format!(
                    "{} retried ({} retries), {} failed after {} tries",
                    pg.retried,
                    pg.retries,
                    pg.failed,
                    pg.max_tries.unwrap_or(1)
                ),
                "—".into(),
                "reference".into(),
            ]);
        }
        for phase in &self.phases {
            let s = &phase.stats;
            let spec = phase.spec;
            if spec.in_flight == 1 {
                rows.push([
                    format!("Purchases, {}", spec.label()),
                    format!(
                        "receipt → committed p50 {:.1} ms, p99 {:.1} ms; push → start p50 {:.1} ms, p99 {:.1} ms",
                        s.p50_ms, s.p99_ms, s.start_p50_ms, s.start_p99_ms
                    ),
                    format!(
                        "the reference's transaction: {:.1} ms on average at 16 clients",
                        self.pgbench.latency_avg_ms
                    ),
                    "—".into(),
                    "context".into(),
                ]);
                continue;
            }
            let reference = if spec.hot { &self.pgbench_hot } else { &self.pgbench };
            let ratio = ratio_of(s.rate(), reference.tps);
            rows.push([
                format!("Purchases end to end, {}", spec.label()),
                format!(
                    "{:.0}/s; receipt → committed p50 {:.0} ms, p99 {:.0} ms; push → start p50 {:.0} ms, p99 {:.0} ms; {:.2} retries/job",
                    s.rate(),
                    s.p50_ms,
                    s.p99_ms,
                    s.start_p50_ms,
                    s.start_p99_ms,
                    phase.retries_per_job()
                ),
                format!("{:.0} tps ({})", reference.tps, if spec.hot { "hot" } else { "spread" }),
                format!("{ratio:.2}"),
                format!(
                    "≥ {THROUGHPUT_TARGET:.2}: {}",
                    yes_no(ratio >= THROUGHPUT_TARGET && s.failed == 0 && s.dead == 0)
                ),
            ]);
        }
        let reference = &self.enqueue_reference;
        for (target_ms, e) in &self.enqueue {
            rows.push([
                format!(
                    "Enqueue (POST → 202), open loop, {}, workers running",
                    e.mode.trim_start_matches("open loop ")
                ),
                format!(
                    "p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms ({:.0} req/s, {} errors)",
                    e.p50_ms, e.p99_ms, e.max_ms, e.rate, e.errors
                ),
                format!("GET /health: p50 {:.2} ms, p99 {:.2} ms", reference.p50_ms, reference.p99_ms),
                format!("p99 {:.1}×", ratio_of(e.p99_ms, reference.p99_ms)),
                format!("p99 ≤ {target_ms:.0} ms: {}", yes_no(e.errors == 0 && e.p99_ms <= *target_ms)),
            ]);
        }
        let w = &self.webhook;
        rows.push([
            format!("Webhook acknowledgement, closed loop, {WEBHOOK_CONNECTIONS} connections, a worker consuming"),
            format!("{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} errors", w.rate, w.p50_ms, w.p99_ms, w.errors),
            "—".into(),
            "—".into(),
            format!(
                "≥ {WEBHOOK_RATE_TARGET:.0}/s and p99 < {WEBHOOK_P99_TARGET_MS:.0} ms: {}",
                yes_no(w.errors == 0 && w.rate >= WEBHOOK_RATE_TARGET && w.p99_ms < WEBHOOK_P99_TARGET_MS)
            ),
        ]);
        let rss: Vec<String> = self
            .rss
            .iter()
            .map(|(who, mb)| format!("{who} {}", mb.map(|mb| format!("{mb:.0} MB")).unwrap_or_else(|| "?".into())))
            .collect();
        let within = self.rss.iter().all(|(_, mb)| mb.is_some_and(|mb| mb < RSS_TARGET_MB));
        rows.push([
            "Peak resident memory (VmHWM)".into(),
            rss.join(", "),
            "—".into(),
            "—".into(),
            format!("each < {RSS_TARGET_MB:.0} MB: {}", yes_no(within)),
        ]);
        let mut table =
            String::from("| Measure | Value | Reference (same run) | Ratio | Target |\n|---|---|---|---|---|\n");
        for row in rows {
            table.push_str(&format!("| {} |\n", row.join(" | ")));
        }
        table
    }

    pub(super) fn notes(&self) -> String {
        let mut notes = String::from("\n");
        for phase in &self.phases {
            let s = &phase.stats;
            notes.push_str(&format!(
                "- {} (`WORKER_CONCURRENCY={WORKER_CONCURRENCY}`): {} purchases posted in {} s by {} task(s) that each \
                 wait for their job's end before the next; {} committed in the {:.1} s steady window (first and last \
                 second of `finished_at` left out). Of the phase's {} jobs: {} succeeded, {} failed, {} dead, {} \
                 pending, {} needed more than one attempt; {} POST or wait errors; max latency {:.0} ms; {}; {}.{}{}\n",
                phase.spec.label(),
                phase.posted,
                phase.spec.secs,
                phase.spec.in_flight,
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
                phase.cpu_text(),
                phase.first_error.as_ref().map(|e| format!(" First error: {e}.")).unwrap_or_default(),
                s.first_problem.as_ref().map(|e| format!(" First failed job: {e}.")).unwrap_or_default(),
            ));
        }
        let t = &self.totals;
        notes.push_str(&format!("- {} — {}.\n", t.summary(), if t.ok() { "consistent" } else { "**NOT consistent**" }));
        let check = &self.pgbench_check;
        for (file, pg) in [("purchase.sql", &self.pgbench), ("purchase-hot.sql", &self.pgbench_hot)] {
            notes.push_str(&format!(
                "- {}: `-n -M prepared -f target/bench/{file} -c {} -j {} -T {}{}`: {} transactions, {} retried \
                 ({} retries, each at once), {} failed, latency average {:.1} ms.\n",
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
        notes.push_str(&format!(
            "- pgbench added {} purchases; money {}.\n",
            check.purchases(),
            if check.after.money_matches && check.before.money_matches { "consistent" } else { "**NOT consistent**" }
        ));
        for (what, r) in self
            .enqueue
            .iter()
            .map(|(_, r)| ("Enqueue", r))
            .chain([("Enqueue reference", &self.enqueue_reference), ("Webhook", &self.webhook)])
        {
            notes.push_str(&format!(
                "- {what}: separate process (`xtask bench-load`, pid {}, one thread): {}.\n",
                r.pid,
                r.summary()
            ));
        }
        notes.push_str(&format!(
            "- Open loop: requests are issued on a fixed schedule whatever the answers do (start lag = how late \
             the generator issued one; at most {OPEN_LOOP_CONNECTIONS} connections, a request waiting for one counts \
             that wait). Latency runs from issuing the request to the end of the answer's body. The workers, api, \
             Postgres and the generator share the machine's cores.\n",
        ));
        notes
    }
}

pub(super) fn ratio_of(value: f64, reference: f64) -> f64 {
    if reference > 0.0 { value / reference } else { 0.0 }
}
