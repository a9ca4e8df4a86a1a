//! The Redis transport: one apalis-redis queue per job kind, named
//! `{prefix}.{kind}` (apalis-redis' pub/sub wake-up parses channel names on
//! `:`, so a queue name must not contain one). A message carries only the job id; the job itself is
//! the Postgres row, so losing a message loses nothing (the relay re-pushes).

use apalis::prelude::TaskSink;
use apalis_redis::{Config as RedisConfig, ConnectionManager, RedisStorage};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::JobId;
use crate::jobs::JobKind;

/// Version 1 of the message: the job id. The kind is the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMsg {
    pub v: u8,
    pub job_id: JobId,
}

#[derive(Clone)]
pub struct Queue {
    conn: ConnectionManager,
    prefix: String,
}

impl Queue {
    pub async fn connect(url: &str, prefix: &str) -> Result<Self> {
        let conn = apalis_redis::connect(url).await.map_err(|e| Error::Queue(e.to_string()))?;
        Ok(Self { conn, prefix: prefix.replace(':', ".") })
    }

    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    pub fn queue_name(&self, kind: JobKind) -> String {
        format!("{}.{}", self.prefix, kind.as_str())
    }

    /// The apalis-redis configuration of one kind's queue, the same for the
    /// pushing side and the workers.
    pub fn redis_config(&self, kind: JobKind) -> RedisConfig {
        RedisConfig::default()
            .queue(self.queue_name(kind))
            // Our relay recovers a dead worker's jobs promptly; apalis' own
            // orphan recovery stays as a second net.
            .heartbeat_interval(std::time::Duration::from_secs(10))
            .missed_heartbeats(3)
            .persist_results(false)
            .emit_events(false)
    }

    /// The apalis storage of one kind, for pushing.
    pub fn storage(&self, kind: JobKind) -> RedisStorage<JobMsg> {
        RedisStorage::new(self.conn.clone()).with_config(self.redis_config(kind))
    }

    /// The channel a push announces itself on. apalis-redis 1.0 files every
    /// push under its scheduled set (run at "now"), so its own pub/sub event
    /// never fires; idle workers listen here instead and fetch at once.
    pub fn wake_channel(queue_name: &str) -> String {
        format!("kobatela-wake:{queue_name}")
    }

    pub async fn push(&self, kind: JobKind, job_id: JobId) -> Result<()> {
        self.push_many(kind, &[job_id]).await
    }

    /// Pushes several jobs of one kind in one batch, then one wake-up.
    pub async fn push_many(&self, kind: JobKind, ids: &[JobId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut storage = self.storage(kind);
        let msgs = ids.iter().map(|id| JobMsg { v: 1, job_id: *id }).collect();
        storage.push_bulk(msgs).await.map_err(|e| Error::Queue(e.to_string()))?;
        let mut conn = self.conn.clone();
        redis::cmd("PUBLISH")
            .arg(Self::wake_channel(&self.queue_name(kind)))
            .arg(1)
            .query_async::<i64>(&mut conn)
            .await
            .map_err(|e| Error::Queue(e.to_string()))?;
        Ok(())
    }

    /// Messages waiting in a kind's queue (active list and due-later set).
    pub async fn depth(&self, kind: JobKind) -> Result<i64> {
        let storage = self.storage(kind);
        let config = storage.get_config();
        let mut conn = self.conn.clone();
        let (active, scheduled): (i64, i64) = redis::pipe()
            .cmd("LLEN")
            .arg(config.active_jobs_list())
            .cmd("ZCARD")
            .arg(config.scheduled_jobs_set())
            .query_async(&mut conn)
            .await
            .map_err(|e| Error::Queue(e.to_string()))?;
        Ok(active + scheduled)
    }

    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<String>(&mut conn).await.map_err(|e| Error::Queue(e.to_string()))?;
        Ok(())
    }
}
