//! The side every process shares: pushing job ids, acknowledging them and
//! reading the size of the streams, over one `ConnectionManager` (it
//! reconnects by itself). Consumers read on connections of their own
//! ([`super::consumer`]).

use std::collections::HashSet;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamInfoConsumersReply, StreamRangeReply};

use super::{FIELD_CTID, FIELD_JOB, FIELD_KEY, FIELD_VERSION, GROUP, JobRef};
use crate::error::{Error, Result};
use crate::ids::JobId;
use crate::jobs::JobKind;

#[derive(Clone)]
pub struct Queue {
    conn: ConnectionManager,
    client: redis::Client,
    prefix: String,
    maxlen: u64,
}

/// What Redis holds for one kind.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StreamStats {
    /// Entries in the stream: waiting, or delivered and not yet acknowledged.
    pub length: u64,
    /// Entries delivered to a consumer and not yet acknowledged.
    pub pending: u64,
    pub consumers: Vec<ConsumerInfo>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ConsumerInfo {
    pub name: String,
    pub pending: u64,
    pub idle_ms: u64,
}

fn queue_err(e: redis::RedisError) -> Error {
    Error::Queue(e.to_string())
}

impl Queue {
    /// A queue over `url`. The connection is made lazily and remade after any
    /// failure, so an unreachable Redis is an error of each call, never of
    /// start-up; only a malformed URL fails here.
    pub fn new(url: &str, prefix: &str, maxlen: u64) -> Result<Self> {
        let client = redis::Client::open(url).map_err(queue_err)?;
        // A call fails within a few seconds when Redis is gone instead of
        // hanging: the api answers and the relay retries later.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(3)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(queue_err)?;
        // A `:` would look like a Redis namespace; keep names flat.
        Ok(Self { conn, client, prefix: prefix.replace(':', "."), maxlen })
    }

    /// The queue's own connection (reconnecting), for other short calls
    /// that share it (the api's shared rate limits).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The key prefix (`QUEUE_PREFIX`, flattened).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The client consumers open their own connections from.
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The stream of one kind: `{prefix}.{kind}`.
    pub fn stream_key(&self, kind: JobKind) -> String {
        format!("{}.{}", self.prefix, kind.as_str())
    }

    pub async fn push(&self, kind: JobKind, job_id: JobId) -> Result<()> {
        self.push_batch(&[(kind, job_id).into()]).await
    }

    /// Pushes jobs of any kinds in one pipelined round trip: `XADD key MAXLEN
    /// ~ N * v 1 j <id> [t <ctid>]` each. The approximate trim keeps every stream near
    /// `STREAM_MAXLEN` at little cost; what a trim drops is still a `queued`
    /// row, which the relay pushes again.
    pub async fn push_batch(&self, jobs: &[JobRef]) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for job in jobs {
            let cmd = pipe
                .cmd("XADD")
                .arg(self.stream_key(job.kind))
                .arg("MAXLEN")
                .arg("~")
                .arg(self.maxlen)
                .arg("*")
                .arg(FIELD_VERSION)
                .arg(1)
                .arg(FIELD_JOB)
                .arg(job.id.to_string());
            if let Some(ctid) = &job.ctid {
                cmd.arg(FIELD_CTID).arg(ctid);
            }
            if let Some(key) = &job.key {
                cmd.arg(FIELD_KEY).arg(key);
            }
            cmd.ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await.map_err(queue_err)?;
        metrics::counter!("kobatela_transport_pushed_total").increment(jobs.len() as u64);
        Ok(())
    }

    /// Acknowledges delivered entries and deletes them, so the stream holds
    /// only what is still to do, and announces the jobs that ended (one round
    /// trip).
    pub async fn ack(&self, kind: JobKind, entries: &[&str], ended: &[JobId]) -> Result<()> {
        let entries: Vec<(JobKind, &str)> = entries.iter().map(|e| (kind, *e)).collect();
        self.ack_many(&entries, ended).await
    }

    /// [`ack`](Self::ack) for entries of any kinds, in one round trip.
    pub async fn ack_many(&self, entries: &[(JobKind, &str)], ended: &[JobId]) -> Result<()> {
        if entries.is_empty() && ended.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for kind in JobKind::ALL {
            let ids: Vec<&str> = entries.iter().filter(|(k, _)| k == kind).map(|(_, e)| *e).collect();
            if !ids.is_empty() {
                let key = self.stream_key(*kind);
                pipe.cmd("XACK").arg(&key).arg(GROUP).arg(&ids).ignore();
                pipe.cmd("XDEL").arg(&key).arg(&ids).ignore();
            }
        }
        self.add_ended(&mut pipe, ended);
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await.map_err(queue_err)
    }

    /// The channel on which job ends are announced, for receipt waiters
    /// (`Prefer: wait`): `{prefix}.ended`, comma-separated job ids.
    pub fn ended_channel(&self) -> String {
        format!("{}.ended", self.prefix)
    }

    /// Announces jobs that ended outside a delivery (the relay's dead jobs).
    pub async fn announce_ended(&self, ended: &[JobId]) -> Result<()> {
        self.ack(JobKind::JobRelay, &[], ended).await
    }

