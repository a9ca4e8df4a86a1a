//! Extractors: they authenticate, parse and validate at the edge so that
//! handlers receive trusted types.

pub mod client_addr;
pub mod fields;
pub mod idempotency;
pub mod job;
pub mod path;
pub mod principal;
pub mod query;
pub mod upload;
pub mod wait;

pub use client_addr::ClientAddr;
pub use fields::{Fields, JsonFields};
pub use idempotency::IdempotencyKey;
pub use job::{AdminOnly, JobRequest, JsonBody, NoteIn, Submission};
pub use path::IdPath;
pub use principal::Auth;
pub use query::QueryMap;
pub use wait::PreferWait;
