//! Spawned binaries on a fresh database and Redis prefix.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::process::{Child, Command};

use crate::client::Client;
use crate::postgres::PrivatePostgres;
use crate::redis::PrivateRedis;
use crate::s3::PrivateS3;

pub struct EnvOptions {
    pub workers: usize,
    pub psp: bool,
    /// A Redis of this test's own (restartable), instead of the shared one.
    pub private_redis: bool,
    /// Proofs in a private S3-compatible server (`s3s-fs`) instead of a
    /// local directory.
    pub s3: bool,
    /// A Postgres of this test's own (stoppable), instead of the shared one.
    pub private_postgres: bool,
    /// Extra variables for every process (e.g. `RATE_LIMIT_PER_KEY`).
    pub vars: Vec<(String, String)>,
}

impl Default for EnvOptions {
    fn default() -> Self {
        Self { workers: 1, psp: false, private_redis: false, private_postgres: false, s3: false, vars: Vec::new() }
    }
}

impl EnvOptions {
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }
    pub fn psp(mut self) -> Self {
        self.psp = true;
        self
    }
    pub fn private_redis(mut self) -> Self {
        self.private_redis = true;
        self
    }
    pub fn s3(mut self) -> Self {
        self.s3 = true;
        self
    }
    /// The test's database on a Postgres server of its own
    /// ([`Env::postgres`]), which it may stop, start and restart.
    pub fn private_postgres(mut self) -> Self {
        self.private_postgres = true;
        self
    }
    pub fn var(mut self, k: &str, v: &str) -> Self {
        self.vars.push((k.to_string(), v.to_string()));
        self
    }
}

pub struct Env {
    pub name: String,
    pub db_url: String,
    server_url: String,
    pub redis_url: String,
    pub prefix: String,
    pub api_url: String,
    pub psp_url: Option<String>,
    pub admin_key: String,
    pub webhook_secret: String,
    pub pool: PgPool,
    /// The test's own Redis, when asked for ([`EnvOptions::private_redis`]).
    pub redis: Option<PrivateRedis>,
    /// The test's own S3 server, when asked for ([`EnvOptions::s3`]).
    pub s3: Option<PrivateS3>,
    /// The test's own Postgres server, when asked for ([`EnvOptions::private_postgres`]).
    pub postgres: Option<PrivatePostgres>,
    vars: HashMap<String, String>,
    api: Option<Child>,
    /// More api replicas ([`Env::start_api`]): name, process, public URL,
    /// ops listener address.
    more_apis: Vec<(String, Child, String, String)>,
    psp: Option<Child>,
    workers: Vec<Worker>,
    log_dir: PathBuf,
}

/// A user and the key `api keys create` printed for them.
pub struct HostKey {
    pub id: String,
    pub key: String,
}

/// A running worker replica: its handle, its `WORKER_NAME`, and the base
/// URL of its ops listener (`/health`, `/metrics`).
pub struct Worker {
    pub name: String,
    pub worker_name: String,
    pub ops_url: String,
    child: Child,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

pub fn bin(name: &str, var: &str) -> PathBuf {
    if let Ok(p) = std::env::var(var) {
        return PathBuf::from(p);
    }
    let target =
        std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| workspace_root().join("target"));
    target.join("debug").join(name)
}

fn free_port() -> anyhow::Result<u16> {
    let [port] = free_ports()?;
    Ok(port)
}

/// `N` free ports, distinct (all held open while they are picked).
fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let listeners = (0..N).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<std::io::Result<Vec<_>>>()?;
    let mut ports = [0u16; N];
    for (port, l) in ports.iter_mut().zip(&listeners) {
        *port = l.local_addr()?.port();
    }
    Ok(ports)
}

