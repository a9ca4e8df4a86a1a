//! One kind's consumer: a task that reads the kind's stream for this worker
//! and hands each entry to apalis through a bounded channel.
//!
//! The loop never ends while the process runs (only on shutdown, or when
//! apalis drops the receiving side). Any Redis error drops the connection,
//! waits a jittered back-off (100 ms doubling to 2 s) and connects again;
//! `NOGROUP` (Redis restarted or flushed) re-creates the group at once. Each
//! outage is logged once when it starts and once when it ends, with how long
//! it took, and counted in `kobatela_transport_recoveries_total`.
//!
//! Reads fetch only as many entries as the channel has room for, so a busy
//! worker leaves the rest of the stream to the other replicas. While the
//! channel is full the consumer proves it is alive with a `PING` each block
//! period. Every `claim_every` it `XAUTOCLAIM`s entries idle longer than the
//! job lease (a dead, stopped or renamed consumer's messages).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use rand::Rng;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{FIELD_CTID, FIELD_JOB, FIELD_KEY, GROUP};
use crate::ids::JobId;
use crate::jobs::JobKind;

/// One entry handed to the worker: the job to run and what to acknowledge.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub kind: JobKind,
    /// The stream entry id (`XACK` takes it).
    pub entry: String,
    /// `None` for an entry we cannot read (acknowledged and dropped).
    pub job_id: Option<JobId>,
    /// The row's address when it was pushed.
    pub ctid: Option<String>,
    /// Taken over from a consumer that did not acknowledge it.
    pub redelivered: bool,
    /// The row it contends on ([`crate::jobs::JobKind::conflict_key`]).
    pub key: Option<String>,
}

/// What the health endpoint and the metrics know of a consumer.
#[derive(Debug)]
pub struct ConsumerStatus {
    pub kind: JobKind,
    /// Unix milliseconds of the last completed poll of Redis (0: never).
    last_poll_ms: AtomicI64,
}

impl ConsumerStatus {
    pub fn new(kind: JobKind) -> Arc<Self> {
        Arc::new(Self { kind, last_poll_ms: AtomicI64::new(0) })
    }

    fn polled(&self) {
        self.last_poll_ms.store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    /// When the consumer last completed a poll, if ever.
    pub fn last_poll(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        match self.last_poll_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => chrono::DateTime::from_timestamp_millis(ms),
        }
    }

    /// Milliseconds since the last completed poll (`None`: never polled).
    pub fn last_poll_age_ms(&self) -> Option<i64> {
        self.last_poll().map(|at| (chrono::Utc::now() - at).num_milliseconds().max(0))
    }
}

/// How one consumer reads.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub kind: JobKind,
    pub stream: String,
    /// The consumer's name in the group: the worker's name.
    pub consumer: String,
    pub block: Duration,
    /// Entries idle this long are taken over by `XAUTOCLAIM`.
    pub claim_idle: Duration,
    pub claim_every: Duration,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Consumers with nothing pending and idle this long are removed from the
/// group (a replica that stopped for good, or an earlier name).
const FORGET_IDLE: Duration = Duration::from_secs(3600);
const FORGET_EVERY: Duration = Duration::from_secs(300);

pub struct Consumer {
    client: redis::Client,
    config: ConsumerConfig,
    status: Arc<ConsumerStatus>,
    tx: mpsc::Sender<Delivery>,
    shutdown: watch::Receiver<bool>,
    conn: Option<MultiplexedConnection>,
    group_ready: bool,
    next_claim: Instant,
    next_forget: Instant,
}

/// Why a step did not complete.
enum Stop {
    Redis(redis::RedisError),
    Shutdown,
}

impl From<redis::RedisError> for Stop {
    fn from(e: redis::RedisError) -> Self {
        Stop::Redis(e)
    }
}

impl Consumer {
    pub fn new(
        client: redis::Client,
        config: ConsumerConfig,
        status: Arc<ConsumerStatus>,
        tx: mpsc::Sender<Delivery>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let now = Instant::now();
        Self {
            client,
            config,
            status,
            tx,
            shutdown,
            conn: None,
            group_ready: false,
            // At start, take over what an earlier run under any name left.
            next_claim: now,
            next_forget: now + FORGET_EVERY,
        }
    }

    fn stopping(&self) -> bool {
        *self.shutdown.borrow() || self.tx.is_closed()
    }

