//! Finding or starting the Postgres and Redis that `test` and `demo` use.
//!
//! For each service, in order: the URL in `DATABASE_URL` / `REDIS_URL` when
//! it is set and answers (Postgres' answer to an SSLRequest, a `PING`
//! answered `+PONG` for Redis); else the local default (127.0.0.1:5432 user
//! `postgres` with trust auth, 127.0.0.1:6379); else a private instance under
//! `target/kobatela-services/<pid>/` on a free port, stopped by
//! [`Services::stop`]. `KOBATELA_SERVICES=private` skips straight to private
//! instances.
//!
//! The Postgres URL handed out is the server's maintenance URL (database
//! `postgres`): the tools create their own databases on that server.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use reqwest::Url;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::time::{Instant, sleep, timeout};

use crate::Layout;
use crate::procs::{self, Proc};

pub const POSTGRES_MISSING: &str = "Postgres not found: install it with: sudo apt-get install -y postgresql";
pub const REDIS_MISSING: &str = "Redis not found: install it with: sudo apt-get install -y redis-server";
pub const PSQL_MISSING: &str = "psql not found: install it with: sudo apt-get install -y postgresql-client";

const LOCAL_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const LOCAL_REDIS: &str = "redis://127.0.0.1:6379";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Private instances start with a clean slate per run, so durability buys
/// nothing; the headroom in connections is for parallel test databases.
const PRIVATE_POSTGRES_SETTINGS: &str =
    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300";

/// Where a service came from.
#[derive(Clone, Debug)]
pub enum Origin {
    Env(&'static str),
    LocalDefault,
    Private(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Env(var) => write!(f, "from {var}"),
            Origin::LocalDefault => write!(f, "local default"),
            Origin::Private(dir) => write!(f, "private instance under {}", dir.display()),
        }
    }
}

/// The Postgres server and Redis in use, and what we started to get them.
pub struct Services {
    /// The server's maintenance URL (database `postgres`).
    pub postgres: Url,
    pub postgres_origin: Origin,
    pub redis: Url,
    pub redis_origin: Origin,
    private_postgres: Option<PrivatePostgres>,
    private_redis: Option<Proc>,
}

enum Found {
    Use(Url, Origin),
    Start,
}

impl Services {
    /// Finds both services, starting private ones where needed. Every
    /// missing program is reported before anything is started.
    pub async fn ensure(layout: &Layout) -> Result<Self> {
        let postgres = find_postgres().await?;
        let redis = find_redis().await?;
        let postgres_bins = matches!(postgres, Found::Start).then(PostgresBins::find);
        let redis_bin = matches!(redis, Found::Start).then(find_redis_server);
        let missing: Vec<String> =
            [postgres_bins.as_ref().and_then(|r| r.as_ref().err()), redis_bin.as_ref().and_then(|r| r.as_ref().err())]
                .into_iter()
                .flatten()
                .map(|e| e.to_string())
                .collect();
        if !missing.is_empty() {
            bail!("{}", missing.join("\n"));
        }
        let postgres_bins = postgres_bins.transpose()?;
        let redis_bin = redis_bin.transpose()?;
        let dir = match postgres_bins.is_some() || redis_bin.is_some() {
            true => Some(RunDir::create(layout, postgres_bins.is_some()).await?),
            false => None,
        };

        let (postgres, postgres_origin, private_postgres) = match (postgres, postgres_bins, &dir) {
            (Found::Use(url, origin), _, _) => (url, origin, None),
            (Found::Start, Some(bins), Some(dir)) => {
                let (url, private) = start_postgres(&bins, dir).await?;
                (url, Origin::Private(private.pgdir.clone()), Some(private))
            }
            (Found::Start, _, _) => bail!("internal: no Postgres binaries or directory"),
        };
        let mut services = Self {
            postgres,
            postgres_origin,
            redis: Url::parse(LOCAL_REDIS).context("parsing the default Redis URL")?,
            redis_origin: Origin::LocalDefault,
            private_postgres,
            private_redis: None,
        };
        match (redis, redis_bin, &dir) {
            (Found::Use(url, origin), _, _) => {
                services.redis = url;
                services.redis_origin = origin;
            }
            (Found::Start, Some(bin), Some(dir)) => match start_redis(&bin, &dir.path).await {
                Ok((url, proc)) => {
                    services.redis = url;
                    services.redis_origin = Origin::Private(dir.path.clone());
                    services.private_redis = Some(proc);
                }
                Err(e) => {
                    services.stop().await;
                    return Err(e);
                }
            },
            (Found::Start, _, _) => {
                services.stop().await;
                bail!("internal: no redis-server or directory");
            }
        }
        Ok(services)
    }

