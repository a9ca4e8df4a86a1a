//! A private Postgres for fault tests: `initdb` and `pg_ctl` from the
//! machine's Postgres (`/usr/lib/postgresql/<version>/bin`, newest first,
//! or PATH), a data directory of the test's own, `trust` auth on 127.0.0.1
//! and a free port, so a test may stop, start and restart it at will (never
//! the shared one on 5432, which CI and the other suites use). As root it
//! runs as user `postgres` (initdb refuses root) through `runuser`.
//!
//! A free port is only free until someone takes it: each start checks
//! that the server answering on the port is this one (`SHOW
//! data_directory`, `SELECT inet_server_port()`), so a test never trusts a
//! stranger's Postgres. Dropped, it is stopped at once (`pg_ctl stop -m
//! immediate`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sqlx::{Connection, PgConnection};
use tokio::process::Command;

pub struct PrivatePostgres {
    port: u16,
    /// Holds `data/`, the server's log and its socket.
    dir: PathBuf,
    data: PathBuf,
    bin: PathBuf,
    /// The user the server runs as (`postgres` when we are root).
    run_as: Option<String>,
    running: bool,
}

/// `initdb` and `pg_ctl` from one directory, so their versions match.
fn find_bin_dir() -> anyhow::Result<PathBuf> {
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
    let path_dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    versions
        .into_iter()
        .map(|(_, dir)| dir)
        .chain(path_dirs)
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
        .context("initdb and pg_ctl not found (apt-get install postgresql)")
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program`, through `runuser -u <user> --` when a user is given.
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

/// Chowns `dir` to `user` and checks the user can reach and write it.
async fn give_to(user: &str, dir: &Path) -> bool {
    let chowned = Command::new("chown").arg("-R").arg(format!("{user}:")).arg(dir).status().await;
    if !chowned.is_ok_and(|s| s.success()) {
        return false;
    }
    Command::new("runuser")
        .args(["-u", user, "--", "test", "-w"])
        .arg(dir)
        .arg("-a")
        .arg("-x")
        .arg(dir)
        .current_dir("/")
        .status()
        .await
        .is_ok_and(|s| s.success())
}

async fn run(what: &str, command: &mut Command, log: &Path, limit: Duration) -> anyhow::Result<()> {
    let out = tokio::time::timeout(limit, command.stdin(Stdio::null()).kill_on_drop(true).output())
        .await
        .with_context(|| format!("{what} took over {limit:?}"))?
        .with_context(|| format!("running {what}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::write(log, &text);
    if !out.status.success() {
        bail!("{what} failed ({}):\n{text}", out.status);
    }
    Ok(())
}

impl PrivatePostgres {
    /// `initdb` under `dir` (or, when the Postgres user cannot reach it, a
    /// directory of the same name under the temporary directory), then
    /// starts it on a free port.
    pub async fn start_in(dir: PathBuf) -> anyhow::Result<Self> {
        let bin = find_bin_dir()?;
        let run_as = is_root().then(|| "postgres".to_string());
        std::fs::create_dir_all(&dir)?;
        let dir = match &run_as {
            Some(user) if !give_to(user, &dir).await => {
                let name = dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
                let parent = dir.parent().and_then(Path::file_name).map(|n| n.to_os_string()).unwrap_or_default();
                let tmp = std::env::temp_dir().join("kobatela-e2e-postgres").join(parent).join(name);
                std::fs::create_dir_all(&tmp)?;
                // The directories we made above it must be reachable too.
                let top = std::env::temp_dir();
                for up in tmp.ancestors().skip(1).take_while(|p| p.starts_with(&top) && *p != top) {
                    let _ = std::fs::set_permissions(up, std::os::unix::fs::PermissionsExt::from_mode(0o755));
                }
                if !give_to(user, &tmp).await {
                    bail!("user {user} cannot write to {} (initdb refuses root)", tmp.display());
                }
                tmp
            }
            _ => dir,
        };
        let data = dir.join("data");
        run(
            "initdb",
            command_as(run_as.as_deref(), &bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"])
                .current_dir(&dir),
            &dir.join("initdb.log"),
            Duration::from_secs(120),
        )
        .await?;
        let mut pg = Self { port: 0, dir, data, bin, run_as, running: false };
        // A port taken between our pick and the server's bind: pick again.
        let mut last = None;
        for _ in 0..3 {
            pg.port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            match pg.start().await {
                Ok(()) => return Ok(pg),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("private Postgres did not start")))
    }

    /// The maintenance database's URL (`postgres`).
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    pub fn url_of(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Starts it (again) on its port, and checks that the server answering
    /// there is this one.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -k '{}' -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let started = run(
            "pg_ctl start",
            command_as(self.run_as.as_deref(), &self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .arg("-o")
                .arg(&options)
                .arg("-l")
                .arg(self.dir.join("postgres.log"))
                .args(["-w", "-t", "60", "start"])
                .current_dir(&self.dir),
            &self.dir.join("pg_ctl-start.log"),
            Duration::from_secs(90),
        )
        .await;
        if let Err(e) = started {
            let log = std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            bail!("{e:#}\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        self.running = true;
        if let Err(e) = self.check_identity().await {
            self.stop_with("immediate").await.ok();
            return Err(e);
        }
        Ok(())
    }

    /// The server on our port must be ours: our data directory, our port.
    async fn check_identity(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut conn = loop {
            match PgConnection::connect(&self.url()).await {
                Ok(conn) => break conn,
                Err(e) if Instant::now() > deadline => {
                    return Err(e).with_context(|| format!("connecting to the private Postgres on {}", self.port));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let (directory, port): (String, i32) =
            sqlx::query_as("SELECT current_setting('data_directory'), inet_server_port()").fetch_one(&mut conn).await?;
        conn.close().await.ok();
        let ours = std::fs::canonicalize(&self.data).unwrap_or_else(|_| self.data.clone());
        let theirs = std::fs::canonicalize(&directory).unwrap_or_else(|_| PathBuf::from(&directory));
        if theirs != ours || i64::from(port) != i64::from(self.port) {
            bail!(
                "the Postgres on 127.0.0.1:{} is not ours: data directory {directory} on port {port}, expected {} on {}",
                self.port,
                ours.display(),
                self.port
            );
        }
        Ok(())
    }

    async fn stop_with(&mut self, mode: &str) -> anyhow::Result<()> {
        run(
            "pg_ctl stop",
            command_as(self.run_as.as_deref(), &self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .args(["stop", "-m", mode, "-w", "-t", "60"])
                .current_dir(&self.dir),
            &self.dir.join("pg_ctl-stop.log"),
            Duration::from_secs(90),
        )
        .await?;
        self.running = false;
        Ok(())
    }

    /// A fast shutdown: every session is ended, then the server exits; its
    /// port refuses connections until [`start`](Self::start).
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.stop_with("fast").await
    }

    /// Stop and start again; returns how long it was away.
    pub async fn restart(&mut self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.stop().await?;
        self.start().await?;
        Ok(started.elapsed())
    }

    /// Stops it for good and removes its data.
    pub async fn destroy(mut self) -> anyhow::Result<()> {
        if self.running {
            self.stop_with("immediate").await?;
        }
        let _ = std::fs::remove_dir_all(&self.data);
        Ok(())
    }
}

impl Drop for PrivatePostgres {
    /// A test that fails or panics leaves no server running.
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        let pg_ctl = self.bin.join("pg_ctl");
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = std::process::Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&pg_ctl);
                c
            }
            None => std::process::Command::new(&pg_ctl),
        };
        let stopped = command
            .arg("-D")
            .arg(&self.data)
            .args(["stop", "-m", "immediate", "-w", "-t", "30"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !stopped.is_ok_and(|s| s.success()) {
            // pg_ctl failed: the postmaster by its pid file.
            let pid = std::fs::read_to_string(self.data.join("postmaster.pid"))
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u32>().ok()));
            if let Some(pid) = pid {
                let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            }
        }
    }
}
