//! Sockets and bytes, shared by every path of the proxy: connecting with
//! a deadline ([`connect`]), a redirected connection's original
//! destination ([`original_destination`]), the one relay ([`relay`]) and
//! the one backoff ([`backoff`]). The one accept loop, which the admin servers share too,
//! is `ferry_process::accept`.

pub mod backoff;
pub mod connect;
mod original_dst;
pub mod relay;
pub mod transparent;

pub use original_dst::original_destination;
