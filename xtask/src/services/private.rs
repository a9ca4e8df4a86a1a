//! Private instances: Postgres and Redis started under
//! `target/kobatela-services/<pid>/` on free ports when no usable one is
//! found, their binaries found on the machine, and stale ones swept.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use reqwest::Url;
use tokio::process::Command;
use tokio::time::{Instant, sleep, timeout};

use crate::Layout;
use crate::procs::{self, Proc};

use super::probe::percent_decode;
use super::probe::redis_ping;
use super::{POSTGRES_MISSING, PRIVATE_POSTGRES_SETTINGS, PSQL_MISSING, REDIS_MISSING};

/// Directories that may hold Postgres programs: PATH first, then Debian's
/// `/usr/lib/postgresql/<version>/bin`, newest version first.
pub(super) fn postgres_dirs() -> Vec<PathBuf> {
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

pub(super) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

pub(super) struct PostgresBins {
    pub(super) initdb: PathBuf,
    pub(super) pg_ctl: PathBuf,
}

impl PostgresBins {
    /// `initdb` and `pg_ctl` from the same directory, so their versions match.
    pub(super) fn find() -> Result<Self> {
        postgres_dirs()
            .into_iter()
            .map(|dir| Self { initdb: dir.join("initdb"), pg_ctl: dir.join("pg_ctl") })
            .find(|bins| is_executable(&bins.initdb) && is_executable(&bins.pg_ctl))
            .ok_or_else(|| anyhow!(POSTGRES_MISSING))
    }
}

pub(super) fn find_redis_server() -> Result<PathBuf> {
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
pub(super) struct RunDir {
    pub(super) path: PathBuf,
    pub(super) run_as: Option<String>,
}

impl RunDir {
    pub(super) async fn create(layout: &Layout, for_postgres: bool) -> Result<Self> {
        Self::create_named(layout, &std::process::id().to_string(), for_postgres).await
    }

    /// A run directory named `name` (`<pid>` or `<tag>-<pid>`, which the
    /// sweep of stale directories reads back).
    pub(super) async fn create_named(layout: &Layout, name: &str, for_postgres: bool) -> Result<Self> {
        let base = layout.services();
        sweep_stale(&base).await;
        let pid = name.to_string();
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

pub(super) async fn is_root() -> bool {
    let output = Command::new("id").arg("-u").output().await;
    output.is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `postgres` when that user exists, else `nobody`.
pub(super) async fn postgres_user() -> String {
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
pub(super) async fn user_can_write(user: &str, dir: &Path) -> bool {
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
pub(super) fn command_as(run_as: Option<&str>, program: &Path) -> Command {
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
pub(super) async fn sweep_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // `<pid>`, or `<tag>-<pid>` for a command's own instances (the soak).
        let name = name.rsplit('-').next().unwrap_or_default().to_string();
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

pub(super) fn first_line(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()?.lines().next().map(|l| l.trim().to_string())
}

pub(super) fn process_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|n| n.trim().to_string())
}

pub(super) struct PrivatePostgres {
    pub(super) pg_ctl: PathBuf,
    pub(super) pgdir: PathBuf,
    pub(super) data: PathBuf,
    pub(super) run_as: Option<String>,
}

impl PrivatePostgres {
    pub(super) async fn stop(self) -> Result<()> {
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
pub(super) async fn start_postgres(bins: &PostgresBins, dir: &RunDir) -> Result<(Url, PrivatePostgres)> {
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
pub(super) async fn start_redis(bin: &Path, dir: &Path) -> Result<(Url, Proc)> {
    start_redis_on(bin, dir, procs::free_port()?).await
}

/// redis-server on a given port (a restart keeps its port).
pub(super) async fn start_redis_on(bin: &Path, dir: &Path, port: u16) -> Result<(Url, Proc)> {
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
