//! HBONE: TCP connections carried as HTTP/2 CONNECT streams inside mutual
//! TLS between node proxies (port 15008).
//!
//! - [`pool`]: the client side, [`HbonePool`]: HTTP/2 connections pooled
//!   per (source identity, destination identity, destination node), opened
//!   once per key however many connections ask at the same time.
//! - [`server`]: the listener side, [`HboneServer`]: terminates mutual TLS
//!   and HTTP/2 and hands each CONNECT stream to [`crate::inbound`].
//! - [`record`]: TLS 1.3 records after rustls's handshake, sealed and
//!   opened in place ([`record::RecordStream`]).
//! - [`H2Settings`]: the HTTP/2 settings both sides use (one place).
//!
//! The bytes of a stream are moved by [`crate::net::relay`].

use std::net::SocketAddr;

use ferry_api::identity::Identity;

pub mod pool;
pub mod record;
pub mod server;

pub use pool::{HbonePool, HboneStream, PoolKey, PoolStats};
pub use server::HboneServer;

/// Header carrying the original client address (`for=<ip>:<port>`).
pub const FORWARDED: &str = "forwarded";
/// The W3C trace context header joining the two sides' spans.
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// The HTTP/2 settings of HBONE connections, client and server alike.
/// Large windows and frames keep one stream at line rate on bulk transfers
/// (flow control would otherwise stall it every few round trips); the send
/// buffer bounds what one stream may queue before the socket drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct H2Settings {
    /// Flow-control window per stream (bytes).
    pub stream_window: u32,
    /// Flow-control window per connection (bytes).
    pub connection_window: u32,
    /// Largest DATA frame accepted (bytes).
    pub max_frame: u32,
    /// Most bytes one stream may queue for sending.
    pub max_send_buffer: usize,
    /// Concurrent streams per connection.
    pub max_streams: u32,
    /// Most TLS ciphertext a connection queues before it writes it to the
    /// socket (bytes): room for a whole DATA frame and what h2 writes with
    /// it, so each goes out in one `write` (rustls's default, 64 KiB, cut
    /// every 256 KiB frame into four). The queue is given back once it is
    /// written, so only a socket that cannot take it holds this much.
    pub tls_send_buffer: usize,
}

impl Default for H2Settings {
    fn default() -> Self {
        Self {
            stream_window: 4 << 20,
            connection_window: 16 << 20,
            max_frame: 256 * 1024,
            max_send_buffer: 1 << 20,
            max_streams: 100,
            tls_send_buffer: 512 * 1024,
        }
    }
}

/// A builder (client or server: they share these setters but no trait)
/// with the settings applied.
macro_rules! tuned {
    ($builder:expr, $settings:expr) => {{
        let mut builder = $builder;
        builder
            .initial_window_size($settings.stream_window)
            .initial_connection_window_size($settings.connection_window)
            .max_concurrent_streams($settings.max_streams)
            .max_frame_size($settings.max_frame)
            .max_send_buffer_size($settings.max_send_buffer);
        builder
    }};
}

impl H2Settings {
    /// A client builder with these settings.
    pub fn client(&self) -> h2::client::Builder {
        tuned!(h2::client::Builder::new(), self)
    }

    /// A server builder with these settings.
    pub fn server(&self) -> h2::server::Builder {
        tuned!(h2::server::Builder::new(), self)
    }
}

/// HTTP/2 PING keepalive of one HBONE connection, client or listener side:
/// a PING every `interval` when none is outstanding, and the peer is taken
/// for dead when one goes unanswered for `timeout`. A peer proxy that
/// froze, or a node that went away without closing its connections, would
/// otherwise hold them (and the pod connections relayed on them) forever.
pub(crate) struct Keepalive {
    ping: Option<h2::PingPong>,
    tick: tokio::time::Interval,
    timeout: std::time::Duration,
    awaiting: Option<tokio::time::Instant>,
}

