//! `cargo xtask test`: every test of the workspace against real services.
//!
//! Builds the binaries, then runs `cargo test --workspace --no-fail-fast`
//! (plus the arguments given after `--`; `-p NAME` there replaces
//! `--workspace`) with the environment the test tiers read:
//! - `DATABASE_URL`, `KOBATELA_TEST_DATABASE_URL`: the Postgres server's
//!   maintenance URL; `#[sqlx::test]` and the end-to-end harness create
//!   fresh databases on it.
//! - `REDIS_URL`.
//! - `KOBATELA_API_BIN`, `KOBATELA_WORKER_BIN`, `KOBATELA_PSP_SIM_BIN`:
//!   absolute paths of the binaries the end-to-end suites start.

use std::process::ExitCode;

use anyhow::Result;

use crate::procs::{self, Binaries};
use crate::services::{Services, redact};
use crate::{Layout, Signals};

/// Runs the tests; the exit code is cargo test's.
pub async fn run(layout: &Layout, services: &Services, signals: &mut Signals, extra: Vec<String>) -> Result<ExitCode> {
    let binaries = procs::build_binaries(layout, signals).await?;
    let envs = test_env(services, &binaries);
    let mut args: Vec<String> = vec!["test".into()];
    // `--workspace` would override a package chosen with `-p`.
    let picks_package =
        extra.iter().take_while(|a| *a != "--").any(|a| a.starts_with("-p") || a.starts_with("--package"));
    if !picks_package {
        args.push("--workspace".into());
    }
    args.push("--no-fail-fast".into());
    args.extend(extra);
    println!("running: cargo {}", args.join(" "));
    for (name, value) in &envs {
        // URLs are printed with their password hidden.
        let shown = reqwest::Url::parse(value).map(|url| redact(&url)).unwrap_or_else(|_| value.clone());
        println!("  {name}={shown}");
    }
    let status = procs::cargo(layout, &args, &envs, signals).await?;
    let code = status.code().unwrap_or(1);
    println!("cargo test exited with code {code}\n{}", services.describe());
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// The variables the tests read.
fn test_env(services: &Services, binaries: &Binaries) -> Vec<(String, String)> {
    let database = services.postgres.to_string();
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    [
        ("DATABASE_URL", database.clone()),
        ("KOBATELA_TEST_DATABASE_URL", database),
        ("REDIS_URL", services.redis.to_string()),
        ("KOBATELA_API_BIN", path(&binaries.api)),
        ("KOBATELA_WORKER_BIN", path(&binaries.worker)),
        ("KOBATELA_PSP_SIM_BIN", path(&binaries.psp_sim)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}
