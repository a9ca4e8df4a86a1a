//! Access: users and their API keys (secrets shown once, stored hashed,
//! roles, expiry, revocation), and the checks other contexts make on a
//! user (exists, is active). Depends on `ops` only.

pub mod keys;
pub mod users;