    /// Two lines naming the services (passwords hidden) and their origin.
    pub fn describe(&self) -> String {
        format!(
            "postgres: {} ({})\nredis:    {} ({})",
            redact(&self.postgres),
            self.postgres_origin,
            redact(&self.redis),
            self.redis_origin
        )
    }

    /// Stops what we started; services we found are left alone.
    pub async fn stop(self) {
        if let Some(redis) = self.private_redis {
            procs::stop_all(vec![redis]).await;
        }
        if let Some(postgres) = self.private_postgres
            && let Err(e) = postgres.stop().await
        {
            eprintln!("xtask: stopping the private Postgres: {e:#}");
        }
    }
}

/// `cargo xtask services`: what `ensure` would use, without starting
/// anything. False when a program needed for a private instance is missing.
pub async fn show(layout: &Layout) -> Result<bool> {
    let mut all_found = true;
    match find_postgres().await? {
        Found::Use(url, origin) => println!("postgres: {} ({origin})", redact(&url)),
        Found::Start => match PostgresBins::find() {
            Ok(bins) => println!(
                "postgres: would start a private instance ({}) under {} on a free port",
                bins.initdb.display(),
                layout.services().display()
            ),
            Err(e) => {
                all_found = false;
                println!("postgres: {e}");
            }
        },
    }
    match find_redis().await? {
        Found::Use(url, origin) => println!("redis:    {} ({origin})", redact(&url)),
        Found::Start => match find_redis_server() {
            Ok(bin) => println!(
                "redis:    would start a private instance ({}) under {} on a free port",
                bin.display(),
                layout.services().display()
            ),
            Err(e) => {
                all_found = false;
                println!("redis:    {e}");
            }
        },
    }
    Ok(all_found)
}

/// The same server as `url` with another database.
pub fn with_database(url: &Url, database: &str) -> Url {
    let mut url = url.clone();
    url.set_path(&format!("/{database}"));
    url
}

/// The URL for printing: the password replaced by `***`.
pub fn redact(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() && shown.set_password(Some("***")).is_err() {
        return format!("{}://***", url.scheme());
    }
    shown.to_string()
}

fn force_private() -> bool {
    std::env::var("KOBATELA_SERVICES").is_ok_and(|v| v.trim() == "private")
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

fn note(message: &str) {
    eprintln!("xtask: {message}");
}

async fn find_postgres() -> Result<Found> {
    if force_private() {
        return Ok(Found::Start);
    }
    if let Some(raw) = env_var("DATABASE_URL") {
        let url = maintenance_url(&raw).context("DATABASE_URL is not a postgres:// URL")?;
        match host_port(&url, 5432) {
            Some((host, port)) if postgres_answers(&host, port).await => {
                return Ok(Found::Use(url, Origin::Env("DATABASE_URL")));
            }
            Some((host, port)) => note(&format!("DATABASE_URL is set but no Postgres answers on {host}:{port}")),
            None => note("DATABASE_URL names no host (a Unix socket?): only TCP is supported here"),
        }
    }
    let local = Url::parse(LOCAL_POSTGRES).context("parsing the default Postgres URL")?;
    if postgres_answers("127.0.0.1", 5432).await {
        // The port answering is not enough: the default needs user postgres
        // without a password. psql can tell; without it, trust the port.
        let Ok(psql) = Psql::find() else {
            return Ok(Found::Use(local, Origin::LocalDefault));
        };
        match psql.exec(&local, "SELECT 1").await {
            Ok(()) => return Ok(Found::Use(local, Origin::LocalDefault)),
            Err(e) => note(&format!("127.0.0.1:5432 answers but refuses user postgres without a password: {e:#}")),
        }
    }
    Ok(Found::Start)
}

async fn find_redis() -> Result<Found> {
    if force_private() {
        return Ok(Found::Start);
    }
    if let Some(raw) = env_var("REDIS_URL") {
        let url = Url::parse(&raw).context("REDIS_URL is not a URL")?;
        let answer = match url.scheme() {
            "redis" => redis_ping(&url).await,
            // No TLS client here: a connect is all we can check.
            "rediss" => match host_port(&url, 6379) {
                Some((host, port)) if tcp_answers(&host, port).await => Ok(()),
                _ => Err(anyhow!("no TCP answer")),
            },
            other => Err(anyhow!("scheme `{other}` is not redis:// or rediss://")),
        };
        match answer {
            Ok(()) => return Ok(Found::Use(url, Origin::Env("REDIS_URL"))),
            Err(e) => note(&format!("REDIS_URL is set but does not answer: {e:#}")),
        }
    }
    let local = Url::parse(LOCAL_REDIS).context("parsing the default Redis URL")?;
    if redis_ping(&local).await.is_ok() {
        return Ok(Found::Use(local, Origin::LocalDefault));
    }
    Ok(Found::Start)
}

/// The server of a Postgres URL with the `postgres` database (user,
/// password, host, port and query kept).
fn maintenance_url(raw: &str) -> Result<Url> {
    let url = Url::parse(raw)?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        bail!("scheme `{}` is not postgres://", url.scheme());
    }
    Ok(with_database(&url, "postgres"))
}

