//! Ferry's node proxy.
//!
//! - [`state`]: the configuration store, read through lock-free snapshots.
//! - [`xds`]: the delta config client that keeps the store up to date.
//! - [`route`]: kube-proxy-compatible service resolution and load balancing
//!   (shared with `ferryctl route`).
//! - [`outbound`]: from a client connection and its destination to an
//!   upstream (direct or HBONE); fed by [`socks5`] and [`capture`].
//! - [`tunnel`]: the HBONE client pool and the splice of TCP into HTTP/2.
//! - [`inbound`]: the HBONE listener.
//! - [`policy`]: NetworkPolicy evaluation (shared with `ferryctl policy`)
//!   and the tracker that closes connections a policy update disallows.
//! - [`identity`] and [`tls`]: workload certificates and mTLS.
//! - [`admin`]: readiness and the configuration dump.

pub mod admin;
pub mod auth;
pub mod capture;
pub mod dns;
pub mod identity;
pub mod inbound;
pub mod listener;
pub mod outbound;
pub mod policy;
pub mod route;
pub mod socks5;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod tunnel;
pub mod xds;
