//! Ferry's node proxy.
//!
//! - [`state`]: the configuration store, read through lock-free snapshots.
//! - [`xds`]: the delta config client that keeps the store up to date.
//! - [`admin`]: readiness and the configuration dump.

pub mod admin;
pub mod state;
pub mod xds;