fn server_url() -> String {
    std::env::var("KOBATELA_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// `postgres://u@h:p/db?x` with another database name.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url.split_once('?').map(|(b, q)| (b, Some(q))).unwrap_or((url, None));
    let base = match base.rfind('/') {
        Some(i) if i > base.find("://").map(|j| j + 2).unwrap_or(0) => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

impl Env {
    pub async fn start() -> anyhow::Result<Env> {
        Self::with(EnvOptions::default()).await
    }

    pub async fn with(opts: EnvOptions) -> anyhow::Result<Env> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("kob_e2e_{}", &id[..12]);
        let log_dir = workspace_root().join("target/kobatela-logs/e2e").join(&name);
        std::fs::create_dir_all(&log_dir)?;
        let postgres = match opts.private_postgres {
            true => Some(PrivatePostgres::start_in(log_dir.join("postgres")).await?),
            false => None,
        };
        let server_url = postgres.as_ref().map(PrivatePostgres::url).unwrap_or_else(server_url);
        let mut admin =
            PgConnection::connect(&server_url).await.with_context(|| format!("connecting to {server_url}"))?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await?;
        admin.close().await?;
        let db_url = with_database(&server_url, &name);
        let redis = match opts.private_redis {
            true => Some(PrivateRedis::start(log_dir.join("redis")).await?),
            false => None,
        };
        let redis_url = match &redis {
            Some(r) => r.url(),
            None => std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        };
        let admin_key = format!("kb_admin_{}", uuid::Uuid::new_v4().simple());
        let webhook_secret = format!("whsec_{}", uuid::Uuid::new_v4().simple());
        let [api_port, metrics_port, psp_port] = free_ports()?;
        let mut vars: HashMap<String, String> = [
            ("DATABASE_URL", db_url.clone()),
            ("REDIS_URL", redis_url.clone()),
            ("QUEUE_PREFIX", format!("e2e-{}", &id[..12])),
            ("PORT", api_port.to_string()),
            ("BIND_ADDR", format!("127.0.0.1:{api_port}")),
            ("METRICS_ADDR", format!("127.0.0.1:{metrics_port}")),
            ("BOOTSTRAP_ADMIN_KEY", admin_key.clone()),
            ("PSP_WEBHOOK_SECRETS", webhook_secret.clone()),
            ("LOG_FORMAT", "json".into()),
            ("RUST_LOG", "info,sqlx=warn".into()),
            ("RELAY_EVERY_SECS", "1".into()),
            ("STREAM_BLOCK_MS", "1000".into()),
            ("JOB_RELAY_AFTER_SECS", "3".into()),
            ("JOB_TIMEOUT_SECS", "10".into()),
            ("DB_POOL_SIZE", "8".into()),
            ("RATE_LIMIT_PER_KEY", "1000/s".into()),
            // Tests send bad keys on purpose, all from 127.0.0.1: only the
            // throttle's own tests set a real budget.
            ("AUTH_FAILURES_PER_ADDR", "100000/s".into()),
            ("STORAGE_DIR", log_dir.join("storage").to_string_lossy().into_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if opts.psp {
            vars.insert("PSP_BASE_URL".into(), format!("http://127.0.0.1:{psp_port}"));
            vars.insert("PSP_SIM_PORT".into(), psp_port.to_string());
            vars.insert("PSP_SIM_WEBHOOK_URL".into(), format!("http://127.0.0.1:{api_port}/psp/webhook"));
        }
        let s3 = match opts.s3 {
            true => Some(PrivateS3::start(log_dir.join("s3")).await?),
            false => None,
        };
        if let Some(s3) = &s3 {
            vars.remove("STORAGE_DIR");
            vars.extend(s3.vars(&format!("e2e-{}", &id[..12])));
        }
        for (k, v) in opts.vars {
            vars.insert(k, v);
        }
        let prefix = vars.get("QUEUE_PREFIX").cloned().unwrap_or_default();
        // Its output goes to the test's log folder, and into the error.
        let out = Command::new(bin("api", "KOBATELA_API_BIN"))
            .arg("migrate")
            .envs(&vars)
            .output()
            .await
            .context("running `api migrate` (build the binaries first: cargo build --bins)")?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        std::fs::write(log_dir.join("migrate.log"), &text)?;
        if !out.status.success() {
            bail!(
                "api migrate failed ({}):\n{}",
                out.status,
                text.chars().rev().take(3000).collect::<String>().chars().rev().collect::<String>()
            );
        }
        let pool = PgPool::connect(&db_url).await?;
        let mut env = Env {
            name,
            db_url,
            server_url,
            redis_url,
            prefix,
            api_url: format!("http://127.0.0.1:{api_port}"),
            psp_url: opts.psp.then(|| format!("http://127.0.0.1:{psp_port}")),
            admin_key,
            webhook_secret,
            pool,
            redis,
            s3,
            postgres,
            vars,
            api: None,
            more_apis: Vec::new(),
            psp: None,
            workers: Vec::new(),
            log_dir,
        };
        env.api = Some(env.spawn("api", &bin("api", "KOBATELA_API_BIN"), &["serve"], &[])?);
        wait_http(&format!("{}/ready", env.api_url), env.log_dir.join("api.log")).await?;
        if opts.psp {
            env.psp = Some(env.spawn("psp-sim", &bin("psp-sim", "KOBATELA_PSP_SIM_BIN"), &[], &[])?);
            let url = format!("{}/health", env.psp_url.clone().unwrap_or_default());
            wait_http(&url, env.log_dir.join("psp-sim.log")).await?;
        }
        for i in 0..opts.workers {
            env.start_worker(&format!("w{i}")).await?;
        }
        Ok(env)
    }

    fn spawn(&self, name: &str, path: &Path, args: &[&str], extra: &[(&str, &str)]) -> anyhow::Result<Child> {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.log_dir.join(format!("{name}.log")))?;
        // Each process its own temporary directory, as on a host of its own
        // (an api's proof staging, say, is never another process's file).
        let tmp = self.tmp_dir(name);
        std::fs::create_dir_all(&tmp)?;
        let child = Command::new(path)
            .args(args)
            .envs(&self.vars)
            .env("TMPDIR", &tmp)
            .envs(extra.iter().copied())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", path.display()))?;
        Ok(child)
    }

    /// Starts a worker replica (`WORKER_NAME` = this env's name + `name`, so
    /// the same `name` again reuses the name) and waits until its `/health`
    /// says every consumer polls Redis.
    pub async fn start_worker(&mut self, name: &str) -> anyhow::Result<()> {
        self.start_worker_with(name, &[]).await
    }

    /// [`start_worker`](Self::start_worker) with variables of its own (a
    /// failpoint, say).
    pub async fn start_worker_with(&mut self, name: &str, vars: &[(&str, &str)]) -> anyhow::Result<()> {
        self.spawn_worker(name, vars).await?;
        let url = self.worker(name).map(|w| format!("{}/health", w.ops_url)).unwrap_or_default();
        wait_http(&url, self.log_path(&format!("worker-{name}"))).await
    }

    /// Starts a worker replica and waits only until its ops listener answers
    /// (healthy or not).
    pub async fn spawn_worker(&mut self, name: &str, vars: &[(&str, &str)]) -> anyhow::Result<()> {
        let worker_name = format!("{}-{name}", self.name);
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let mut extra = vec![("WORKER_NAME", worker_name.as_str()), ("WORKER_METRICS_ADDR", addr.as_str())];
        extra.extend_from_slice(vars);
        let child = self.spawn(&format!("worker-{name}"), &bin("worker", "KOBATELA_WORKER_BIN"), &[], &extra)?;
        let ops_url = format!("http://{addr}");
        self.workers.push(Worker { name: name.to_string(), worker_name, ops_url: ops_url.clone(), child });
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while http.get(format!("{ops_url}/health")).timeout(Duration::from_secs(1)).send().await.is_err() {
            if !self.worker_alive(name) {
                // It ended by itself (a test that makes it crash); the caller sees it.
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("worker {name}'s ops listener did not answer in 15 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// True while the worker's process runs.
    pub fn worker_alive(&mut self, name: &str) -> bool {
        self.workers.iter_mut().find(|w| w.name == name).is_some_and(|w| matches!(w.child.try_wait(), Ok(None)))
    }

    /// Forgets a worker whose process ended by itself (it crashed).
    pub async fn reap_worker(&mut self, name: &str) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let Some(pos) = self.workers.iter().position(|w| w.name == name) else { return Ok(None) };
        let mut w = self.workers.remove(pos);
        Ok(Some(tokio::time::timeout(Duration::from_secs(30), w.child.wait()).await??))
    }

    pub fn worker(&self, name: &str) -> Option<&Worker> {
        self.workers.iter().find(|w| w.name == name)
    }

    /// A worker's `/health`: status code and body.
    pub async fn worker_health(&self, name: &str) -> anyhow::Result<(u16, serde_json::Value)> {
        let w = self.worker(name).with_context(|| format!("no worker {name}"))?;
        let r =
            reqwest::Client::new().get(format!("{}/health", w.ops_url)).timeout(Duration::from_secs(5)).send().await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or_default()))
    }

    /// A worker's `/metrics` text.
    pub async fn worker_metrics(&self, name: &str) -> anyhow::Result<String> {
        let w = self.worker(name).with_context(|| format!("no worker {name}"))?;
        Ok(reqwest::Client::new().get(format!("{}/metrics", w.ops_url)).send().await?.text().await?)
    }

    /// Sends a signal to a worker (`-STOP` freezes it as a host that drops
    /// off the network would: its connections stay open, it answers nothing;
    /// `-CONT` thaws it).
    pub async fn signal_worker(&self, name: &str, signal: &str) -> anyhow::Result<()> {
        let pid = self.worker(name).and_then(|w| w.child.id()).with_context(|| format!("no worker {name}"))?;
        let status = Command::new("kill").arg(signal).arg(pid.to_string()).status().await?;
        anyhow::ensure!(status.success(), "kill {signal} {pid}");
        Ok(())
    }

    /// SIGKILL: the worker dies without finishing anything.
    pub async fn kill_worker(&mut self, name: &str) -> anyhow::Result<()> {
        if let Some(pos) = self.workers.iter().position(|w| w.name == name) {
            let mut w = self.workers.remove(pos);
            w.child.kill().await?;
        }
        Ok(())
    }

    /// SIGTERM and wait: the worker finishes the jobs in hand.
    pub async fn stop_worker(&mut self, name: &str) -> anyhow::Result<Option<i32>> {
        if let Some(pos) = self.workers.iter().position(|w| w.name == name) {
            let mut w = self.workers.remove(pos);
            if let Some(pid) = w.child.id() {
                Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await?;
            }
            let status = tokio::time::timeout(Duration::from_secs(30), w.child.wait()).await??;
            return Ok(status.code());
        }
        Ok(None)
    }

    /// `api keys create --user NAME --role admin`, run as the operator runs
    /// it on the host (with this environment's variables, so the database's
    /// credentials): the only way to a second admin that does not wait for
    /// one. Creates the user when needed.
    pub async fn host_admin(&self, username: &str) -> anyhow::Result<HostKey> {
        let out = Command::new(bin("api", "KOBATELA_API_BIN"))
            .args(["keys", "create", "--user", username, "--role", "admin"])
            .envs(&self.vars)
            .output()
            .await
            .context("running `api keys create`")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!("api keys create failed ({}): {stdout}{}", out.status, String::from_utf8_lossy(&out.stderr));
        }
        // "created admin key kb_… for user NAME (<user id>)", then the key alone.
        let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
        let key = lines.last().map(|l| l.trim().to_string()).context("no key printed")?;
        let id = lines
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("created ").and_then(|l| l.rsplit_once('(')).map(|(_, id)| id))
            .map(|id| id.trim_end_matches(')').to_string())
            .with_context(|| format!("no user id in {stdout:?}"))?;
        Ok(HostKey { id, key })
    }

    pub fn admin(&self) -> Client {
        Client::new(&self.api_url, Some(&self.admin_key))
    }

    pub fn anonymous(&self) -> Client {
        Client::new(&self.api_url, None)
    }

    pub fn client(&self, key: &str) -> Client {
        Client::new(&self.api_url, Some(key))
    }

    /// A process's own temporary directory (`TMPDIR`), by its log name
    /// (`api`, `worker-w0`, `psp-sim`).
    pub fn tmp_dir(&self, name: &str) -> PathBuf {
        self.log_dir.join("tmp").join(name)
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    /// What a failed wait prints: the newest jobs and payments of this
    /// test's database and the tail of each process's log, so a failure
    /// seen once in CI can be read without running it again.
    pub async fn diagnosis(&self) -> String {
        let mut out = String::new();
        let queries = [
            (
                "jobs, newest first",
                "SELECT concat_ws(' | ', kind, status, attempts, error, to_char(created_at, 'HH24:MI:SS.MS')) FROM jobs ORDER BY created_at DESC LIMIT 20",
            ),
            (
                "payments",
                "SELECT concat_ws(' | ', kind, status, attempts, redrives, psp_ref, error_reason) FROM payments ORDER BY created_at DESC LIMIT 10",
            ),
        ];
        for (what, sql) in queries {
            let rows: Vec<String> =
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await.unwrap_or_default();
            out.push_str(&format!("{what}:\n"));
            for r in rows {
                out.push_str(&format!("  {r}\n"));
            }
        }
        let mut logs: Vec<PathBuf> = std::fs::read_dir(&self.log_dir)
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "log"))
                    .collect()
            })
            .unwrap_or_default();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            // Request lines are the test's own polling: the rest says what happened.
            let tail: Vec<&str> = text.lines().rev().filter(|l| !l.contains("\"request done\"")).take(12).collect();
            out.push_str(&format!("{}, last lines:\n", log.display()));
            for line in tail.into_iter().rev() {
                out.push_str(&format!("  {}\n", line.chars().take(400).collect::<String>()));
            }
        }
        out
    }

    pub fn var(&self, k: &str) -> Option<&str> {
        self.vars.get(k).map(String::as_str)
    }

    /// The api's `/metrics` text, from its ops listener (`METRICS_ADDR`).
    /// Starts another api replica on the same database and Redis (ports of
    /// its own) and answers its base URL once it is ready.
    pub async fn start_api(&mut self, name: &str) -> anyhow::Result<String> {
        let [port, metrics] = free_ports()?;
        let (bind, ops) = (format!("127.0.0.1:{port}"), format!("127.0.0.1:{metrics}"));
        let extra = [("PORT", port.to_string()), ("BIND_ADDR", bind), ("METRICS_ADDR", ops.clone())];
        let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let child = self.spawn(name, &bin("api", "KOBATELA_API_BIN"), &["serve"], &extra)?;
        let url = format!("http://127.0.0.1:{port}");
        self.more_apis.push((name.to_string(), child, url.clone(), ops));
        wait_http(&format!("{url}/ready"), self.log_path(name)).await?;
        Ok(url)
    }

    /// The `/metrics` text of an api replica started with [`Env::start_api`].
    pub async fn replica_metrics(&self, name: &str) -> anyhow::Result<String> {
        let ops = self.more_apis.iter().find(|a| a.0 == name).map(|a| a.3.clone()).context("no such replica")?;
        let r =
            reqwest::Client::new().get(format!("http://{ops}/metrics")).timeout(Duration::from_secs(5)).send().await?;
        Ok(r.error_for_status()?.text().await?)
    }

    pub async fn api_metrics(&self) -> anyhow::Result<String> {
        let addr = self.var("METRICS_ADDR").context("no METRICS_ADDR")?;
        let r =
            reqwest::Client::new().get(format!("http://{addr}/metrics")).timeout(Duration::from_secs(5)).send().await?;
        Ok(r.error_for_status()?.text().await?)
    }

    /// Deletes every Redis key of this environment: what `FLUSHALL` does
    /// to a Redis we do not share with other test runs.
    pub async fn flush_redis(&self) -> anyhow::Result<u64> {
        let client = redis::Client::open(self.redis_url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let keys: Vec<String> = redis::cmd("KEYS").arg(format!("*{}*", self.prefix)).query_async(&mut conn).await?;
        let mut deleted = 0;
        for chunk in keys.chunks(500) {
            deleted += redis::cmd("DEL").arg(chunk).query_async::<u64>(&mut conn).await?;
        }
        Ok(deleted)
    }

    /// Stops every process, drops the database and the Redis keys.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        for mut w in self.workers.drain(..) {
            let _ = w.child.kill().await;
        }
        if let Some(mut p) = self.psp.take() {
            let _ = p.kill().await;
        }
        for (_, mut child, _, _) in self.more_apis.drain(..) {
            let _ = child.kill().await;
        }
        if let Some(mut a) = self.api.take() {
            let _ = a.kill().await;
        }
        self.pool.close().await;
        if let Some(mut s3) = self.s3.take() {
            let _ = s3.kill().await;
        }
        match self.redis.take() {
            Some(mut redis) => redis.kill().await?,
            None => {
                let _ = self.flush_redis().await;
            }
        }
        match self.postgres.take() {
            // The whole server goes, and the database with it.
            Some(postgres) => postgres.destroy().await?,
            None => {
                let mut admin = PgConnection::connect(&self.server_url).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
                    .execute(&mut admin)
                    .await?;
            }
        }
        let _ = std::fs::remove_dir_all(&self.log_dir);
        Ok(())
    }
}

async fn wait_http(url: &str, log: PathBuf) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    for _ in 0..150 {
        if let Ok(r) = http.get(url).timeout(Duration::from_secs(1)).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(30).collect();
    bail!("{url} did not answer in 15 s; log tail:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
}

/// Polls `check` until it returns `Some` or the time runs out.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("condition not reached within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
