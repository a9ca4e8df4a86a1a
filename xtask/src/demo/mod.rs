//! `cargo xtask demo`: the product end to end, through its HTTP API only.
//!
//! A fresh `kobatela_demo` database, `api migrate`, then `api serve`, two
//! `worker`s and `psp-sim` on free ports with a random queue prefix and
//! random secrets; then the scenes below, one line per step and the receipt
//! of every job. Each step states what it must get back, and the demo stops
//! at the first step that gets something else ("expected … got …").
//!
//! The scenes: a sealed mandate spent at a merchant; an escrow paid on
//! photo proofs (real JPEG files with EXIF GPS, uploaded as multipart, one
//! outside the geofence; payouts through `psp-sim`, settled by its signed
//! webhooks, polled until the escrow is RELEASED); SAKA grains (a second
//! admin made on the host, an admin key requested over HTTP that waits for
//! that second admin, the harvest limit, an adjustment approved by the
//! independent second admin and refused to the one whose power the
//! requester asked for, the daily cap).
//!
//! A scene is a list of [`Step`]s; values a step saves (`alice.id`) fill the
//! `{alice.id}` placeholders of later paths, bodies and expected values.
//! Scenes go in [`scenes::scenes`]; `step` is their vocabulary, `walk`
//! sends them, `check` judges the answers.

mod check;
mod scenes;
mod step;
mod walk;

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use reqwest::Url;

use crate::procs::{self, Binaries, Proc};
use crate::services::{Origin, Services, redact};
use crate::{Layout, Signals};

const DATABASE: &str = "kobatela_demo";

/// Runs the demo; everything it started is stopped before it returns.
pub async fn run(layout: &Layout, services: &Services, signals: &mut Signals) -> Result<()> {
    let binaries = procs::build_binaries(layout, signals).await?;
    let database = crate::services::fresh_database(&services.postgres, DATABASE).await?;
    let logs = layout.logs();
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let setup = Setup::new(&database, services)?;
    println!("database: {} (fresh)", redact(&database));
    println!(
        "api: {}  psp-sim: http://127.0.0.1:{}  queue prefix: {}",
        setup.api_base, setup.psp_port, setup.queue_prefix
    );

    println!("migrating: api migrate");
    procs::run_to_end(
        "api migrate",
        tokio::process::Command::new(&binaries.api).arg("migrate").envs(setup.api_env()),
        &logs.join("api-migrate.log"),
        Duration::from_secs(120),
    )
    .await?;

    let mut fleet: Vec<Proc> = Vec::new();
    let outcome = tokio::select! {
        outcome = start_and_walk(&mut fleet, &binaries, &setup, &logs) => outcome,
        name = signals.recv() => Err(anyhow!("interrupted by {name}")),
    };
    println!("stopping api, workers and psp-sim");
    procs::stop_all(fleet).await;
    println!("logs: {}", logs.display());
    if outcome.is_ok() && !matches!(services.postgres_origin, Origin::Private(_)) {
        println!("the database {DATABASE} is left for a look; the next demo recreates it");
    }
    outcome
}

/// Ports, secrets and environments of one demo run.
struct Setup {
    api_base: String,
    api_port: u16,
    psp_port: u16,
    queue_prefix: String,
    admin_key: String,
    common: Vec<(String, String)>,
    webhook_secret: String,
}

impl Setup {
    fn new(database: &Url, services: &Services) -> Result<Self> {
        let [api_port, psp_port, metrics_port] = procs::free_ports()?;
        let queue_prefix = format!("demo-{}", crate::services::random_text(8).to_lowercase());
        let admin_key = crate::services::random_text(40);
        let webhook_secret = crate::services::random_text(32);
        let common = [
            ("DATABASE_URL", database.to_string()),
            ("REDIS_URL", services.redis.to_string()),
            ("PORT", api_port.to_string()),
            ("METRICS_ADDR", format!("127.0.0.1:{metrics_port}")),
            ("QUEUE_PREFIX", queue_prefix.clone()),
            ("BOOTSTRAP_ADMIN_KEY", admin_key.clone()),
            ("PSP_WEBHOOK_SECRETS", webhook_secret.clone()),
            ("PSP_BASE_URL", format!("http://127.0.0.1:{psp_port}")),
            ("LOG_FORMAT", "json".to_string()),
            ("RELAY_EVERY_SECS", "1".to_string()),
            ("JOB_RELAY_AFTER_SECS", "3".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Ok(Self {
            api_base: format!("http://127.0.0.1:{api_port}"),
            api_port,
            psp_port,
            queue_prefix,
            admin_key,
            common,
            webhook_secret,
        })
    }

    fn api_env(&self) -> Vec<(String, String)> {
        self.common.clone()
    }

    fn worker_env(&self, name: &str) -> Vec<(String, String)> {
        let mut env = self.common.clone();
        env.push(("WORKER_NAME".to_string(), name.to_string()));
        env
    }

    fn psp_sim_env(&self) -> Vec<(String, String)> {
        [
            ("PSP_SIM_PORT", self.psp_port.to_string()),
            ("PSP_SIM_WEBHOOK_URL", format!("http://127.0.0.1:{}/psp/webhook", self.api_port)),
            ("PSP_WEBHOOK_SECRETS", self.webhook_secret.clone()),
            ("LOG_FORMAT", "json".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// Starts api, psp-sim and two workers into `fleet`, waits until they are
/// up, then walks the scenes.
async fn start_and_walk(
    fleet: &mut Vec<Proc>,
    binaries: &Binaries,
    setup: &Setup,
    logs: &std::path::Path,
) -> Result<()> {
    let api = fleet_push(fleet, procs::spawn("api", &binaries.api, &["serve"], &setup.api_env(), logs)?);
    println!("started api (pid {}), waiting for /health", pid_text(api));
    api.wait_http_ok(&format!("{}/health", setup.api_base)).await?;

    let psp = fleet_push(fleet, procs::spawn("psp-sim", &binaries.psp_sim, &[], &setup.psp_sim_env(), logs)?);
    println!("started psp-sim (pid {}), waiting for /health", pid_text(psp));
    psp.wait_http_ok(&format!("http://127.0.0.1:{}/health", setup.psp_port)).await?;

    for n in 1..=2 {
        let name = format!("demo-worker-{n}");
        let worker = fleet_push(fleet, procs::spawn(&name, &binaries.worker, &[], &setup.worker_env(&name), logs)?);
        println!("started {name} (pid {})", pid_text(worker));
    }

    let api = fleet.first_mut().context("the api process is gone")?;
    println!("waiting for the api's /ready");
    api.wait_http_ok(&format!("{}/ready", setup.api_base)).await?;
    for proc in fleet.iter_mut() {
        if let Some(status) = proc.exited()? {
            bail!("{} exited ({status})\n{}", proc.name(), proc.log_tail());
        }
    }

    let mut walk = walk::Walk::new(setup, &binaries.api)?;
    for scene in scenes::scenes() {
        println!("\n== {}", scene.title);
        for step in &scene.steps {
            if let Err(e) = walk.step(step).await {
                // A step that fails because a process died says so.
                let exited = procs::report_exited(fleet);
                bail!("{e:#}{exited}");
            }
        }
    }
    println!("\nthe demo went as expected");
    Ok(())
}

fn fleet_push(fleet: &mut Vec<Proc>, proc: Proc) -> &mut Proc {
    fleet.push(proc);
    let last = fleet.len() - 1;
    &mut fleet[last]
}

fn pid_text(proc: &Proc) -> String {
    proc.pid().map(|p| p.to_string()).unwrap_or_else(|| "?".to_string())
}
