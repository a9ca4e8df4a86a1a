//! A private Redis for fault tests: our own `redis-server` on a free port,
//! no persistence, that a test may restart, stop or flush (never the shared
//! one on 6379, which CI and other suites use). A free port is only free
//! until someone takes it: each start checks that the server answering on
//! the port is our own child (`INFO server`'s `process_id` and `tcp_port`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

pub struct PrivateRedis {
    port: u16,
    dir: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
}

fn find_server() -> anyhow::Result<PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("redis-server")).collect::<Vec<_>>())
        .unwrap_or_default();
    candidates
        .into_iter()
        .chain([PathBuf::from("/usr/bin/redis-server"), PathBuf::from("/usr/local/bin/redis-server")])
        .find(|p| p.is_file())
        .context("redis-server not found (apt-get install redis-server)")
}

impl PrivateRedis {
    /// Starts one under `dir` (its log goes there) on a free port.
    pub async fn start(dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let mut redis = Self { port: 0, dir, bin: find_server()?, child: None };
        // A port taken between our pick and the server's bind: pick again.
        let mut last = None;
        for _ in 0..3 {
            redis.port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            match redis.spawn().await {
                Ok(()) => return Ok(redis),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("private redis-server did not start")))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("redis.log"))?;
        let child = Command::new(&self.bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server")?;
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.ping().await.is_err() {
            if Instant::now() > deadline {
                self.kill().await.ok();
                bail!("private redis-server on port {} did not answer within 10 s", self.port);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if let Err(e) = self.check_identity(pid).await {
            self.kill().await.ok();
            return Err(e);
        }
        Ok(())
    }

    /// The server on our port must be our child: its pid, our port.
    async fn check_identity(&self, pid: Option<u32>) -> anyhow::Result<()> {
        let mut conn = self.connection().await?;
        let info: String = redis::cmd("INFO").arg("server").query_async(&mut conn).await?;
        let field = |name: &str| {
            info.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':'))).map(str::trim)
        };
        let (their_pid, their_port) = (field("process_id"), field("tcp_port"));
        let ours = (pid.map(|p| p.to_string()), self.port.to_string());
        if their_pid != ours.0.as_deref() || their_port != Some(ours.1.as_str()) {
            bail!(
                "the Redis on 127.0.0.1:{} is not ours: process {their_pid:?} on port {their_port:?}, our child is {:?}",
                self.port,
                ours.0
            );
        }
        Ok(())
    }

    async fn connection(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url())?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        Ok(client.get_multiplexed_async_connection_with_config(&config).await?)
    }

    pub async fn ping(&self) -> anyhow::Result<()> {
        let mut conn = self.connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok(())
    }

    /// SIGKILL: every connection breaks, everything held is lost.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Starts it again on the same port after [`kill`](Self::kill).
    pub async fn revive(&mut self) -> anyhow::Result<()> {
        self.spawn().await
    }

    /// Kill and start again at once; returns how long Redis was away.
    pub async fn restart(&mut self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.kill().await?;
        self.spawn().await?;
        Ok(started.elapsed())
    }

    pub async fn flushall(&self) -> anyhow::Result<()> {
        let mut conn = self.connection().await?;
        redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// `INFO memory`'s `used_memory`, in bytes.
    pub async fn used_memory(&self) -> anyhow::Result<u64> {
        let mut conn = self.connection().await?;
        let info: String = redis::cmd("INFO").arg("memory").query_async(&mut conn).await?;
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .context("INFO memory without used_memory")
    }

    /// Runs any command (for assertions on streams: XLEN, XPENDING …).
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> anyhow::Result<T> {
        let mut conn = self.connection().await?;
        Ok(cmd.query_async(&mut conn).await?)
    }
}
