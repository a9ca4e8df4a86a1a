//! The PSP's side of the conversation: signed webhook events, stored raw and
//! applied by a job (settlements, failures, fundings), and the PSP's health
//! as payouts see it (our credentials refused). Depends on `escrow` (an
//! event moves a payment or funds an escrow) and `ops`.

pub mod events;
pub mod health;
pub mod webhooks;
