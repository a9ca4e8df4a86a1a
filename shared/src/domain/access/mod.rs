//! Access: users and their API keys (secrets shown once, stored hashed,
//! roles, expiry, revocation, where each key's power comes from), admin
//! grants (four eyes on admin power), who holds admin power and whether an
//! approval is independent of its requester, and the checks other contexts
//! make on a user (exists, is active). Depends on `ops` only.

pub mod grants;
pub mod keys;
pub mod power;
pub mod users;