fn host_port(url: &Url, default_port: u16) -> Option<(String, u16)> {
    let host = url.host_str().filter(|h| !h.is_empty())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_string(), url.port().unwrap_or(default_port)))
}

/// A Postgres server answers an SSLRequest with one byte, `S` or `N`, before
/// any authentication: a check that needs no password and, unlike a bare
/// TCP connect, is not fooled by a proxy that accepts every connection.
async fn postgres_answers(host: &str, port: u16) -> bool {
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let exchange = async {
        let mut stream = TcpStream::connect((host, port)).await.ok()?;
        stream.write_all(&SSL_REQUEST).await.ok()?;
        let mut reply = [0u8; 1];
        stream.read_exact(&mut reply).await.ok()?;
        Some(reply[0])
    };
    matches!(timeout(CONNECT_TIMEOUT, exchange).await, Ok(Some(b'S' | b'N')))
}

async fn tcp_answers(host: &str, port: u16) -> bool {
    matches!(timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port))).await, Ok(Ok(_)))
}

/// `PING` over a plain socket (after `AUTH` when the URL has a password);
/// the answer must be `+PONG`.
async fn redis_ping(url: &Url) -> Result<()> {
    let (host, port) = host_port(url, 6379).context("the URL names no host")?;
    let exchange = async {
        let stream =
            TcpStream::connect((host.as_str(), port)).await.with_context(|| format!("connecting to {host}:{port}"))?;
        let mut stream = BufReader::new(stream);
        if let Some(password) = url.password() {
            let password = percent_decode(password);
            let user = percent_decode(url.username());
            let mut auth = vec!["AUTH"];
            if !user.is_empty() {
                auth.push(&user);
            }
            auth.push(&password);
            let reply = redis_call(&mut stream, &auth).await?;
            if reply != "+OK" {
                bail!("AUTH answered `{reply}`");
            }
        }
        let reply = redis_call(&mut stream, &["PING"]).await?;
        if reply != "+PONG" {
            bail!("PING answered `{reply}`");
        }
        Ok(())
    };
    timeout(CONNECT_TIMEOUT, exchange).await.map_err(|_| anyhow!("no answer from {host}:{port} within 3 s"))?
}

