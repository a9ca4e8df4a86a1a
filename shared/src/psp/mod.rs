//! The payment service provider: the payout call (a trait and its HTTP
//! implementation, used by the `payout` runner and faked in tests) and the
//! webhook signature (checked by the API, produced by `psp-sim`).

pub mod client;
pub mod signature;

pub use client::{HttpPspClient, PayoutRequest, PayoutResponse, PspClient, PspError};
pub use signature::{EVENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, TOLERANCE_SECS, sign, verify};
