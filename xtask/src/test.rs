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
//!
//! Then a 3-minute chaos soak (`soak`), whose failure fails the run.

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
    let mut tally = Tally::default();
    let status = procs::cargo_lines(layout, &args, &envs, signals, |line| tally.read(line)).await?;
    let code = status.code().unwrap_or(1);
    println!("cargo test exited with code {code}\n{}", services.describe());
    // The last line: every test binary's results added up (doc tests, which
    // we have none of, close cargo's own output with "0 passed").
    println!("{} passed, {} failed, {} skipped", tally.passed, tally.failed, tally.ignored);
    let soaked = soak_after_tests(layout, signals).await?;
    let code = if code == 0 && !soaked { 1 } else { code };
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// The chaos soak after the tests (`KOBATELA_SOAK_MINUTES`, default 3, 0
/// skips it; `KOBATELA_SOAK_SEED`), on private services of its own. False
/// when it failed.
async fn soak_after_tests(layout: &Layout, signals: &mut Signals) -> Result<bool> {
    println!("\nchaos soak (KOBATELA_SOAK_MINUTES=0 skips it)");
    let passed = crate::soak::ci(layout, signals).await?;
    println!("chaos soak: {}", if passed { "passed" } else { "FAILED" });
    Ok(passed)
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
