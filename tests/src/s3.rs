//! A private S3-compatible server for the proof store's tests: `s3s-fs`
//! (crates.io, `cargo install s3s-fs --features binary`, installed by
//! `cargo xtask test` when missing) on a free port, keeping its objects as
//! files under a directory of the test's own, so a restart keeps them (a
//! fair fault) and the test can look at what is stored. It may be killed,
//! restarted, paused (SIGSTOP: it accepts connections and answers nothing)
//! and resumed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::owned::pid_listens_on;

pub const ACCESS_KEY: &str = "kobatela-test-access";
pub const SECRET_KEY: &str = "kobatela-test-secret-0123456789";
pub const BUCKET: &str = "proofs";

pub struct PrivateS3 {
    port: u16,
    dir: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
}

/// `s3s-fs` from `KOBATELA_S3S_FS_BIN`, the PATH or `~/.cargo/bin`.
pub fn find_s3s_fs() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("KOBATELA_S3S_FS_BIN") {
        return Ok(PathBuf::from(p));
    }
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file())
        .context("s3s-fs not found: cargo install s3s-fs@0.14.1 --features binary --locked (cargo xtask test does it)")
}

impl PrivateS3 {
    /// Starts one under `dir` on a free port, with an empty bucket `proofs`.
    pub async fn start(dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir.join("data").join(BUCKET))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut s3 = Self { port, dir, bin: find_s3s_fs()?, child: None };
        s3.spawn().await?;
        Ok(s3)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The variables that point a process at this server, objects under
    /// `s3://proofs/<prefix>`.
    pub fn vars(&self, prefix: &str) -> Vec<(String, String)> {
        [
            ("STORAGE_URL", format!("s3://{BUCKET}/{prefix}")),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The bucket's directory: one file per object, by key.
    pub fn bucket_dir(&self) -> PathBuf {
        self.dir.join("data").join(BUCKET)
    }

    /// Every object file in the bucket, as paths relative to it.
    pub fn objects(&self) -> Vec<String> {
        let root = self.bucket_dir();
        let mut out = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if let Ok(rel) = path.strip_prefix(&root) {
                    // s3s-fs keeps its own metadata beside the objects.
                    let rel = rel.to_string_lossy().into_owned();
                    if !rel.split('/').any(|part| part.starts_with(".")) {
                        out.push(rel);
                    }
                }
            }
        }
        out.sort();
        out
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("s3s-fs.log"))?;
        let child = Command::new(&self.bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.dir.join("data"))
            .env("RUST_LOG", "s3s_fs=info,s3s=warn")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let pid = child.id().context("s3s-fs has no pid")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        // Ours answering on our port, not whoever took it first.
        while !pid_listens_on(pid, self.port) {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("s3s-fs exited ({status}); see {}", self.dir.join("s3s-fs.log").display());
            }
            if Instant::now() > deadline {
                bail!("s3s-fs did not listen on port {} within 15 s", self.port);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// SIGKILL: connections are refused until [`start_again`](Self::start_again).
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Starts it again on the same port and directory: the objects are back.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        self.spawn().await
    }

    /// SIGSTOP: connections are accepted and nothing is answered.
    pub async fn pause(&self) -> anyhow::Result<()> {
        signal(self.pid(), "-STOP").await
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub async fn resume(&self) -> anyhow::Result<()> {
        signal(self.pid(), "-CONT").await
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

async fn signal(pid: Option<u32>, sig: &str) -> anyhow::Result<()> {
    let pid = pid.context("s3s-fs is not running")?;
    let status = Command::new("kill").arg(sig).arg(pid.to_string()).status().await?;
    anyhow::ensure!(status.success(), "kill {sig} {pid} failed");
    Ok(())
}
