//! The checks `cargo xtask test` runs after `cargo test` on a full run:
//! the Prometheus rules under `ops/prometheus/` (`promtool check rules` and
//! `promtool test rules`). promtool comes from Debian's `prometheus`
//! package; when it is missing it is installed (as root, with apt-get;
//! the package's service is never started here), and only where that
//! cannot be done is the check skipped, loudly.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::process::Command;

use crate::Layout;
use crate::procs;

/// What a check came to.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Passed,
    /// It could not run here; the reason, printed loudly.
    Skipped(String),
}

/// Prints a banner no one scrolls past.
pub fn loud(text: &str) {
    let bar = "!".repeat(78);
    println!("\n{bar}\n!! {}\n{bar}\n", text.replace('\n', "\n!! "));
}

/// `program` on the PATH, if any.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
}

async fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().await;
    out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Installs Debian packages with apt-get when we are root and have it;
/// `Err` with the reason otherwise (or when the install fails).
pub async fn apt_install(layout: &Layout, packages: &[&str]) -> Result<()> {
    if which("apt-get").is_none() {
        bail!("no apt-get on this machine; install {} by hand", packages.join(" "));
    }
    if !is_root().await {
        bail!("not root; run `sudo apt-get install -y {}`", packages.join(" "));
    }
    println!("installing {} with apt-get (services are not started)", packages.join(" "));
    let log = layout.target.join("kobatela-logs").join("apt-get.log");
    std::fs::create_dir_all(log.parent().unwrap_or(Path::new(".")))?;
    let mut cmd = Command::new("apt-get");
    cmd.args(["install", "-y", "--no-install-recommends"]).args(packages).env("DEBIAN_FRONTEND", "noninteractive");
    procs::run_to_end("apt-get install", &mut cmd, &log, Duration::from_secs(600)).await
}

/// `promtool check rules` and `promtool test rules` over `ops/prometheus`.
pub async fn prometheus_rules(layout: &Layout) -> Result<Verdict> {
    let promtool = match which("promtool") {
        Some(p) => p,
        None => match apt_install(layout, &["prometheus"]).await {
            Ok(()) => match which("promtool") {
                Some(p) => p,
                None => return Ok(Verdict::Skipped("the prometheus package installed no promtool".into())),
            },
            Err(e) => return Ok(Verdict::Skipped(format!("promtool is missing and cannot be installed: {e:#}"))),
        },
    };
    let dir = layout.root.join("ops/prometheus");
    let log = layout.target.join("kobatela-logs").join("promtool.log");
    std::fs::create_dir_all(log.parent().unwrap_or(Path::new(".")))?;
    for args in [["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]] {
        let mut cmd = Command::new(&promtool);
        cmd.args(args).current_dir(&dir);
        procs::run_to_end(&format!("promtool {}", args.join(" ")), &mut cmd, &log, Duration::from_secs(60)).await?;
        println!("promtool {}: ok", args.join(" "));
    }
    Ok(Verdict::Passed)
}

/// Where `npm` installs playwright-core (no browser download: the
/// system's Chromium drives the test).
fn playwright_dir(layout: &Layout) -> PathBuf {
    layout.target.join("console-test")
}

/// Chromium, installed with apt-get when missing (as root).
async fn chromium(layout: &Layout) -> Result<PathBuf, String> {
    for name in ["chromium", "chromium-browser"] {
        if let Some(p) = which(name) {
            return Ok(p);
        }
    }
    apt_install(layout, &["chromium"])
        .await
        .map_err(|e| format!("Chromium is missing and cannot be installed: {e:#}"))?;
    which("chromium").ok_or_else(|| "the chromium package installed no `chromium`".to_string())
}

/// playwright-core under `target/console-test/`, installed with npm when missing.
async fn playwright_core(layout: &Layout) -> Result<PathBuf, String> {
    let dir = playwright_dir(layout);
    let module = dir.join("node_modules/playwright-core");
    if module.join("package.json").is_file() {
        return Ok(module);
    }
    if which("node").is_none() || which("npm").is_none() {
        apt_install(layout, &["nodejs", "npm"])
            .await
            .map_err(|e| format!("Node.js is missing and cannot be installed: {e:#}"))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    println!("installing playwright-core into {} (no browser download)", dir.display());
    let log = layout.target.join("kobatela-logs").join("npm-install.log");
    let mut cmd = Command::new("npm");
    cmd.args(["install", "--no-audit", "--no-fund", "--no-save", "--prefix"])
        .arg(&dir)
        .arg("playwright-core@1")
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1");
    procs::run_to_end("npm install playwright-core", &mut cmd, &log, Duration::from_secs(300))
        .await
        .map_err(|e| format!("npm cannot install playwright-core: {e:#}"))?;
    Ok(module)
}

/// The variables the console test needs (`KOBATELA_CHROMIUM`,
/// `KOBATELA_PLAYWRIGHT_CORE`), or why it cannot run here.
pub async fn console_env(layout: &Layout) -> Result<Vec<(String, String)>, String> {
    let chromium = chromium(layout).await?;
    let playwright = playwright_core(layout).await?;
    Ok(vec![
        ("KOBATELA_CHROMIUM".into(), chromium.to_string_lossy().into_owned()),
        ("KOBATELA_PLAYWRIGHT_CORE".into(), playwright.to_string_lossy().into_owned()),
    ])
}
