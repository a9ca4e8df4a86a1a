//! End-to-end harness: each test gets a fresh Postgres database and a fresh
//! Redis key prefix, and runs the real `api`, `worker` and `psp-sim`
//! binaries against them (paths from `KOBATELA_*_BIN`, set by `cargo xtask
//! test`, or `target/debug/` after `cargo build`).

pub mod client;
pub mod env;
pub mod jpeg;
pub mod load;
pub mod owned;
pub mod postgres;
pub mod prom;
pub mod redis;
pub mod s3;
pub mod scenario;

pub use client::{Client, Reply};
pub use env::{Env, EnvOptions};
