//! The Redis transport (DESIGN.md, job contract item 7): one Redis Stream
//! per job kind, `{QUEUE_PREFIX}.{kind}`, read by one consumer group.
//!
//! - push: `XADD … MAXLEN ~ N` (pipelined for batches), so Redis memory stays
//!   bounded whatever the volume ([`Queue`]);
//! - fetch: `XREADGROUP … COUNT n BLOCK t` on a connection of its own per
//!   consumer, no polling loop and no wake-up channel ([`consumer`]);
//! - ack: `XACK` and `XDEL` once the job row records the outcome;
//! - recovery: `XAUTOCLAIM` of entries idle longer than the job lease, by any
//!   live consumer, so a dead or renamed consumer's messages move on;
//! - every Redis error is met with reconnect, back-off and `XGROUP CREATE …
//!   MKSTREAM`: a consumer never ends while its process runs;
//! - [`StreamBackend`] hands the deliveries to apalis, so the worker keeps
//!   apalis' builder, layers, concurrency and graceful shutdown.
//!
//! A message carries only the job id: the job is its Postgres row, so a lost
//! message loses nothing (the relay pushes the row again).

mod backend;
pub mod consumer;
mod producer;

pub use backend::StreamBackend;
pub use consumer::{ConsumerStatus, Delivery};
pub use producer::{ConsumerInfo, Queue, StreamStats};

use serde::{Deserialize, Serialize};

use crate::ids::JobId;
use crate::jobs::JobKind;

/// Version 1 of the message: the job id. The kind is the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMsg {
    pub v: u8,
    pub job_id: JobId,
}

/// The one consumer group every worker replica reads each stream with.
pub const GROUP: &str = "workers";

/// Field names of a stream entry: version, job id, and the row's address
/// when it was pushed (the worker's first transaction finds the row by it).
const FIELD_VERSION: &str = "v";
const FIELD_JOB: &str = "j";
const FIELD_CTID: &str = "t";
const FIELD_KEY: &str = "k";

/// A job to push: its kind (the stream), its id, and where its row was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRef {
    pub kind: JobKind,
    pub id: JobId,
    pub ctid: Option<String>,
    /// [`JobKind::conflict_key`] of its payload.
    pub key: Option<String>,
}

impl From<(JobKind, JobId)> for JobRef {
    fn from((kind, id): (JobKind, JobId)) -> Self {
        Self { kind, id, ctid: None, key: None }
    }
}
