//! Private Postgres and Redis that a command owns and breaks on purpose
//! (the chaos soak): always started here, never the shared ones, under
//! `target/kobatela-services/<tag>-<pid>/`; restarted in place (same data
//! directory, same port), flushed, and stopped at the end.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use reqwest::Url;
use tokio::time::Instant;

use crate::Layout;
use crate::procs::{self, Proc};

use super::private::{
    PostgresBins, PrivatePostgres, RunDir, command_as, find_redis_server, start_postgres, start_redis,
};

pub struct Owned {
    /// The Postgres server's maintenance URL (database `postgres`).
    pub postgres: Url,
    pub redis: Url,
    pg: Option<PrivatePostgres>,
    redis_bin: PathBuf,
    dir: PathBuf,
    redis_port: u16,
    redis_proc: Option<Proc>,
}

impl Owned {
    /// Starts a private Postgres and Redis for this command alone.
    pub async fn start(layout: &Layout, tag: &str) -> Result<Self> {
        let bins = PostgresBins::find()?;
        let redis_bin = find_redis_server()?;
        let dir = RunDir::create_named(layout, &format!("{tag}-{}", std::process::id()), true).await?;
        let (postgres, pg) = start_postgres(&bins, &dir).await?;
        let (redis, proc) = match start_redis(&redis_bin, &dir.path).await {
            Ok(started) => started,
            Err(e) => {
                pg.stop().await.ok();
                return Err(e);
            }
        };
        let redis_port = redis.port().context("the private Redis URL has no port")?;
        Ok(Self { postgres, redis, pg: Some(pg), redis_bin, dir: dir.path, redis_port, redis_proc: Some(proc) })
    }

    /// `pg_ctl restart -m fast`: every session is cut, the server comes back
    /// on the same port with the same data. The time it took.
    pub async fn restart_postgres(&self) -> Result<Duration> {
        let pg = self.pg.as_ref().context("the private Postgres is stopped")?;
        let started = Instant::now();
        procs::run_to_end(
            "pg_ctl restart",
            command_as(pg.run_as.as_deref(), &pg.pg_ctl)
                .arg("-D")
                .arg(&pg.data)
                .arg("-l")
                .arg(pg.pgdir.join("postgres.log"))
                .args(["restart", "-m", "fast", "-w", "-t", "60"])
                .current_dir(&pg.pgdir),
            &pg.pgdir.join("pg_ctl-restart.log"),
            Duration::from_secs(90),
        )
        .await?;
        Ok(started.elapsed())
    }

    /// Stops redis-server (SIGKILL: no goodbye to its clients).
    pub async fn kill_redis(&mut self) -> Result<()> {
        let Some(mut proc) = self.redis_proc.take() else { return Ok(()) };
        if let Some(pid) = proc.pid() {
            procs::send_signal(pid, "KILL").await?;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while proc.exited()?.is_none() {
            if Instant::now() >= deadline {
                bail!("redis-server did not exit after SIGKILL");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Starts redis-server again on its port (empty: it keeps nothing).
    pub async fn start_redis_again(&mut self) -> Result<()> {
        if self.redis_proc.is_some() {
            return Ok(());
        }
        let (_, proc) = super::private::start_redis_on(&self.redis_bin, &self.dir, self.redis_port).await?;
        self.redis_proc = Some(proc);
        Ok(())
    }

    /// `FLUSHALL` on the private Redis (never on a shared one: this struct
    /// only ever holds the instance it started).
    pub async fn flushall(&self) -> Result<()> {
        let client = redis::Client::open(self.redis.as_str()).context("the private Redis URL")?;
        let mut conn = tokio::time::timeout(Duration::from_secs(5), client.get_multiplexed_async_connection())
            .await
            .context("connecting to the private Redis timed out")?
            .context("connecting to the private Redis")?;
        let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.context("FLUSHALL")?;
        Ok(())
    }

    /// Stops both and removes the data; the logs stay for a look.
    pub async fn stop(mut self) {
        if let Some(proc) = self.redis_proc.take() {
            procs::stop_all(vec![proc]).await;
        }
        if let Some(pg) = self.pg.take()
            && let Err(e) = pg.stop().await
        {
            eprintln!("xtask: stopping the soak's Postgres: {e:#}");
        }
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}
