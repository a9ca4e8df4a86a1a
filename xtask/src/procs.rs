//! Child processes: our binaries (and a private redis-server) started with
//! an environment and a log file, waited on over HTTP, stopped with SIGTERM
//! then SIGKILL; one-shot commands (cargo, `api migrate`, initdb) run to
//! completion with their output kept for the error message.
//!
//! Long-lived children get their own process group so that a Ctrl-C in the
//! terminal reaches only us, and we stop them in order. Signals are sent with
//! the `kill` command: no libc binding for one call.

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout, timeout_at};

use crate::{Layout, Signals, cargo_program};

/// How long a started process may take to answer its health URL.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process has to exit after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// Lines of a log shown when a process fails.
const TAIL_LINES: usize = 40;

/// Absolute paths of the workspace binaries, as built by [`build_binaries`].
pub struct Binaries {
    pub api: PathBuf,
    pub worker: PathBuf,
    pub psp_sim: PathBuf,
}

/// `cargo build --workspace --bins`, then the paths of `api`, `worker` and
/// `psp-sim` in the target directory.
pub async fn build_binaries(layout: &Layout, signals: &mut Signals) -> Result<Binaries> {
    println!("building the binaries: cargo build --workspace --bins");
    let status = cargo(layout, ["build", "--workspace", "--bins"], &[], signals).await?;
    if !status.success() {
        bail!("cargo build failed ({status})");
    }
    let dir = layout.target.join("debug");
    let binary = |name: &str| -> Result<PathBuf> {
        let path = dir.join(name);
        if !path.is_file() {
            bail!("cargo build did not produce {name} (looked for {})", path.display());
        }
        Ok(path)
    };
    Ok(Binaries { api: binary("api")?, worker: binary("worker")?, psp_sim: binary("psp-sim")? })
}

/// Runs cargo in the workspace root with extra environment variables and
/// waits for it. Cargo gets a process group of its own, shared with the
/// test binaries it runs (and whatever they start there): on SIGINT/SIGTERM
/// the whole group gets SIGINT, then SIGKILL after [`STOP_GRACE`], so no
/// test is left running against services about to stop. Stragglers of the
/// group are killed when cargo ends, too.
pub async fn cargo<I, S>(
    layout: &Layout,
    args: I,
    envs: &[(String, String)],
    signals: &mut Signals,
) -> Result<ExitStatus>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut child = Command::new(cargo_program())
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .current_dir(&layout.root)
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .context("starting cargo")?;
    let group = child.id().context("cargo has no process id")?;
    let outcome = tokio::select! {
        status = child.wait() => status.context("waiting for cargo"),
        name = signals.recv() => {
            signal_group(group, "INT").await.ok();
            if timeout(STOP_GRACE, child.wait()).await.is_err() {
                child.kill().await.ok();
            }
            Err(anyhow!("interrupted by {name}"))
        }
    };
    // Fails when the group is already empty, as it should be.
    signal_group(group, "KILL").await.ok();
    outcome
}

/// Like [`cargo`], with cargo's standard output read line by line: each
/// line is printed as it comes and handed to `on_line`.
pub async fn cargo_lines<I, S>(
    layout: &Layout,
    args: I,
    envs: &[(String, String)],
    signals: &mut Signals,
    mut on_line: impl FnMut(&str),
) -> Result<ExitStatus>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = Command::new(cargo_program())
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .current_dir(&layout.root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .context("starting cargo")?;
    let group = child.id().context("cargo has no process id")?;
    let stdout = child.stdout.take().context("cargo's stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let outcome = loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    println!("{line}");
                    on_line(&line);
                }
                Ok(None) | Err(_) => break child.wait().await.context("waiting for cargo"),
            },
            name = signals.recv() => {
                signal_group(group, "INT").await.ok();
                if timeout(STOP_GRACE, child.wait()).await.is_err() {
                    child.kill().await.ok();
                }
                break Err(anyhow!("interrupted by {name}"));
            }
        }
    };
    signal_group(group, "KILL").await.ok();
    outcome
}

/// A long-lived child process writing to its own log file.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

/// Starts `program args` with `envs` added to our environment, stdout and
/// stderr going to `<log_dir>/<name>.log` (truncated first).
pub fn spawn(name: &str, program: &Path, args: &[&str], envs: &[(String, String)], log_dir: &Path) -> Result<Proc> {
    std::fs::create_dir_all(log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let log = log_dir.join(format!("{name}.log"));
    let (stdout, stderr) = log_pair(&log)?;
    let child = Command::new(program)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name} ({})", program.display()))?;
    Ok(Proc { name: name.to_string(), child, log })
}

impl Proc {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The exit status if the process has ended.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        self.child.try_wait().with_context(|| format!("checking on {}", self.name))
    }

    /// The last lines of the log, introduced by the file's path.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }

    /// Polls `GET url` until it answers 200, for at most [`READY_TIMEOUT`];
    /// fails early if the process exits, showing the end of its log.
    pub async fn wait_http_ok(&mut self, url: &str) -> Result<()> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .context("building an HTTP client")?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.exited()? {
                bail!("{} exited ({status}) before {url} answered 200\n{}", self.name, self.log_tail());
            }
            let last = match http.get(url).send().await {
                Ok(response) if response.status() == reqwest::StatusCode::OK => return Ok(()),
                Ok(response) => format!("HTTP {}", response.status()),
                Err(e) => e.without_url().to_string(),
            };
            if Instant::now() >= deadline {
                bail!(
                    "{url} did not answer 200 within {} s (last: {last})\n{}",
                    READY_TIMEOUT.as_secs(),
                    self.log_tail()
                );
            }
            sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Stops processes: SIGTERM to all at once, then each has until
