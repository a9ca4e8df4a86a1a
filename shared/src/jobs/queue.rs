//! The Redis transport: one apalis-redis queue per job kind, named
//! `{prefix}:{kind}`. A message carries only the job id; the job itself is
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
        Ok(Self { conn, prefix: prefix.to_string() })
    }

    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    pub fn queue_name(&self, kind: JobKind) -> String {
        format!("{}:{}", self.prefix, kind.as_str())
    }

    /// The apalis storage of one kind, for pushing and for workers.
    pub fn storage(&self, kind: JobKind) -> RedisStorage<JobMsg> {
        let config = RedisConfig::default()
            .queue(self.queue_name(kind))
            // Our relay recovers a dead worker's jobs; apalis' own orphan
            // recovery stays as a second net.
            .heartbeat_interval(std::time::Duration::from_secs(10))
            .missed_heartbeats(3)
            .persist_results(false)
            .emit_events(false);
        RedisStorage::new(self.conn.clone()).with_config(config)
    }

    pub async fn push(&self, kind: JobKind, job_id: JobId) -> Result<()> {
        let mut storage = self.storage(kind);
        storage.push(JobMsg { v: 1, job_id }).await.map_err(|e| Error::Queue(e.to_string()))?;
        Ok(())
    }

    /// Messages waiting in a kind's queue.
    pub async fn depth(&self, kind: JobKind) -> Result<i64> {
        let storage = self.storage(kind);
        let key = storage.get_config().active_jobs_list();
        let mut conn = self.conn.clone();
        redis::cmd("LLEN").arg(key).query_async(&mut conn).await.map_err(|e| Error::Queue(e.to_string()))
    }

    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<String>(&mut conn).await.map_err(|e| Error::Queue(e.to_string()))?;
        Ok(())
    }
}
