//! Domain rules as plain async functions over a connection the caller owns
//! (a transaction for writes). They never begin or commit.
//!
//! Grouped by bounded context, each a folder whose `mod.rs` says what it
//! owns. The direction of dependencies, from the bottom:
//! - `ops` (audit, alerts) depends on nothing else here, and sits below
//!   `crate::jobs` (the executor audits refusals through it);
//! - `access` (users, API keys) depends on `ops`;
//! - `spend`, `escrow`, `saka` and `psp` depend on `access` and `ops`, on
//!   each other only as their `mod.rs` says (`psp` applies events to
//!   `escrow`), and on the job vocabulary (`jobs::{JobKind, Outcome,
//!   FollowUp}`), never on `jobs::record`: a rule that wants a follow-up job
//!   returns it in its `Outcome` and the executor writes the row.

pub mod access;
pub mod escrow;
pub mod ops;
pub mod psp;
pub mod saka;
pub mod spend;
