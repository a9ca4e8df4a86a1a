//! `cargo xtask soak --minutes N [--seed S]`: a chaos soak.
//!
//! On a private Postgres and Redis started for it alone (never the shared
//! ones: it restarts and flushes them), it runs `api`, `psp-sim` and three
//! `worker`s with short relay and lease settings, drives a random mixed
//! workload through the HTTP API ([`actor`], [`escrow`]) and meanwhile
//! injects faults on a seeded schedule ([`faults`]). Then it lets the
//! faults stop, waits for every job to end and every webhook to land, runs
//! the invariants and the PSP reconciliation and prints a table
//! ([`report`], saved to `target/soak/results.md`). It fails on any
//! invariant violation, stuck job, or 5xx other than a 503 `UNAVAILABLE`
//! while Postgres or Redis was down, printing the seed and the rows.
//!
//! `cargo xtask test` runs a short one after the tests ([`ci`]).

mod actor;
mod escrow;
mod faults;
mod finish;
mod fleet;
mod http;
mod race;
mod report;
mod rng;
mod webhook;
mod world;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::time::Instant;

use crate::procs::{self, Binaries};
use crate::services::Owned;
use crate::{Layout, Signals};

/// Actors sending requests at once.
const ACTORS: usize = 6;
const DATABASE: &str = "kobatela_soak";

pub struct Options {
    pub minutes: u64,
    pub seed: u64,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut minutes = None;
        let mut seed = None;
        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            let mut value = |name: &str| -> Result<u64> {
                let v = rest.next().with_context(|| format!("{name} needs a value"))?;
                v.parse().map_err(|_| anyhow!("{name}: `{v}` is not a whole number"))
            };
            match arg.as_str() {
                "--minutes" => minutes = Some(value("--minutes")?),
                "--seed" => seed = Some(value("--seed")?),
                other => bail!("`soak` does not take `{other}`"),
            }
        }
        let minutes = minutes.context("`soak` needs --minutes N")?;
        if minutes == 0 {
            bail!("--minutes must be at least 1");
        }
        Ok(Self { minutes, seed: seed.unwrap_or_else(random_seed) })
    }
}

fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    (nanos as u64) % 1_000_000
}

/// The soak `cargo xtask test` runs after the tests: 3 minutes unless
/// `KOBATELA_SOAK_MINUTES` says otherwise (0 skips it), seed from
/// `KOBATELA_SOAK_SEED` or random. True when it passed (or was skipped).
pub async fn ci(layout: &Layout, signals: &mut Signals) -> Result<bool> {
    let minutes = match std::env::var("KOBATELA_SOAK_MINUTES") {
        Ok(v) => v.trim().parse().map_err(|_| anyhow!("KOBATELA_SOAK_MINUTES: `{v}` is not a whole number"))?,
        Err(_) => 3,
    };
    if minutes == 0 {
        println!("soak skipped (KOBATELA_SOAK_MINUTES=0)");
        return Ok(true);
    }
    let seed = match std::env::var("KOBATELA_SOAK_SEED") {
        Ok(v) => v.trim().parse().map_err(|_| anyhow!("KOBATELA_SOAK_SEED: `{v}` is not a whole number"))?,
        Err(_) => random_seed(),
    };
    let code = run(layout, signals, Options { minutes, seed }).await?;
    Ok(code == ExitCode::SUCCESS)
}

/// Runs a soak; everything it started is stopped before it returns.
pub async fn run(layout: &Layout, signals: &mut Signals, options: Options) -> Result<ExitCode> {
    println!("soak: {} min, seed {}", options.minutes, options.seed);
    let binaries = procs::build_binaries(layout, signals).await?;
    let dir = layout.target.join("soak");
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let mut owned = Owned::start(layout, "soak").await?;
    println!("soak: private Postgres {} and Redis {} under {}", owned.postgres, owned.redis, owned.dir().display());
    let outcome = tokio::select! {
        outcome = soak(&mut owned, binaries, &dir, &options) => outcome,
        name = signals.recv() => Err(anyhow!("interrupted by {name}")),
    };
    owned.stop().await;
    println!("soak: logs in {}", logs.display());
    outcome
}

