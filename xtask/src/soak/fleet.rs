//! The processes under test: `api`, `psp-sim` and three `worker`s, with
//! short relay, lease and block settings so that healing shows within a
//! soak; each can be killed, stopped, paused and started again. A process
//! that ends without us ending it is a finding.

use std::path::PathBuf;

use anyhow::{Context, Result};
use reqwest::Url;

use crate::procs::{self, Binaries, Proc};

pub const WORKERS: usize = 3;
/// Amounts psp-sim reports as `payment.failed` (while failing is on).
pub const FAIL_AMOUNTS: [&str; 2] = ["66.60", "13.13"];
/// An amount psp-sim refuses at once (HTTP 422): a final PSP refusal.
pub const REFUSED_AMOUNT: &str = "7.77";

/// Ports, secrets and environments of one soak.
pub struct Setup {
    pub api_base: String,
    pub psp_base: String,
    pub admin_key: String,
    pub webhook_secret: String,
    api_port: u16,
    psp_port: u16,
    common: Vec<(String, String)>,
}

impl Setup {
    pub fn new(database: &Url, redis: &Url, storage: &std::path::Path) -> Result<Self> {
        let [api_port, psp_port, metrics_port] = procs::free_ports()?;
        let admin_key = crate::services::random_text(40);
        let webhook_secret = crate::services::random_text(32);
        let common = [
            ("DATABASE_URL", database.to_string()),
            ("REDIS_URL", redis.to_string()),
            ("PORT", api_port.to_string()),
            ("METRICS_ADDR", format!("127.0.0.1:{metrics_port}")),
            ("WORKER_METRICS_ADDR", "127.0.0.1:0".to_string()),
            ("QUEUE_PREFIX", "soak".to_string()),
            ("BOOTSTRAP_ADMIN_KEY", admin_key.clone()),
            ("PSP_WEBHOOK_SECRETS", webhook_secret.clone()),
            ("PSP_BASE_URL", format!("http://127.0.0.1:{psp_port}")),
            ("STORAGE_DIR", storage.to_string_lossy().into_owned()),
            ("RATE_LIMIT_PER_KEY", "2000/s".to_string()),
            // Every actor is 127.0.0.1, some with bad keys on purpose.
            ("AUTH_FAILURES_PER_ADDR", "100000/s".to_string()),
            ("LOG_FORMAT", "json".to_string()),
            // Healing within seconds: the relay every second re-pushes what
            // no worker took within 3 s; a lease of 10 s; polls of 0.5 s.
            ("RELAY_EVERY_SECS", "1".to_string()),
            ("JOB_RELAY_AFTER_SECS", "3".to_string()),
            ("JOB_TIMEOUT_SECS", "10".to_string()),
            ("STREAM_BLOCK_MS", "500".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Ok(Self {
            api_base: format!("http://127.0.0.1:{api_port}"),
            psp_base: format!("http://127.0.0.1:{psp_port}"),
            admin_key,
            webhook_secret,
            api_port,
            psp_port,
            common,
        })
    }

    pub fn api_env(&self) -> Vec<(String, String)> {
        self.common.clone()
    }

    fn worker_env(&self, name: &str) -> Vec<(String, String)> {
        let mut env = self.common.clone();
        env.push(("WORKER_NAME".to_string(), name.to_string()));
        env
    }

    fn psp_env(&self) -> Vec<(String, String)> {
        [
            ("PSP_SIM_PORT", self.psp_port.to_string()),
            ("PSP_SIM_WEBHOOK_URL", format!("http://127.0.0.1:{}/psp/webhook", self.api_port)),
            ("PSP_WEBHOOK_SECRETS", self.webhook_secret.clone()),
            ("PSP_SIM_FAIL_AMOUNTS", FAIL_AMOUNTS.join(",")),
            ("PSP_SIM_FAIL_STATUS", REFUSED_AMOUNT.to_string()),
            // The settlement races the payout's own reply (no head start).
            ("PSP_SIM_WEBHOOK_DELAY_MS", "0".to_string()),
            ("LOG_FORMAT", "json".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// The running processes; a slot is `None` while its process is down.
pub struct Fleet {
    bins: Binaries,
    pub setup: Setup,
    logs: PathBuf,
    api: Option<Proc>,
    psp: Option<Proc>,
    workers: Vec<Option<Proc>>,
    /// Starts so far, for log names (`worker-2.3.log`: its third start).
    starts: std::collections::HashMap<String, u32>,
}

impl Fleet {
    pub async fn start(bins: Binaries, setup: Setup, logs: PathBuf) -> Result<Self> {
        let mut fleet = Self {
            bins,
            setup,
            logs,
            api: None,
            psp: None,
            workers: (0..WORKERS).map(|_| None).collect(),
            starts: Default::default(),
        };
        fleet.start_api().await?;
        let psp = fleet.spawn("psp-sim", &fleet.bins.psp_sim.clone(), &[], fleet.setup.psp_env())?;
        fleet.psp = Some(psp);
        let url = format!("{}/health", fleet.setup.psp_base);
        fleet.psp.as_mut().context("psp-sim")?.wait_http_ok(&url).await?;
        for n in 0..WORKERS {
            fleet.start_worker(n)?;
        }
        Ok(fleet)
    }

    fn spawn(
        &mut self,
        name: &str,
        program: &std::path::Path,
        args: &[&str],
        env: Vec<(String, String)>,
    ) -> Result<Proc> {
        let count = self.starts.entry(name.to_string()).or_insert(0);
        *count += 1;
        let log_name = format!("{name}.{count}");
        procs::spawn(&log_name, program, args, &env, &self.logs)
    }

    pub async fn start_api(&mut self) -> Result<()> {
        let api = self.spawn("api", &self.bins.api.clone(), &["serve"], self.setup.api_env())?;
        self.api = Some(api);
        let url = format!("{}/health", self.setup.api_base);
        self.api.as_mut().context("api")?.wait_http_ok(&url).await
    }

    pub fn start_worker(&mut self, n: usize) -> Result<()> {
        let name = worker_name(n);
        let env = self.setup.worker_env(&name);
        let worker = self.spawn(&name, &self.bins.worker.clone(), &[], env)?;
        if let Some(slot) = self.workers.get_mut(n) {
            *slot = Some(worker);
        }
        Ok(())
    }

    /// Sends `signal` to worker `n` and waits (up to the stop grace) for it
    /// to exit; its exit status.
    pub async fn signal_worker(&mut self, n: usize, signal: &str) -> Result<String> {
        let proc = self.workers.get_mut(n).and_then(Option::take).context("no such worker running")?;
        end(proc, signal).await
    }

    pub async fn kill_api(&mut self) -> Result<String> {
        let proc = self.api.take().context("the api is not running")?;
        end(proc, "KILL").await
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`) to psp-sim.
    pub async fn pause_psp(&mut self, pause: bool) -> Result<()> {
        let pid = self.psp.as_ref().and_then(Proc::pid).context("psp-sim is not running")?;
        procs::send_signal(pid, if pause { "STOP" } else { "CONT" }).await
    }

    /// Processes that ended without us ending them: each named with its
    /// status and log tail, and started again.
    pub async fn revive_the_fallen(&mut self) -> Vec<String> {
        let mut fallen = Vec::new();
        for n in 0..WORKERS {
            if let Some(Some(proc)) = self.workers.get_mut(n)
                && let Ok(Some(status)) = proc.exited()
            {
                fallen.push(format!("{} exited on its own ({status})\n{}", proc.name(), proc.log_tail()));
                if let Err(e) = self.start_worker(n) {
                    fallen.push(format!("restarting {}: {e:#}", worker_name(n)));
                }
            }
        }
        if let Some(proc) = self.api.as_mut()
            && let Ok(Some(status)) = proc.exited()
        {
            fallen.push(format!("{} exited on its own ({status})\n{}", proc.name(), proc.log_tail()));
            if let Err(e) = self.start_api().await {
                fallen.push(format!("restarting the api: {e:#}"));
            }
        }
        if let Some(proc) = self.psp.as_mut()
            && let Ok(Some(status)) = proc.exited()
        {
            fallen.push(format!("{} exited on its own ({status})\n{}", proc.name(), proc.log_tail()));
        }
        fallen
    }

    /// Every process up again (after the faults end).
    pub async fn ensure_running(&mut self) -> Result<()> {
        self.pause_psp(false).await.ok();
        if self.api.is_none() {
            self.start_api().await?;
        }
        for n in 0..WORKERS {
            if self.workers.get(n).is_some_and(Option::is_none) {
                self.start_worker(n)?;
            }
        }
        Ok(())
    }

    pub async fn stop(mut self) {
        self.pause_psp(false).await.ok();
        let mut all: Vec<Proc> = self.workers.drain(..).flatten().collect();
        all.extend(self.api.take());
        all.extend(self.psp.take());
        procs::stop_all(all).await;
    }
}

pub fn worker_name(n: usize) -> String {
    format!("soak-worker-{}", n + 1)
}

/// Signals a process and waits for it to exit (SIGKILL after the grace).
async fn end(mut proc: Proc, signal: &str) -> Result<String> {
    if let Some(pid) = proc.pid() {
        procs::send_signal(pid, signal).await?;
    }
    let deadline = tokio::time::Instant::now() + procs::STOP_GRACE;
    loop {
        if let Some(status) = proc.exited()? {
            return Ok(status.to_string());
        }
        if tokio::time::Instant::now() >= deadline {
            if let Some(pid) = proc.pid() {
                procs::send_signal(pid, "KILL").await.ok();
            }
            return Ok(format!("still running {} s after SIG{signal}: killed", procs::STOP_GRACE.as_secs()));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
