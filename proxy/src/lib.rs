//! Ferry's node proxy. What it knows and decides (the config store,
//! routing, policy, the decision for one connection) is the IO-free
//! [`ferry_core`]; this crate moves bytes and talks to the world.
//!
//! - [`config`] and [`app`]: the proxy's settings, and the wiring of every
//!   part from them (`main.rs` only parses and runs).
//! - [`xds`]: the delta config client that keeps the store up to date.
//! - [`identity`]: workload certificates from the mesh CA ([`identity::tls`]:
//!   the mTLS configurations on top of them; [`identity::token`]: the
//!   service account token a proxy in a cluster authenticates with).
//! - [`outbound`]: from a client connection and its destination to an
//!   upstream (direct or HBONE); fed by [`capture`] and [`outbound::socks5`].
//! - [`hbone`]: the mTLS HTTP/2 CONNECT tunnel between node proxies: the
//!   client pool ([`hbone::pool`]) and the listener ([`hbone::server`]).
//! - [`inbound`]: connections for this node's pods, over HBONE or in
//!   plaintext ([`inbound::plaintext`]), policed and relayed.
//! - [`capture`]: the iptables rules ([`capture::rules`]) and the listener
//!   that reads a redirected connection's original destination.
//! - [`dns`]: answers for service names, forwards the rest.
//! - [`tracker`]: open connections, closed when a policy update denies them.
//! - [`net`]: connect with a deadline, the relay, backoff (the accept
//!   loop is `ferry_process::accept`, shared with the admin servers).
//! - [`telemetry`]: metrics, OTLP spans and access logs per connection.
//! - [`admin`]: readiness, the configuration dump, `/metrics`.
//! - [`saved`]: the last good configuration and certificates on disk, so a
//!   restart without the control plane keeps policy and identity.

pub mod admin;
pub mod app;
pub mod capture;
pub mod config;
pub mod dns;
pub mod handover;
pub mod hbone;
pub mod identity;
pub mod inbound;
pub mod net;
pub mod outbound;
pub mod saved;
pub mod telemetry;
pub mod tracker;
pub mod xds;
