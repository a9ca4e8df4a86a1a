//! Kobatela's shared library: money and ids, configuration, errors, the
//! database access, the job contract and the domain rules. Both binaries
//! (`api` and `worker`) and the tests use it. It knows nothing of our own HTTP
//! API; the only HTTP here is the PSP client (`psp`).

pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod failpoint;
pub mod ids;
pub mod intake;
pub mod jobs;
pub mod money;
pub mod page;
pub mod principal;
pub mod proofs;
pub mod psp;
pub mod ratelimit;
pub mod storage;
pub mod telemetry;
pub mod text;
pub mod tls;

pub use error::{Error, ErrorCode, FieldError, Problem, Result};