/// [`STOP_GRACE`] after that to exit before SIGKILL. Prints one line each.
pub async fn stop_all(procs: Vec<Proc>) {
    for proc in &procs {
        if let Some(pid) = proc.pid()
            && let Err(e) = send_signal(pid, "TERM").await
        {
            eprintln!("  {}: {e:#}", proc.name);
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    for mut proc in procs {
        match timeout_at(deadline, proc.child.wait()).await {
            Ok(Ok(status)) => println!("  {} stopped ({status})", proc.name),
            Ok(Err(e)) => eprintln!("  {}: waiting for it failed: {e}", proc.name),
            Err(_) => {
                proc.child.kill().await.ok();
                println!("  {} did not stop within {} s of SIGTERM: killed", proc.name, STOP_GRACE.as_secs());
            }
        }
    }
}

/// For each process that has already exited: its status and the end of its
/// log. Empty when all are running.
pub fn report_exited(procs: &mut [Proc]) -> String {
    let mut report = String::new();
    for proc in procs {
        if let Ok(Some(status)) = proc.exited() {
            report.push_str(&format!("\n{} exited ({status})\n{}", proc.name, proc.log_tail()));
        }
    }
    report
}

/// Runs a command to its end with stdout and stderr in `log`; a failure or
/// a run longer than `limit` is an error carrying the end of the log.
pub async fn run_to_end(what: &str, command: &mut Command, log: &Path, limit: Duration) -> Result<()> {
    let (stdout, stderr) = log_pair(log)?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let status = match timeout(limit, child.wait()).await {
        Ok(status) => status.with_context(|| format!("waiting for {what}"))?,
        Err(_) => {
            child.kill().await.ok();
            bail!("{what} did not finish within {} s\n{}", limit.as_secs(), tail(log));
        }
    };
    if !status.success() {
        bail!("{what} failed ({status})\n{}", tail(log));
    }
    Ok(())
}

/// Sends a signal (`TERM`, `INT`, `KILL`…) to a process.
/// An admin made on the host: the user id and the key `api keys create`
/// printed, and its first line (what it said it did).
pub struct HostAdmin {
    pub id: String,
    pub key: String,
    pub said: String,
}

/// `api keys create --user NAME --role admin` with `envs` (the database's
/// credentials): the operator's way to a second admin, which the API only
/// grants with a second admin's approval.
pub async fn host_admin(api: &Path, envs: &[(String, String)], username: &str) -> Result<HostAdmin> {
    let out = Command::new(api)
        .args(["keys", "create", "--user", username, "--role", "admin"])
        .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .output()
        .await
        .context("running api keys create")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("api keys create exited {}: {stdout}{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    // "created admin key kb_… for user NAME (<user id>)", then the key alone.
    let lines: Vec<&str> = stdout.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let said = lines.first().copied().unwrap_or_default().to_string();
    let id = said.rsplit_once('(').map(|(_, id)| id.trim_end_matches(')').to_string()).context("no user id printed")?;
    let key = lines.last().copied().context("no key printed")?.to_string();
    Ok(HostAdmin { id, key, said })
}

pub async fn send_signal(pid: u32, signal: &str) -> Result<()> {
    kill(signal, &pid.to_string()).await
}

/// Sends a signal to every process of a process group.
pub async fn signal_group(pgid: u32, signal: &str) -> Result<()> {
    kill(signal, &format!("-{pgid}")).await
}

async fn kill(signal: &str, target: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), "--", target])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .context("running `kill`")?;
    if !status.success() {
        bail!("kill -{signal} {target} failed ({status})");
    }
    Ok(())
}

/// A TCP port free on 127.0.0.1 right now (the OS picks it; we let it go
/// for the child to bind).
pub fn free_port() -> Result<u16> {
    let [port] = free_ports()?;
    Ok(port)
}

/// `N` free ports, distinct: all are held open while they are picked (two
/// separate picks can get the same port back, and the api refuses a
/// `METRICS_ADDR` equal to its own address).
pub fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| std::net::TcpListener::bind(("127.0.0.1", 0)))
        .collect::<std::io::Result<Vec<_>>>()
        .context("finding a free port")?;
    let mut ports = [0u16; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr().context("reading the free port")?.port();
    }
    Ok(ports)
}

/// The last [`TAIL_LINES`] lines of a log file, after a line naming it.
pub fn tail(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(TAIL_LINES);
            format!("--- last {} lines of {} ---\n{}", lines.len() - start, path.display(), lines[start..].join("\n"))
        }
        Err(e) => format!("--- {} cannot be read: {e} ---", path.display()),
    }
}

fn log_pair(log: &Path) -> Result<(File, File)> {
    let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let copy = file.try_clone().with_context(|| format!("sharing {}", log.display()))?;
    Ok((file, copy))
}
