//! `cargo xtask <command>`: the developer commands of the workspace.
//!
//! - `test [-- <cargo test args>]`: find or start Postgres and Redis, build
//!   the binaries, run every test against them.
//! - `demo`: the product end to end through its HTTP API.
//! - `bench [--quick]`: purchases per second end to end against pgbench,
//!   enqueue and webhook acknowledgement latency (see `bench.rs`).
//! - `soak --minutes N [--seed S]`: a chaos soak on private services (see
//!   `soak/mod.rs`).
//! - `services`: say which Postgres and Redis the others would use.
//!
//! Shared here: where the workspace and its target directory are, and the
//! signals (Ctrl-C, SIGTERM) every command turns into a clean stop.

mod bench;
mod contract;
mod demo;
mod ops_checks;
mod procs;
mod services;
mod soak;
mod test;
mod tools;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::services::Services;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  test [-- ARGS]   run every test (ARGS go to `cargo test`, e.g. `-- --test mandates`)
  demo             run the product end to end through its HTTP API
  bench [--quick]  measure purchases per second against pgbench, enqueue and
                   webhook latency (release binaries; table in target/bench/results.md)
  soak --minutes N [--seed S]
                   a chaos soak: random workload and seeded faults on private
                   Postgres and Redis, then invariants and reconciliation
                   (table in target/soak/results.md)
  services         print the Postgres and Redis the other commands would use

Postgres and Redis: DATABASE_URL / REDIS_URL when set and reachable, else
127.0.0.1:5432 (user postgres, trust) and 127.0.0.1:6379, else private
instances under target/kobatela-services/ (KOBATELA_SERVICES=private forces
these).";

fn main() -> ExitCode {
    // The bench's load generator: a process of its own, on one thread.
    if std::env::args().nth(1).as_deref() == Some("bench-load") {
        return bench::load_main();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("xtask: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(std::env::args().skip(1).collect())) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Vec<String>) -> Result<ExitCode> {
    let Some((command, rest)) = args.split_first() else {
        println!("{USAGE}");
        return Ok(ExitCode::from(2));
    };
    match command.as_str() {
        "test" => {
            // `cargo xtask test -- --test mandates` arrives as `test -- --test mandates`.
            let extra = match rest.split_first() {
                Some((first, after)) if first == "--" => after.to_vec(),
                _ => rest.to_vec(),
            };
            with_services(|layout, services, signals| Box::pin(test::run(layout, services, signals, extra))).await
        }
        "demo" => {
            if !rest.is_empty() {
                bail!("`demo` takes no arguments\n\n{USAGE}");
            }
            with_services(|layout, services, signals| {
                Box::pin(async move { demo::run(layout, services, signals).await.map(|()| ExitCode::SUCCESS) })
            })
            .await
        }
        "bench" => {
            let options = match bench::Options::parse(rest) {
                Ok(options) => options,
                Err(e) => bail!("{e}\n\n{USAGE}"),
            };
            with_services(|layout, services, signals| {
                Box::pin(
                    async move { bench::run(layout, services, signals, options).await.map(|()| ExitCode::SUCCESS) },
                )
            })
            .await
        }
        "soak" => {
            let options = match soak::Options::parse(rest) {
                Ok(options) => options,
                Err(e) => bail!("{e}\n\n{USAGE}"),
            };
            let mut signals = Signals::listen()?;
            let layout = Layout::load().await?;
            soak::run(&layout, &mut signals, options).await
        }
        "services" => {
            let layout = Layout::load().await?;
            let all_found = services::show(&layout).await?;
            Ok(if all_found { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        "help" | "-h" | "--help" => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => {
            eprintln!("xtask: unknown command `{other}`\n\n{USAGE}");
            Ok(ExitCode::from(2))
        }
    }
}

type CommandFuture<'a> = std::pin::Pin<Box<dyn Future<Output = Result<ExitCode>> + 'a>>;

/// Runs a command between finding (or starting) the services and stopping
/// what was started, whether the command succeeds, fails or is interrupted.
async fn with_services<F>(command: F) -> Result<ExitCode>
where
    F: for<'a> FnOnce(&'a Layout, &'a Services, &'a mut Signals) -> CommandFuture<'a>,
{
    // Listen first: from here on Ctrl-C and SIGTERM end in a clean stop.
    let mut signals = Signals::listen()?;
    let layout = Layout::load().await?;
    let services = Services::ensure(&layout).await?;
    println!("{}", services.describe());
    let outcome = command(&layout, &services, &mut signals).await;
    services.stop().await;
    outcome
}

/// Where the workspace and its build output live, as cargo sees them (so
/// `CARGO_TARGET_DIR` and `build.target-dir` are honoured).
pub struct Layout {
    pub root: PathBuf,
    pub target: PathBuf,
}

impl Layout {
    async fn load() -> Result<Self> {
        let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let start = manifest_dir.parent().map(PathBuf::from).unwrap_or(manifest_dir);
        let output = tokio::process::Command::new(cargo_program())
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .current_dir(&start)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .context("running `cargo metadata`")?;
        if !output.status.success() {
            bail!("`cargo metadata` failed: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        let metadata: serde_json::Value =
            serde_json::from_slice(&output.stdout).context("reading the output of `cargo metadata`")?;
        let path = |field: &str| -> Result<PathBuf> {
            metadata[field].as_str().map(PathBuf::from).with_context(|| format!("`cargo metadata` gave no {field}"))
        };
        Ok(Self { root: path("workspace_root")?, target: path("target_directory")? })
    }

    /// Logs of the processes the commands start.
    pub fn logs(&self) -> PathBuf {
        self.target.join("kobatela-logs")
    }

    /// Private Postgres and Redis instances, one directory per run.
    pub fn services(&self) -> PathBuf {
        self.target.join("kobatela-services")
    }
}

/// The cargo that runs us (`cargo run` sets `CARGO`), else the one on PATH.
pub fn cargo_program() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// SIGINT and SIGTERM, caught for the whole run so that an interrupted
/// command still stops its processes and services.
pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn listen() -> Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
        })
    }

    /// Waits for the next signal and names it.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}
