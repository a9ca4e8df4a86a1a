//! The job contract (DESIGN.md): kinds and payloads, the Postgres record
//! (insert with idempotency, claim, finish, retry, dead), the Redis Streams
//! transport, and the executor that runs one job in one SERIALIZABLE
//! transaction.

pub mod exec;
pub mod kinds;
pub mod outcome;
pub mod record;
pub mod stats;
pub mod transport;

pub use exec::Runner;
pub use kinds::JobKind;
pub use outcome::{End, FollowUp, Outcome};
pub use record::{JobRow, NewJob, Receipt};
pub use transport::{JobMsg, JobRef, Queue};
