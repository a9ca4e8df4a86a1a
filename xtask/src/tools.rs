//! Programs the tests start that are not ours and not Debian's: found on
//! the machine, or installed once under `target/tools/` (kept with the
//! build, so a later run finds them).

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::{Layout, Signals, procs};

/// `s3s-fs`, the S3-compatible server of the proof store's tests. 0.14.1 is
/// the newest release that builds with this machine's Rust (1.95).
const S3S_FS: &str = "s3s-fs@0.14.1";

/// The path of `s3s-fs`: `KOBATELA_S3S_FS_BIN`, the PATH, `~/.cargo/bin`,
/// `target/tools/bin`, or installed there with cargo (a few minutes, once).
pub async fn s3s_fs(layout: &Layout, signals: &mut Signals) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("KOBATELA_S3S_FS_BIN") {
        return Ok(PathBuf::from(p));
    }
    let root = layout.target.join("tools");
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.push(root.join("bin"));
    if let Some(found) = dirs.into_iter().map(|d| d.join("s3s-fs")).find(|p| p.is_file()) {
        return Ok(found);
    }
    println!("installing {S3S_FS} under {} (the S3 server of the proof store tests)", root.display());
    let root_arg = root.to_string_lossy().into_owned();
    let args = ["install", S3S_FS, "--features", "binary", "--locked", "--root", root_arg.as_str()];
    let status = procs::cargo(layout, args, &[], signals).await?;
    let bin = root.join("bin/s3s-fs");
    if !status.success() || !bin.is_file() {
        bail!("cargo install {S3S_FS} failed ({status})");
    }
    Ok(bin)
}