    /// Reads until shutdown. Never returns on a Redis error.
    pub async fn run(mut self) {
        let kind = self.config.kind;
        let mut outage: Option<Instant> = None;
        let mut backoff = BACKOFF_MIN;
        while !self.stopping() {
            match self.step().await {
                Ok(()) => {
                    backoff = BACKOFF_MIN;
                    if let Some(since) = outage.take() {
                        let ms = since.elapsed().as_millis() as u64;
                        tracing::info!(kind = %kind, took_ms = ms, "stream consumer recovered");
                        metrics::counter!("kobatela_transport_recoveries_total", "kind" => kind.as_str()).increment(1);
                    }
                }
                Err(Stop::Shutdown) => break,
                Err(Stop::Redis(e)) => {
                    let nogroup = e.code() == Some("NOGROUP");
                    if outage.is_none() {
                        outage = Some(Instant::now());
                        tracing::warn!(kind = %kind, error = %e, "stream consumer lost Redis; reconnecting");
                    } else {
                        tracing::debug!(kind = %kind, error = %e, "stream consumer still failing");
                    }
                    self.group_ready = false;
                    if nogroup {
                        // The connection is fine: the stream or group is gone
                        // (restart, flush). Re-create it now.
                        continue;
                    }
                    self.conn = None;
                    let jitter = rand::rng().random_range(0..=backoff.as_millis() as u64 / 2);
                    let pause = backoff + Duration::from_millis(jitter);
                    let mut shutdown = self.shutdown.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        tracing::debug!(kind = %kind, "stream consumer stopped");
    }

    /// One round: connect if needed, make sure the group exists, take over
    /// idle entries when due, then one blocking read.
    async fn step(&mut self) -> Result<(), Stop> {
        let mut conn = match &self.conn {
            Some(c) => c.clone(),
            None => {
                // The reply of a blocking read may take the whole block period.
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(self.config.block + Duration::from_secs(3)));
                let c = self.client.get_multiplexed_async_connection_with_config(&config).await?;
                self.conn = Some(c.clone());
                c
            }
        };
        if !self.group_ready {
            self.create_group(&mut conn).await?;
            self.group_ready = true;
        }
        let room = self.room(&mut conn).await?;
        if room == 0 {
            return Ok(());
        }
        let now = Instant::now();
        if now >= self.next_forget {
            self.next_forget = now + FORGET_EVERY;
            self.forget_idle_consumers(&mut conn).await?;
        }
        if now >= self.next_claim {
            self.next_claim = now + self.config.claim_every;
            let claimed = self.autoclaim(&mut conn, room).await?;
            if claimed > 0 {
                return Ok(());
            }
        }
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.config.consumer)
            .arg("COUNT")
            .arg(room)
            .arg("BLOCK")
            .arg(self.config.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.config.stream)
            .arg(">")
            .query_async(&mut conn)
            .await?;
        self.status.polled();
        let entries = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids);
        self.hand_over(entries, false).await
    }

    /// `XGROUP CREATE … 0 MKSTREAM`: from the start of the stream, so entries
    /// pushed before the group existed (after a flush, say) are delivered.
    async fn create_group(&self, conn: &mut MultiplexedConnection) -> Result<(), Stop> {
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.config.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(conn)
            .await;
        match created {
            Ok(()) => {
                tracing::debug!(kind = %self.config.kind, stream = %self.config.stream, "consumer group created");
                Ok(())
            }
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Free places in the channel. While it is full, waits for room for at
    /// most one block period and then answers a `PING`, so a busy consumer
    /// still shows it can reach Redis.
    async fn room(&mut self, conn: &mut MultiplexedConnection) -> Result<usize, Stop> {
        if self.tx.capacity() > 0 {
            return Ok(self.tx.capacity());
        }
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            permit = self.tx.reserve() => match permit {
                Ok(permit) => drop(permit),
                Err(_) => return Err(Stop::Shutdown),
            },
            _ = tokio::time::sleep(self.config.block) => {}
            _ = shutdown.changed() => return Err(Stop::Shutdown),
        }
        if self.tx.capacity() == 0 {
            redis::cmd("PING").query_async::<String>(conn).await?;
            self.status.polled();
        }
        Ok(self.tx.capacity())
    }

    /// Takes over entries idle past the lease, up to `room` of them.
    async fn autoclaim(&mut self, conn: &mut MultiplexedConnection, room: usize) -> Result<usize, Stop> {
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&self.config.stream)
            .arg(GROUP)
            .arg(&self.config.consumer)
            .arg(self.config.claim_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(room)
            .query_async(conn)
            .await?;
        self.status.polled();
        let claimed = reply.claimed.len();
        if claimed > 0 {
            tracing::info!(kind = %self.config.kind, claimed, "took over entries idle past the lease");
            metrics::counter!("kobatela_transport_claimed_total", "kind" => self.config.kind.as_str())
                .increment(claimed as u64);
        }
        self.hand_over(reply.claimed.into_iter(), true).await?;
        Ok(claimed)
    }

    /// Removes consumers that hold nothing and have been idle for an hour:
    /// names of replicas that are gone would otherwise pile up.
    async fn forget_idle_consumers(&self, conn: &mut MultiplexedConnection) -> Result<(), Stop> {
        let reply: redis::streams::StreamInfoConsumersReply =
            redis::cmd("XINFO").arg("CONSUMERS").arg(&self.config.stream).arg(GROUP).query_async(conn).await?;
        let forget_ms = FORGET_IDLE.as_millis() as usize;
        for c in reply.consumers {
            if c.pending == 0 && c.idle > forget_ms && c.name != self.config.consumer {
                redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(&self.config.stream)
                    .arg(GROUP)
                    .arg(&c.name)
                    .query_async::<i64>(conn)
                    .await?;
                tracing::debug!(kind = %self.config.kind, consumer = %c.name, "forgot an idle consumer");
            }
        }
        Ok(())
    }

    /// Sends entries to apalis. The reads never take more than the room left,
    /// and this task is the channel's only sender, so a send never waits for
    /// long; it ends only when apalis dropped the receiver.
    async fn hand_over(&self, entries: impl Iterator<Item = StreamId>, redelivered: bool) -> Result<(), Stop> {
        for entry in entries {
            let job_id = entry.get::<String>(FIELD_JOB).and_then(|s| s.parse::<JobId>().ok());
            let ctid = entry.get::<String>(FIELD_CTID);
            let key = entry.get::<String>(FIELD_KEY);
            let delivery = Delivery { kind: self.config.kind, entry: entry.id, job_id, ctid, redelivered, key };
            if self.tx.send(delivery).await.is_err() {
                return Err(Stop::Shutdown);
            }
        }
        Ok(())
    }
}
