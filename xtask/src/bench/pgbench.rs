//! The reference: pgbench running the purchase rule's own transaction, written by hand.

use super::*;

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
pub(super) const PURCHASE_SQL: &str = r#"-- One purchase of 1.00, statement for statement as Kobatela runs it.
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
ON CONFLICT (actor_user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
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
pub(super) struct Pgbench {
    pub(super) version: String,
    pub(super) clients: u32,
    pub(super) secs: u64,
    pub(super) tps: f64,
    pub(super) latency_avg_ms: f64,
    pub(super) processed: u64,
    pub(super) failed: u64,
    pub(super) retried: u64,
    pub(super) retries: u64,
    pub(super) max_tries: Option<u32>,
    /// With `-r`: the average latency of the api's job INSERT (autocommit).
    pub(super) job_insert_ms: Option<f64>,
}

impl Pgbench {
    pub(super) fn summary(&self) -> String {
        format!(
            "pgbench, {} client(s): {:.1} tps ({} scripts in {} s, latency average {:.1} ms, {} retried, {} failed)",
            self.clients, self.tps, self.processed, self.secs, self.latency_avg_ms, self.retried, self.failed
        )
    }
}

/// Purchases made by pgbench scripts, and the money check, before and after.
#[derive(Debug, Clone)]
pub(super) struct PgbenchCounts {
    pub(super) pgbench_jobs_succeeded: i64,
    pub(super) purchases: i64,
    pub(super) money_matches: bool,
}

pub(super) struct PgbenchCheck {
    pub(super) before: PgbenchCounts,
    pub(super) after: PgbenchCounts,
}

impl PgbenchCheck {
    pub(super) fn purchases(&self) -> i64 {
        self.after.purchases - self.before.purchases
    }

    pub(super) fn jobs(&self) -> i64 {
        self.after.pgbench_jobs_succeeded - self.before.pgbench_jobs_succeeded
    }
}

pub(super) async fn pgbench_counts(pool: &PgPool) -> Result<PgbenchCounts> {
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
pub(super) fn find_pgbench() -> Result<PathBuf> {
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
pub(super) async fn run_pgbench(
    ctx: &Ctx<'_>,
    clients: u32,
    secs: u64,
    name: &str,
    per_statement: bool,
) -> Result<Pgbench> {
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

pub(super) fn pgbench_major(version: &str) -> Option<u32> {
    version.split_whitespace().find_map(|word| word.split('.').next()?.parse().ok())
}

/// The numbers of pgbench's summary.
pub(super) fn parse_pgbench(out: &str) -> Result<Pgbench> {
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
