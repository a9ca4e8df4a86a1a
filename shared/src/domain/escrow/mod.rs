//! Escrows: money a client funds and a provider receives milestone by
//! milestone against proofs, payouts through the PSP, usage payees with
//! their limits, and deadlines. Depends on `access` and `ops`.
//!
//! Inside, from the bottom: `model` (rows and what clients see of them)
//! and `state` (loads, the event trail, guarded milestone moves, closing),
//! `drives` (each call to the PSP for a payment, and which one an event
//! names), `balance` and `limits` (the guarded money statements), `settlement`
//! (how a payment ends), `payouts` (creating and driving payments), then
//! the rules that use them: `escrows`, `milestones`, `deposits`,
//! `transitions`, `deadlines`, `payees` and `proofs`. Nothing below imports
//! anything above it.

pub mod balance;
pub mod deadlines;
pub mod deposits;
pub mod drives;
pub mod escrows;
pub mod limits;
pub mod milestones;
pub mod model;
pub mod payees;
pub mod payouts;
pub mod proofs;
pub mod settlement;
pub mod state;
pub mod transitions;
