//! The reference: pgbench running the purchase rule's own transaction, written by hand.

use super::*;

// ---------------------------------------------------------------------------
// pgbench
// ---------------------------------------------------------------------------

/// The reference (DESIGN.md, "Performance: what costs what"): what the
/// purchase rule itself costs Postgres, written by hand as a careful
/// engineer would, in one SERIALIZABLE transaction: select the mandate, the
/// guarded update, insert the purchase, insert one audit row. None of our
/// own overheads are copied in (no job row, no savepoint, no second audit
/// row, no merchant or usage lookups): a reference that includes them would
/// hide them. `:n` picks a mandate (spread) or is fixed to the hot one;
/// pgbench retries a serialization failure at once (`--max-tries`).
pub(super) fn reference_sql(hot: bool) -> String {
    let pick = if hot { "\\set n 0".to_string() } else { format!("\\set n random(1, {BENEFICIARIES})") };
    format!(
        r#"-- The purchase rule's own transaction, by hand: {which}.
-- Written by `cargo xtask bench`; bench_mandates and bench_uuid7() are its helpers.
{pick}
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT m.id AS m_id, m.sender_id, m.beneficiary_id, b.merchant_id
  FROM bench_mandates b JOIN mandates m ON m.id = b.mandate_id
 WHERE b.n = :n AND m.status = 'ACTIVE' \gset
UPDATE mandates SET spent_amount = spent_amount + 1.00,
       status = CASE WHEN spent_amount + 1.00 = total_amount THEN 'CONSUMED' ELSE status END,
       updated_at = now()
 WHERE id = :m_id::uuid AND status = 'ACTIVE' AND spent_amount + 1.00 <= total_amount;
INSERT INTO purchases (id, job_id, sender_id, beneficiary_id, merchant_id, category_id, mandate_id, amount, currency, status)
VALUES (bench_uuid7(), bench_uuid7(), :sender_id::uuid, :beneficiary_id::uuid, :merchant_id::uuid, NULL, :m_id::uuid,
        1.00, 'USD', 'COMPLETED');
INSERT INTO audit_log (id, actor, action, entity, entity_id, data)
VALUES (bench_uuid7(), 'user:' || :beneficiary_id::text, 'PURCHASE_COMPLETED', 'purchase', :m_id::uuid,
        jsonb_build_object('mandate_id', :m_id::text, 'amount', '1.00', 'currency', 'USD'));
COMMIT;
"#,
        which = if hot { "every purchase on one hot mandate" } else { "purchases spread over the seeded mandates" },
    )
}

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
}

impl Pgbench {
    pub(super) fn summary(&self) -> String {
        format!(
            "pgbench, {} client(s): {:.1} tps ({} scripts in {} s, latency average {:.1} ms, {} retried, {} failed)",
            self.clients, self.tps, self.processed, self.secs, self.latency_avg_ms, self.retried, self.failed
        )
    }
}

/// Purchases, and the money check, before and after pgbench.
#[derive(Debug, Clone)]
pub(super) struct PgbenchCounts {
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
}

pub(super) async fn pgbench_counts(pool: &PgPool) -> Result<PgbenchCounts> {
    let row: (i64, bool) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM purchases),
                (SELECT coalesce(sum(amount), 0) FROM purchases) = (SELECT coalesce(sum(spent_amount), 0) FROM mandates)",
    )
    .fetch_one(pool)
    .await
    .context("counting pgbench's purchases")?;
    Ok(PgbenchCounts { purchases: row.0, money_matches: row.1 })
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

/// The reference script (spread or hot) on `clients` clients for `secs`;
/// the output goes to `target/bench/<name>.log`.
pub(super) async fn run_pgbench(ctx: &Ctx<'_>, clients: u32, secs: u64, name: &str, hot: bool) -> Result<Pgbench> {
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
    let script = ctx.out.join(if hot { "purchase-hot.sql" } else { "purchase.sql" });
    std::fs::write(&script, reference_sql(hot)).with_context(|| format!("writing {}", script.display()))?;
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
        ..Pgbench::default()
    })
}
