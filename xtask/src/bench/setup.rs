//! The bench's processes and seed: release build, fresh database, api and workers, the seed through the HTTP API, the reference tables pgbench reads.

use super::*;

// ---------------------------------------------------------------------------
// Build, database, processes
// ---------------------------------------------------------------------------

pub(super) struct Binaries {
    pub(super) api: PathBuf,
    pub(super) worker: PathBuf,
}

pub(super) async fn build_release(layout: &Layout, signals: &mut Signals) -> Result<Binaries> {
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
pub(super) struct Setup {
    pub(super) api_base: String,
    pub(super) queue_prefix: String,
    pub(super) admin_key: String,
    pub(super) webhook_secret: String,
    pub(super) common: Vec<(String, String)>,
}

impl Setup {
    pub(super) fn new(database: &Url, services: &Services) -> Result<Self> {
        let [api_port, metrics_port] = procs::free_ports()?;
        let queue_prefix = format!("bench-{}", crate::services::random_text(8).to_lowercase());
        let admin_key = crate::services::random_text(40);
        let webhook_secret = crate::services::random_text(32);
        let common = [
            ("DATABASE_URL", database.to_string()),
            ("REDIS_URL", services.redis.to_string()),
            ("PORT", api_port.to_string()),
            ("BIND_ADDR", format!("127.0.0.1:{api_port}")),
            ("METRICS_ADDR", format!("127.0.0.1:{metrics_port}")),
            ("QUEUE_PREFIX", queue_prefix.clone()),
            ("BOOTSTRAP_ADMIN_KEY", admin_key.clone()),
            ("PSP_WEBHOOK_SECRETS", webhook_secret.clone()),
            ("LOG_FORMAT", "json".to_string()),
            ("RUST_LOG", "warn".to_string()),
            ("RATE_LIMIT_PER_KEY", "100000/s".to_string()),
            // Every client is 127.0.0.1; the bench sends no bad key, but a
            // budget of failed authentications is not what it measures.
            ("AUTH_FAILURES_PER_ADDR", "100000/s".to_string()),
            ("DB_POOL_SIZE", DB_POOL_SIZE.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Ok(Self { api_base: format!("http://127.0.0.1:{api_port}"), queue_prefix, admin_key, webhook_secret, common })
    }

    pub(super) fn api_env(&self) -> Vec<(String, String)> {
        self.common.clone()
    }

    pub(super) fn worker_env(&self, name: &str, metrics_port: u16) -> Vec<(String, String)> {
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
pub(super) async fn start_worker(fleet: &mut Fleet, ctx: &Ctx<'_>, n: usize) -> Result<()> {
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

pub(super) fn http_client(connections: usize) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(connections)
        .timeout(Duration::from_secs(30))
        .build()
        .context("building an HTTP client")
}

/// Removes the Redis keys of this run's queues (webhook jobs are left
/// queued there when the workers stop first).
pub(super) async fn forget_queues(redis: &Url, prefix: &str) -> Result<()> {
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

pub(super) struct Seed {
    pub(super) sender_id: String,
    pub(super) merchant_id: String,
    /// Each with a mandate of their own: the spread phases.
    pub(super) bens: Vec<Beneficiary>,
    /// One more, whose one mandate every purchase of a hot phase spends.
    pub(super) hot: Beneficiary,
}

pub(super) struct Beneficiary {
    pub(super) user_id: String,
    pub(super) key: String,
    pub(super) key_id: String,
    pub(super) mandate_id: String,
    /// The purchase of 1.00 this beneficiary makes.
    pub(super) body: Value,
}

pub(super) async fn seed(http: &reqwest::Client, setup: &Setup) -> Result<Seed> {
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
    let mut bens = Vec::with_capacity(BENEFICIARIES + 1);
    for n in 0..=BENEFICIARIES {
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
    // Number 0 is the hot one (`bench_mandates.n = 0`).
    let hot = bens.remove(0);
    Ok(Seed { sender_id, merchant_id, bens, hot })
}

pub(super) struct Api<'a> {
    pub(super) http: &'a reqwest::Client,
    pub(super) base: &'a str,
}

impl Api<'_> {
    /// POST expecting 201 with a JSON body.
    pub(super) async fn post(&self, key: &str, path: &str, body: Value) -> Result<Value> {
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

pub(super) fn text(value: &Value, field: &str) -> Result<String> {
    value.get(field).and_then(Value::as_str).map(str::to_string).with_context(|| format!("no `{field}` in {value}"))
}

/// The seeded rows pgbench picks from, and a time-ordered id like the
/// UUIDv7 our code makes (Postgres 15 has no `uuidv7()`): the ids land in
/// the indexes the same way.
pub(super) async fn reference_tables(pool: &PgPool, seed: &Seed) -> Result<()> {
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
    for (i, ben) in std::iter::once(&seed.hot).chain(&seed.bens).enumerate() {
        sqlx::query("INSERT INTO bench_mandates VALUES ($1, $2::uuid, $3::uuid, $4::uuid, $5::uuid, $6::uuid)")
            .bind(i32::try_from(i).context("beneficiary number")?)
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

/// The peak resident set (`VmHWM`) of a running process, in MB.
pub(super) fn peak_rss_mb(pid: Option<u32>) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let kb: f64 =
        status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024.0)
}

/// CPU time used so far (user + system, seconds) by the bench's processes
/// and the servers, for "where does the time go" per phase.
#[derive(Debug, Clone, Default)]
pub(super) struct CpuSnapshot {
    pub(super) at: Option<Instant>,
    pub(super) by: Vec<(String, f64)>,
}

/// Seconds of CPU a process used (`/proc/<pid>/stat`, fields 14 and 15, in
/// clock ticks of 1/100 s on Linux).
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// The CPU seconds of every process whose name starts with `name`.
fn cpu_of_all(name: &str) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0.0 };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim().starts_with(name)))
        .filter_map(cpu_secs)
        .sum()
}

impl CpuSnapshot {
    pub(super) fn take(fleet: &Fleet) -> Self {
        let mut by =
            vec![("postgres".to_string(), cpu_of_all("postgres")), ("redis".to_string(), cpu_of_all("redis-server"))];
        for (i, api) in fleet.api.iter().enumerate() {
            by.push((
                if i == 0 { "api".into() } else { format!("api {}", i + 1) },
                api.pid().and_then(cpu_secs).unwrap_or(0.0),
            ));
        }
        for (i, worker) in fleet.workers.iter().enumerate() {
            by.push((format!("worker {}", i + 1), worker.pid().and_then(cpu_secs).unwrap_or(0.0)));
        }
        by.push(("bench".into(), cpu_secs(std::process::id()).unwrap_or(0.0)));
        Self { at: Some(Instant::now()), by }
    }

    /// Cores used on average by each, from `self` to `later`.
    pub(super) fn cores_until(&self, later: &CpuSnapshot) -> Vec<(String, f64)> {
        let secs = match (self.at, later.at) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64().max(1e-3),
            _ => return Vec::new(),
        };
        later
            .by
            .iter()
            .map(|(who, used)| {
                let before = self.by.iter().find(|(w, _)| w == who).map(|(_, v)| *v).unwrap_or(0.0);
                (who.clone(), (used - before).max(0.0) / secs)
            })
            .collect()
    }
}
