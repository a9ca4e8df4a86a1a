//! The job contract (DESIGN.md): kinds and payloads, the Postgres record
//! (insert with idempotency, claim, finish, retry, dead), the Redis
//! transport, and the executor that runs one job in one SERIALIZABLE
//! transaction.

pub mod exec;
pub mod kinds;
pub mod queue;
pub mod record;

pub use exec::{Outcome, Runner};
pub use kinds::JobKind;
pub use queue::{JobMsg, Queue};
pub use record::{JobRow, NewJob, Receipt};
