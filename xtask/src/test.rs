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
//!   absolute paths of the binaries the end-to-end suites start;
//!   `KOBATELA_S3S_FS_BIN`, the S3 server of the proof store's tests
//!   (installed under `target/tools/` when the machine has none).
//!
//! Then, on a full run (or with `KOBATELA_SOAK_MINUTES` set), a 3-minute
//! chaos soak (`soak`), whose failure fails the run.

use std::process::ExitCode;

use anyhow::Result;

use crate::procs::{self, Binaries};
use crate::services::{Services, redact};
use crate::{Layout, Signals};

/// Runs the tests; the exit code is cargo test's.
pub async fn run(layout: &Layout, services: &Services, signals: &mut Signals, extra: Vec<String>) -> Result<ExitCode> {
    let binaries = procs::build_binaries(layout, signals).await?;
    let mut envs = test_env(services, &binaries);
    let s3s_fs = crate::tools::s3s_fs(layout, signals).await?;
    envs.push(("KOBATELA_S3S_FS_BIN".into(), s3s_fs.to_string_lossy().into_owned()));
    if std::env::var("KOBATELA_CHECKS").as_deref() == Ok("contract") {
        let ok = contract_test(layout, services, &binaries).await;
        return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    if std::env::var("KOBATELA_CHECKS").as_deref() == Ok("ops") {
        // Only the checks that follow cargo test (see `ops_checks`).
        let ok = ops_checks(layout, &envs, signals).await;
        return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    let full_run = extra.is_empty();
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
    let mut tally = Tally::default();
    let status = procs::cargo_lines(layout, &args, &envs, signals, |line| tally.read(line)).await?;
    let code = status.code().unwrap_or(1);
    println!("cargo test exited with code {code}\n{}", services.describe());
    // A full run (no arguments after `--`) also checks the ops files, the
    // console in a browser and the contract.
    let checks_ok =
        !full_run || (ops_checks(layout, &envs, signals).await & contract_test(layout, services, &binaries).await);
    if !checks_ok {
        println!("a check after cargo test failed (see above)");
    }
    let soaked = soak_after_tests(layout, signals, full_run).await?;
    // The last line: every test binary's results added up (doc tests, which
    // we have none of, close cargo's own output with "0 passed").
    println!("{} passed, {} failed, {} skipped", tally.passed, tally.failed, tally.ignored);
    if (!checks_ok || !soaked) && code == 0 {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// The chaos soak after the tests and checks (`soak`), on private services
/// of its own: on a full run, or when `KOBATELA_SOAK_MINUTES` is set
/// (default 3 minutes, 0 skips it; `KOBATELA_SOAK_SEED` fixes the seed).
/// False when it failed.
async fn soak_after_tests(layout: &Layout, signals: &mut Signals, full_run: bool) -> Result<bool> {
    if !full_run && std::env::var_os("KOBATELA_SOAK_MINUTES").is_none() {
        return Ok(true);
    }
    println!("\nchaos soak (KOBATELA_SOAK_MINUTES=0 skips it)");
    let passed = crate::soak::ci(layout, signals).await?;
    println!("chaos soak: {}", if passed { "passed" } else { "FAILED" });
    Ok(passed)
}

/// The checks after cargo test (`KOBATELA_CHECKS=ops cargo xtask test` runs
/// only these): the Prometheus rules. True when none failed (a check that
/// cannot run here is skipped with a banner).
async fn ops_checks(layout: &Layout, envs: &[(String, String)], signals: &mut Signals) -> bool {
    let mut ok = true;
    match crate::ops_checks::prometheus_rules(layout).await {
        Ok(crate::ops_checks::Verdict::Passed) => println!("prometheus rules: passed"),
        Ok(crate::ops_checks::Verdict::Skipped(why)) => {
            crate::ops_checks::loud(&format!("SKIPPED prometheus rules: {why}"))
        }
        Err(e) => {
            println!("prometheus rules: FAILED: {e:#}");
            ok = false;
        }
    }
    ok &= console_test(layout, envs, signals).await;
    ok
}

/// schemathesis against the live api (`contract.rs`). True when it passed
/// or truly could not run (then a banner says so).
async fn contract_test(layout: &Layout, services: &Services, binaries: &Binaries) -> bool {
    match crate::contract::run(layout, services, binaries).await {
        Ok(crate::ops_checks::Verdict::Passed) => {
            println!("contract test (schemathesis): passed, no server error, every response as documented");
            true
        }
        Ok(crate::ops_checks::Verdict::Skipped(why)) => {
            crate::ops_checks::loud(&format!("SKIPPED the contract test: {why}"));
            true
        }
        Err(e) => {
            println!("contract test (schemathesis): FAILED: {e:#}");
            false
        }
    }
}

/// The ops console in headless Chromium (`tests/tests/console.rs`, ignored
/// by plain cargo test): Chromium and playwright-core are installed when
/// missing; skipped, loudly, only where they cannot be.
async fn console_test(layout: &Layout, envs: &[(String, String)], signals: &mut Signals) -> bool {
    let extra = match crate::ops_checks::console_env(layout).await {
        Ok(extra) => extra,
        Err(why) => {
            crate::ops_checks::loud(&format!("SKIPPED the ops console browser test: {why}"));
            return true;
        }
    };
    let mut all: Vec<(String, String)> = envs.to_vec();
    all.extend(extra);
    let args = ["test", "-p", "kobatela-e2e", "--test", "console", "--", "--ignored", "--nocapture"];
    println!("running: cargo {}", args.join(" "));
    match procs::cargo_lines(layout, args, &all, signals, |_| {}).await {
        Ok(status) if status.success() => {
            println!("ops console browser test: passed (screenshots in target/console-screenshots/)");
            true
        }
        Ok(status) => {
            println!("ops console browser test: FAILED ({status})");
            false
        }
        Err(e) => {
            println!("ops console browser test: FAILED: {e:#}");
            false
        }
    }
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

/// Adds up cargo test's `test result:` lines.
#[derive(Debug, Default, PartialEq)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Tally {
    fn read(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else { return };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else { continue };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn tally_adds_up_every_test_result_line() {
        let mut t = Tally::default();
        t.read("test result: ok. 13 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 11.47s");
        t.read("test result: FAILED. 6 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 4.24s");
        t.read("running 3 tests");
        assert_eq!(t, Tally { passed: 19, failed: 1, ignored: 2 });
    }
}