    fn add_ended(&self, pipe: &mut redis::Pipeline, ended: &[JobId]) {
        if ended.is_empty() {
            return;
        }
        let ids: Vec<String> = ended.iter().map(JobId::to_string).collect();
        pipe.cmd("PUBLISH").arg(self.ended_channel()).arg(ids.join(",")).ignore();
    }

    /// Where workers report when each of their consumers of `kind` last
    /// completed a poll: a hash `{prefix}.{kind}.alive`, field the consumer
    /// name, value unix milliseconds. `XINFO CONSUMERS` cannot say it: on
    /// Redis 7.0 a read that finds nothing neither creates the consumer nor
    /// refreshes its idle time, so an idle queue's live consumers look dead.
    pub fn alive_key(&self, kind: JobKind) -> String {
        format!("{}.{}.alive", self.prefix, kind.as_str())
    }

    /// Records `(kind, consumer, last poll in unix ms)` for each, in one round trip.
    pub async fn report_polls(&self, polls: &[(JobKind, &str, i64)]) -> Result<()> {
        let mut pipe = redis::pipe();
        for (kind, name, at_ms) in polls {
            pipe.cmd("HSET").arg(self.alive_key(*kind)).arg(*name).arg(*at_ms).ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await.map_err(queue_err)
    }

    /// `(consumer, last poll in unix ms)` of every consumer of `kind` that
    /// reported.
    pub async fn polls(&self, kind: JobKind) -> Result<Vec<(String, i64)>> {
        let mut conn = self.conn.clone();
        let map: std::collections::HashMap<String, i64> =
            redis::cmd("HGETALL").arg(self.alive_key(kind)).query_async(&mut conn).await.map_err(queue_err)?;
        Ok(map.into_iter().collect())
    }

    /// Drops the reports of consumers silent since `before_ms` (replicas
    /// that are gone), so the hash does not grow with every restart.
    pub async fn forget_polls_before(&self, kind: JobKind, before_ms: i64) -> Result<()> {
        let old: Vec<String> =
            self.polls(kind).await?.into_iter().filter(|(_, at)| *at < before_ms).map(|(name, _)| name).collect();
        if old.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        redis::cmd("HDEL")
            .arg(self.alive_key(kind))
            .arg(&old)
            .query_async::<i64>(&mut conn)
            .await
            .map_err(queue_err)?;
        Ok(())
    }

    /// Length, pending count and consumers of one kind's stream. A stream or
    /// group that does not exist (yet, or after a flush) is empty.
    pub async fn stats(&self, kind: JobKind) -> Result<StreamStats> {
        let key = self.stream_key(kind);
        let mut conn = self.conn.clone();
        let length: u64 = redis::cmd("XLEN").arg(&key).query_async(&mut conn).await.map_err(queue_err)?;
        let consumers: StreamInfoConsumersReply =
            match redis::cmd("XINFO").arg("CONSUMERS").arg(&key).arg(GROUP).query_async(&mut conn).await {
                Ok(reply) => reply,
                Err(e) if e.code() == Some("NOGROUP") || e.to_string().contains("no such key") => {
                    StreamInfoConsumersReply::default()
                }
                Err(e) => return Err(queue_err(e)),
            };
        let consumers: Vec<ConsumerInfo> = consumers
            .consumers
            .into_iter()
            .map(|c| ConsumerInfo { name: c.name, pending: c.pending as u64, idle_ms: c.idle as u64 })
            .collect();
        Ok(StreamStats { length, pending: consumers.iter().map(|c| c.pending).sum(), consumers })
    }

    /// The job ids that have an entry in the kind's stream (waiting, or
    /// delivered and not yet acknowledged), read in pages; `None` when the
    /// stream holds more than `max` entries (too long to read on a tick).
    pub async fn job_ids_in_stream(&self, kind: JobKind, max: u64) -> Result<Option<HashSet<JobId>>> {
        let key = self.stream_key(kind);
        let mut conn = self.conn.clone();
        let length: u64 = redis::cmd("XLEN").arg(&key).query_async(&mut conn).await.map_err(queue_err)?;
        if length > max {
            return Ok(None);
        }
        let mut ids = HashSet::with_capacity(length as usize);
        let mut start = "-".to_string();
        loop {
            let page: StreamRangeReply = redis::cmd("XRANGE")
                .arg(&key)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(2_000)
                .query_async(&mut conn)
                .await
                .map_err(queue_err)?;
            let Some(last) = page.ids.last() else { break };
            // The next page starts after the last entry read (`(` = exclusive).
            start = format!("({}", last.id);
            let full = page.ids.len() == 2_000;
            ids.extend(
                page.ids.iter().filter_map(|e| e.get::<String>(FIELD_JOB)).filter_map(|j| j.parse::<JobId>().ok()),
            );
            if !full {
                break;
            }
        }
        Ok(Some(ids))
    }

    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<String>(&mut conn).await.map_err(queue_err)?;
        Ok(())
    }
}
