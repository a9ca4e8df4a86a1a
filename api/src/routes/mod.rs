//! One file per resource, each with its own `router()`.

pub mod admin_grants;
pub mod api_keys;
pub mod assets;
pub mod audit;
pub mod catalogue;
pub mod docs;
pub mod escrows;
pub mod health;
pub mod jobs;
pub mod mandates;
pub mod ops;
pub mod payees;
pub mod payments;
pub mod proofs;
pub mod purchases;
pub mod saka;
pub mod transfers;
pub mod users;
pub mod webhooks;
