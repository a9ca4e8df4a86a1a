//! One file per resource, each with its own `router()`.

pub mod api_keys;
pub mod audit;
pub mod catalogue;
pub mod health;
pub mod jobs;
pub mod mandates;
pub mod purchases;
pub mod saka;
pub mod users;
