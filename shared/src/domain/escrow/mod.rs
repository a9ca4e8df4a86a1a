//! Escrows: money a client funds and a provider receives milestone by
//! milestone against proofs, payouts through the PSP, usage payees with
//! their limits, and deadlines. Depends on `access` and `ops`.

pub mod escrows;
pub mod payees;
pub mod payouts;
pub mod proofs;