/// Sends one command as a RESP array and reads the one-line reply.
async fn redis_call(stream: &mut BufReader<TcpStream>, args: &[&str]) -> Result<String> {
    let mut message = format!("*{}\r\n", args.len());
    for arg in args {
        message.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.get_mut().write_all(message.as_bytes()).await.context("writing to Redis")?;
    let mut line = String::new();
    stream.read_line(&mut line).await.context("reading from Redis")?;
    Ok(line.trim_end().to_string())
}

pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = match (bytes[i], bytes.get(i + 1..i + 3)) {
            (b'%', Some(hex)) => std::str::from_utf8(hex).ok().and_then(|h| u8::from_str_radix(h, 16).ok()),
            _ => None,
        };
        match decoded {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Directories that may hold Postgres programs: PATH first, then Debian's
/// `/usr/lib/postgresql/<version>/bin`, newest version first.
fn postgres_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version = name.split('.').map(|part| part.parse().ok()).collect::<Option<Vec<u32>>>()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    dirs.extend(versions.into_iter().map(|(_, dir)| dir));
    dirs
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

struct PostgresBins {
    initdb: PathBuf,
    pg_ctl: PathBuf,
}

impl PostgresBins {
    /// `initdb` and `pg_ctl` from the same directory, so their versions match.
    fn find() -> Result<Self> {
        postgres_dirs()
            .into_iter()
            .map(|dir| Self { initdb: dir.join("initdb"), pg_ctl: dir.join("pg_ctl") })
            .find(|bins| is_executable(&bins.initdb) && is_executable(&bins.pg_ctl))
            .ok_or_else(|| anyhow!(POSTGRES_MISSING))
    }
}

fn find_redis_server() -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.extend(["/usr/bin", "/usr/sbin", "/usr/local/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|dir| dir.join("redis-server"))
        .find(|p| is_executable(p))
        .ok_or_else(|| anyhow!(REDIS_MISSING))
}

/// The `psql` client, used to check logins and to create databases.
pub struct Psql(PathBuf);

impl Psql {
    pub fn find() -> Result<Self> {
        postgres_dirs()
            .into_iter()
            .map(|dir| dir.join("psql"))
            .find(|p| is_executable(p))
            .map(Psql)
            .ok_or_else(|| anyhow!(PSQL_MISSING))
    }

    /// Runs one SQL command; the password goes through `PGPASSWORD`, not
    /// the command line.
    pub async fn exec(&self, url: &Url, sql: &str) -> Result<()> {
        let mut target = url.clone();
        let password = target.password().map(percent_decode);
        target.set_password(None).ok();
        let mut command = Command::new(&self.0);
        command
            .args(["-X", "-w", "-q", "-v", "ON_ERROR_STOP=1", "-d", target.as_str(), "-c", sql])
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(password) = password {
            command.env("PGPASSWORD", password);
        }
        let output = timeout(Duration::from_secs(60), command.output())
            .await
            .map_err(|_| anyhow!("psql did not finish within 60 s"))?
            .context("running psql")?;
        if !output.status.success() {
            bail!("{}", String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(())
    }
}

/// This run's directory for private instances, and the user Postgres runs
/// as when we are root (initdb refuses root).
struct RunDir {
    path: PathBuf,
    run_as: Option<String>,
}

impl RunDir {
    async fn create(layout: &Layout, for_postgres: bool) -> Result<Self> {
        let base = layout.services();
        sweep_stale(&base).await;
        let pid = std::process::id().to_string();
        let path = base.join(&pid);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        let run_as = match for_postgres && is_root().await {
            true => Some(postgres_user().await),
            false => None,
        };
        let Some(user) = run_as else {
            return Ok(Self { path, run_as: None });
        };
        if user_can_write(&user, &path).await {
            return Ok(Self { path, run_as: Some(user) });
        }
        // The Postgres user cannot reach the target directory (under a home
        // directory, say): use the temporary directory instead.
        std::fs::remove_dir_all(&path).ok();
        let path = std::env::temp_dir().join("kobatela-services").join(&pid);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        if !user_can_write(&user, &path).await {
            bail!("user {user} cannot write to {} (needed to run initdb, which refuses root)", path.display());
        }
        Ok(Self { path, run_as: Some(user) })
    }
}

async fn is_root() -> bool {
    let output = Command::new("id").arg("-u").output().await;
    output.is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `postgres` when that user exists, else `nobody`.
async fn postgres_user() -> String {
    let exists = Command::new("id")
        .arg("-u")
        .arg("postgres")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await;
    if exists.is_ok_and(|s| s.success()) { "postgres" } else { "nobody" }.to_string()
}

/// Chowns `dir` to `user` and checks that the user can reach and write it.
async fn user_can_write(user: &str, dir: &Path) -> bool {
    let chowned = Command::new("chown").arg(format!("{user}:")).arg(dir).status().await;
    if !chowned.is_ok_and(|s| s.success()) {
        return false;
    }
    let check = Command::new("runuser")
        .args(["-u", user, "--", "test", "-w"])
        .arg(dir)
        .arg("-a")
        .arg("-x")
        .arg(dir)
        .current_dir("/")
        .status()
        .await;
    check.is_ok_and(|s| s.success())
}

/// `program args`, through `runuser -u <user> --` when a user is given.
fn command_as(run_as: Option<&str>, program: &Path) -> Command {
    match run_as {
        Some(user) => {
            let mut command = Command::new("runuser");
            command.args(["-u", user, "--"]).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// Cleans up after runs that ended without stopping their instances
/// (killed with SIGKILL, say): a directory whose run is gone has its
/// Postgres and Redis stopped and is removed.
async fn sweep_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.parse::<u32>().is_err() || Path::new("/proc").join(&name).exists() {
            continue;
        }
        let dir = entry.path();
        let postmaster = first_line(&dir.join("postgres/data/postmaster.pid"));
        let redis = first_line(&dir.join("redis.pid"));
        for (pid, program, signal) in [(postmaster, "postgres", "INT"), (redis, "redis", "TERM")] {
            let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if process_name(pid).is_some_and(|n| n.starts_with(program))
                && procs::send_signal(pid, signal).await.is_ok()
            {
                let deadline = Instant::now() + Duration::from_secs(10);
                while Path::new("/proc").join(pid.to_string()).exists() && Instant::now() < deadline {
                    sleep(Duration::from_millis(100)).await;
                }
            }
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}

fn first_line(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()?.lines().next().map(|l| l.trim().to_string())
}

fn process_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|n| n.trim().to_string())
}

struct PrivatePostgres {
    pg_ctl: PathBuf,
    pgdir: PathBuf,
    data: PathBuf,
    run_as: Option<String>,
}

impl PrivatePostgres {
    async fn stop(self) -> Result<()> {
        let result = procs::run_to_end(
            "pg_ctl stop",
            command_as(self.run_as.as_deref(), &self.pg_ctl)
                .arg("-D")
                .arg(&self.data)
                .args(["stop", "-m", "fast", "-w", "-t", "30"])
                .current_dir(&self.pgdir),
            &self.pgdir.join("pg_ctl-stop.log"),
            Duration::from_secs(60),
        )
        .await;
        if result.is_ok() {
            println!("  private Postgres stopped");
        }
        // The data is throwaway; the logs stay until the next run sweeps them.
        std::fs::remove_dir_all(&self.data).ok();
        result
    }
}

/// initdb (trust auth, user postgres) and `pg_ctl start -w` on a free port,
/// listening on 127.0.0.1 only.
async fn start_postgres(bins: &PostgresBins, dir: &RunDir) -> Result<(Url, PrivatePostgres)> {
    let pgdir = dir.path.join("postgres");
    std::fs::create_dir_all(&pgdir).with_context(|| format!("creating {}", pgdir.display()))?;
    if let Some(user) = &dir.run_as {
        let chowned = Command::new("chown").arg(format!("{user}:")).arg(&pgdir).status().await;
        if !chowned.is_ok_and(|s| s.success()) {
            bail!("cannot chown {} to {user}", pgdir.display());
        }
    }
    let data = pgdir.join("data");
    let port = procs::free_port()?;
    let run_as = dir.run_as.as_deref();
    println!(
        "starting a private Postgres on 127.0.0.1:{port} under {}{}",
        pgdir.display(),
        run_as.map(|u| format!(" (as {u})")).unwrap_or_default()
    );
    procs::run_to_end(
        "initdb",
        command_as(run_as, &bins.initdb)
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"])
            .current_dir(&pgdir),
        &pgdir.join("initdb.log"),
        Duration::from_secs(120),
    )
    .await?;
    let private = PrivatePostgres {
        pg_ctl: bins.pg_ctl.clone(),
        pgdir: pgdir.clone(),
        data: data.clone(),
        run_as: dir.run_as.clone(),
    };
    let options =
        format!("-p {port} -k '{}' -c listen_addresses=127.0.0.1 {PRIVATE_POSTGRES_SETTINGS}", pgdir.display());
    let server_log = pgdir.join("postgres.log");
    let started = procs::run_to_end(
        "pg_ctl start",
        command_as(run_as, &bins.pg_ctl)
            .arg("-D")
            .arg(&data)
            .arg("-o")
            .arg(&options)
            .arg("-l")
            .arg(&server_log)
            .args(["-w", "-t", "60", "start"])
            .current_dir(&pgdir),
        &pgdir.join("pg_ctl-start.log"),
        Duration::from_secs(90),
    )
    .await;
    if let Err(e) = started {
        // Whatever came up half-way goes down again.
        private.stop().await.ok();
        bail!("{e:#}\n{}", procs::tail(&server_log));
    }
    let url =
        Url::parse(&format!("postgres://postgres@127.0.0.1:{port}/postgres")).context("building the Postgres URL")?;
    Ok((url, private))
}

/// redis-server as our child on a free port, no persistence; up once it
/// answers PING.
async fn start_redis(bin: &Path, dir: &Path) -> Result<(Url, Proc)> {
    let port = procs::free_port()?;
    println!("starting a private Redis on 127.0.0.1:{port} under {}", dir.display());
    let port_arg = port.to_string();
    let dir_arg = dir.to_string_lossy().into_owned();
    let args = [
        "--port",
        port_arg.as_str(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--dir",
        dir_arg.as_str(),
    ];
    let mut proc = procs::spawn("redis", bin, &args, &[], dir)?;
    if let Some(pid) = proc.pid() {
        std::fs::write(dir.join("redis.pid"), pid.to_string()).ok();
    }
    let url = Url::parse(&format!("redis://127.0.0.1:{port}")).context("building the Redis URL")?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = proc.exited()? {
            bail!("redis-server exited ({status})\n{}", proc.log_tail());
        }
        if redis_ping(&url).await.is_ok() {
            return Ok((url, proc));
        }
        if Instant::now() >= deadline {
            let tail = proc.log_tail();
            procs::stop_all(vec![proc]).await;
            bail!("redis-server did not answer PING within 15 s\n{tail}");
        }
        sleep(Duration::from_millis(100)).await;
    }
}

/// Drops and creates `name` on the server (ending sessions a killed earlier
/// run left behind); its URL.
pub(crate) async fn fresh_database(server: &Url, name: &str) -> Result<Url> {
    let psql = Psql::find()?;
    // FORCE (Postgres 13+) ends the sessions of a run that was killed.
    let forced = psql.exec(server, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
    if forced.is_err() {
        psql.exec(server, &format!("DROP DATABASE IF EXISTS {name}"))
            .await
            .with_context(|| format!("dropping the database {name}"))?;
    }
    psql.exec(server, &format!("CREATE DATABASE {name}"))
        .await
        .with_context(|| format!("creating the database {name}"))?;
    Ok(with_database(server, name))
}

/// A random alphanumeric string (keys, secrets, prefixes).
pub(crate) fn random_text(len: usize) -> String {
    use rand::Rng;
    rand::rng().sample_iter(rand::distr::Alphanumeric).take(len).map(char::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maintenance_url_keeps_the_server_and_credentials() -> Result<()> {
        let url = maintenance_url("postgres://app:s%40cret@db.internal:6543/kobatela?sslmode=disable")?;
        assert_eq!(url.as_str(), "postgres://app:s%40cret@db.internal:6543/postgres?sslmode=disable");
        assert_eq!(host_port(&url, 5432), Some(("db.internal".to_string(), 6543)));
        assert_eq!(redact(&url), "postgres://app:***@db.internal:6543/postgres?sslmode=disable");
        Ok(())
    }

    #[test]
    fn maintenance_url_refuses_other_schemes() {
        assert!(maintenance_url("mysql://root@localhost/db").is_err());
    }

    #[test]
    fn percent_decoding_handles_escapes_and_stray_percents() {
        assert_eq!(percent_decode("s%40cret%2F"), "s@cret/");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
