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
            rows.push([
                format!("Push to start, {workers} (created → claimed, {IN_FLIGHT} in flight)"),
                format!("p50 {:.1} ms, p99 {:.1} ms", s.start_p50_ms, s.start_p99_ms),
                "—".into(),
                "—".into(),
                "context".into(),
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

    pub(super) fn notes(&self) -> String {
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

pub(super) fn ratio_of(value: f64, reference: f64) -> f64 {
    if reference > 0.0 { value / reference } else { 0.0 }
}
