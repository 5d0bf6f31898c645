//! Sockets and bytes, shared by every listener and path of the proxy:
//! the one accept loop ([`accept`]), connecting with a deadline
//! ([`connect`]), the one relay ([`relay`]) and the one backoff
//! ([`backoff`]).

pub mod accept;
pub mod backoff;
pub mod connect;
pub mod relay;