impl Keepalive {
    pub(crate) fn new(
        ping: Option<h2::PingPong>,
        interval: std::time::Duration,
        timeout: std::time::Duration,
    ) -> Self {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.reset();
        Self {
            ping,
            tick,
            timeout,
            awaiting: None,
        }
    }

    /// Resolves when the peer is found dead: a PING unanswered for the
    /// timeout, or one that can no longer be sent or answered (the
    /// connection failed). Cancel-safe: a `select!` branch.
    pub(crate) async fn dead(&mut self) {
        let Some(ping) = self.ping.as_mut() else {
            return std::future::pending().await;
        };
        loop {
            match self.awaiting {
                Some(sent) => {
                    tokio::select! {
                        pong = std::future::poll_fn(|cx| ping.poll_pong(cx)) => {
                            if pong.is_err() {
                                return;
                            }
                            self.awaiting = None;
                        }
                        () = tokio::time::sleep_until(sent + self.timeout) => return,
                    }
                }
                None => {
                    self.tick.tick().await;
                    if ping.send_ping(h2::Ping::opaque()).is_err() {
                        return;
                    }
                    self.awaiting = Some(tokio::time::Instant::now());
                }
            }
        }
    }

    /// How long the peer may take to answer.
    pub(crate) fn timeout(&self) -> std::time::Duration {
        self.timeout
    }
}

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("no certificate for source identity {0}")]
    NoCertificate(Identity),
    #[error(transparent)]
    Connect(#[from] crate::net::connect::ConnectError),
    #[error("TLS handshake with {0}: timed out")]
    Timeout(SocketAddr),
    #[error("TLS with {node}: {source}")]
    Tls {
        node: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Config(#[from] crate::identity::tls::TlsError),
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
    #[error("the destination proxy refused the stream: {status}")]
    Refused { status: http::StatusCode },
    #[error("invalid CONNECT target {0}")]
    Target(#[from] http::Error),
    /// The failure of an open that several connections waited for.
    #[error(transparent)]
    Shared(std::sync::Arc<TunnelError>),
}

impl TunnelError {
    /// The failure itself, also when it was shared.
    pub fn root(&self) -> &TunnelError {
        match self {
            TunnelError::Shared(e) => e.root(),
            e => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// On tokio's paused clock: it moves on only when every task waits.
    #[tokio::test(start_paused = true)]
    async fn keepalive_finds_a_peer_that_stops_answering() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let (freeze, frozen) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut connection = h2::server::handshake(server_io).await.unwrap();
            tokio::select! {
                _ = connection.accept() => {}
                _ = frozen => {}
            }
            // Frozen: the connection is kept, nothing reads it.
            std::future::pending::<()>().await;
            drop(connection);
        });
        let (_sender, mut connection) = h2::client::handshake(client_io).await.unwrap();
        let mut keepalive = Keepalive::new(
            connection.ping_pong(),
            Duration::from_secs(10),
            Duration::from_secs(5),
        );
        // While the peer answers, three PINGs go by and it is alive.
        tokio::select! {
            _ = &mut connection => panic!("the connection ended"),
            () = keepalive.dead() => panic!("a peer that answers was taken for dead"),
            () = tokio::time::sleep(Duration::from_secs(35)) => {}
        }
        let _ = freeze.send(());
        let started = tokio::time::Instant::now();
        tokio::select! {
            _ = &mut connection => panic!("the connection ended"),
            () = keepalive.dead() => {}
        }
        // Found within the next PING and its timeout.
        assert!(
            started.elapsed() <= Duration::from_secs(15),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn tls_queue_takes_a_whole_data_frame() {
        let s = H2Settings::default();
        // A frame is its payload and a 9-byte header, sealed in records of
        // at most 16 KiB, each 22 bytes longer (header, type, AEAD tag).
        let records = (s.max_frame as usize + 9).div_ceil(16 * 1024);
        assert!(s.tls_send_buffer >= s.max_frame as usize + 9 + records * 22);
    }
}