async fn soak(owned: &mut Owned, binaries: Binaries, dir: &std::path::Path, options: &Options) -> Result<ExitCode> {
    let database = crate::services::fresh_database(&owned.postgres, DATABASE).await?;
    let storage = dir.join("proofs");
    std::fs::remove_dir_all(&storage).ok();
    let setup = fleet::Setup::new(&database, &owned.redis, &storage)?;
    procs::run_to_end(
        "api migrate",
        tokio::process::Command::new(&binaries.api).arg("migrate").envs(setup.api_env()),
        &dir.join("logs").join("api-migrate.log"),
        Duration::from_secs(120),
    )
    .await?;
    let api = binaries.api.clone();
    let mut fleet = fleet::Fleet::start(binaries, setup, dir.join("logs")).await?;
    // The second admin (for approvals) is made on the host, as an operator
    // does (over the API admin power waits for a second admin's approval);
    // after the api started, which installs BOOTSTRAP_ADMIN_KEY only while
    // no admin key exists.
    let admin2 = procs::host_admin(&api, &fleet.setup.api_env(), &format!("s{}-root2", options.seed)).await;
    let result = match admin2 {
        Ok(admin2) => drive(&mut fleet, owned, &database, dir, options, &admin2.key).await,
        Err(e) => Err(e),
    };
    println!("soak: stopping api, workers and psp-sim");
    fleet.stop().await;
    result
}

async fn drive(
    fleet: &mut fleet::Fleet,
    owned: &mut Owned,
    database: &reqwest::Url,
    dir: &std::path::Path,
    options: &Options,
    admin2: &str,
) -> Result<ExitCode> {
    let shared = Arc::new(http::Shared::default());
    let setup = &fleet.setup;
    let http =
        http::Http::new(setup.api_base.clone(), setup.psp_base.clone(), setup.webhook_secret.clone(), shared.clone())?;
    let admin = setup.admin_key.clone();
    let world = Arc::new(world::World::build(&http, &admin, admin2, ACTORS, &format!("s{}", options.seed)).await?);
    let length = Duration::from_secs(options.minutes * 60);
    let plan = faults::schedule(options.seed, length);
    println!("soak: {} faults planned; workload of {ACTORS} actors for {} min", plan.len(), options.minutes);
    let started = Instant::now();
    let actors: Vec<_> = (0..ACTORS)
        .map(|n| tokio::spawn(actor::Actor::new(n, http.clone(), world.clone(), options.seed).run()))
        .collect();
    let injected = faults::inject(&plan, started, fleet, owned, &http, options.seed).await;
    while started.elapsed() < length {
        for text in fleet.revive_the_fallen().await {
            shared.finding(text);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    shared.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    println!(
        "soak: workload stopped after {:.0} s; waiting for the actors' last requests",
        started.elapsed().as_secs_f64()
    );
    for actor in actors {
        if tokio::time::timeout(Duration::from_secs(120), actor).await.is_err() {
            shared.finding("an actor did not finish its last request within 120 s".into());
        }
    }
    for text in fleet.revive_the_fallen().await {
        shared.finding(text);
    }
    fleet.ensure_running().await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(database.as_str())
        .await
        .context("connecting to the soak database")?;
    println!("soak: draining (up to {} s)", finish::DRAIN_LIMIT.as_secs());
    let drained = finish::drain(&pool, &http).await;
    let outcome = finish::check(&pool, &http, &admin, drained).await?;
    pool.close().await;
    let tally = shared.tally();
    let run = report::Run {
        seed: options.seed,
        minutes: options.minutes,
        actors: ACTORS,
        tally: &tally,
        faults: &injected,
        outcome: &outcome,
    };
    let table = run.table();
    println!("\n{table}");
    let path = dir.join("results.md");
    std::fs::write(&path, &table).with_context(|| format!("writing {}", path.display()))?;
    println!("soak: table saved to {}", path.display());
    let failures = run.failures();
    if failures.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("{}", run.details());
    eprintln!(
        "soak FAILED (seed {}; again with: cargo xtask soak --minutes {} --seed {})",
        options.seed, options.minutes, options.seed
    );
    Ok(ExitCode::FAILURE)
}

#[cfg(test)]
mod tests {
    use super::Options;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_take_minutes_and_an_optional_seed_and_refuse_the_rest() {
        let o = Options::parse(&args(&["--minutes", "3", "--seed", "42"])).expect("valid");
        assert_eq!((o.minutes, o.seed), (3, 42));
        assert!(Options::parse(&args(&["--minutes", "30"])).is_ok());
        assert!(Options::parse(&args(&[])).is_err(), "minutes are required");
        assert!(Options::parse(&args(&["--minutes", "0"])).is_err());
        assert!(Options::parse(&args(&["--minutes", "three"])).is_err());
        assert!(Options::parse(&args(&["--minutes", "3", "--fast"])).is_err());
    }
}
