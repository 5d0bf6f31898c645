//! HBONE: TCP connections carried as HTTP/2 CONNECT streams inside mutual
//! TLS between node proxies (port 15008).
//!
//! - [`HbonePool`]: the client side. HTTP/2 connections are pooled per
//!   (source identity, destination identity, destination node): a new
//!   pod-to-pod connection costs one stream, not a handshake. A connection
//!   carries at most `stream_limit` concurrent streams; past that a new one
//!   is opened. The destination identity is part of the key because the
//!   server proves it in the TLS handshake.
//! - [`splice`]: copies between a TCP stream and an HTTP/2 stream in both
//!   directions, honouring half-close (EOF becomes END_STREAM and back) and
//!   HTTP/2 flow control.
//!
//! The server side lives in [`crate::inbound`].

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use ferry_api::identity::Identity;
use h2::{RecvStream, SendStream};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::identity::IdentityManager;

/// Header carrying the original client address (`for=<ip>:<port>`).
pub const FORWARDED: &str = "forwarded";
/// The W3C trace context header joining the two sides' spans.
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

const READ_CHUNK: usize = 64 * 1024;
/// Largest HTTP/2 DATA frame we accept: big frames cut per-frame overhead on bulk transfers.
pub const MAX_FRAME: u32 = 256 * 1024;
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("no certificate for source identity {0}")]
    NoCertificate(Identity),
    #[error("connecting to {node}: {source}")]
    Connect {
        node: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {0}: timed out")]
    Timeout(SocketAddr),
    #[error("TLS with {node}: {source}")]
    Tls {
        node: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Config(#[from] crate::tls::TlsError),
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
    #[error("the destination proxy refused the stream: {status}")]
    Refused { status: http::StatusCode },
    #[error("invalid CONNECT target {0}")]
    Target(#[from] http::Error),
}

/// Pool key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub source: Identity,
    pub destination: Identity,
    pub node: SocketAddr,
}

#[derive(Debug)]
struct PooledConnection {
    sender: h2::client::SendRequest<Bytes>,
    streams: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
}

/// Counts a stream against its connection until dropped.
#[derive(Debug)]
pub struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An open HBONE stream.
#[derive(Debug)]
pub struct HboneStream {
    pub send: SendStream<Bytes>,
    pub recv: RecvStream,
    pub slot: StreamSlot,
}

/// Pool statistics for `/config_dump` and metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PoolStats {
    pub connections: usize,
    pub streams: usize,
    pub handshakes: usize,
}

/// The HBONE client: pooled mTLS HTTP/2 connections to other node proxies.
#[derive(Debug)]
pub struct HbonePool {
    connections: DashMap<PoolKey, Vec<PooledConnection>>,
    identities: Arc<IdentityManager>,
    stream_limit: usize,
    connect_timeout: Duration,
    handshakes: AtomicUsize,
}

impl HbonePool {
    pub fn new(
        identities: Arc<IdentityManager>,
        stream_limit: usize,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            connections: DashMap::new(),
            identities,
            stream_limit: stream_limit.max(1),
            connect_timeout,
            handshakes: AtomicUsize::new(0),
        }
    }

    pub fn stats(&self) -> PoolStats {
        let mut stats = PoolStats {
            handshakes: self.handshakes.load(Ordering::Relaxed),
            ..PoolStats::default()
        };
        for entry in self.connections.iter() {
            for c in entry
                .value()
                .iter()
                .filter(|c| !c.closed.load(Ordering::Acquire))
            {
                stats.connections += 1;
                stats.streams += c.streams.load(Ordering::Acquire);
            }
        }
        stats
    }

    /// A pooled connection with a free stream slot, if any.
    fn reuse(&self, key: &PoolKey) -> Option<(h2::client::SendRequest<Bytes>, StreamSlot)> {
        let mut entry = self.connections.get_mut(key)?;
        entry.retain(|c| !c.closed.load(Ordering::Acquire));
        for c in entry.iter() {
            let taken = c.streams.fetch_add(1, Ordering::AcqRel);
            if taken < self.stream_limit {
                return Some((c.sender.clone(), StreamSlot(c.streams.clone())));
            }
            c.streams.fetch_sub(1, Ordering::AcqRel);
        }
        None
    }

    async fn open(
        &self,
        key: &PoolKey,
    ) -> Result<(h2::client::SendRequest<Bytes>, StreamSlot), TunnelError> {
        let source_cert = self
            .identities
            .wait_certified(&key.source, Duration::from_secs(5))
            .await
            .ok_or_else(|| TunnelError::NoCertificate(key.source.clone()))?;
        let config = crate::tls::client_config(
            self.identities.roots(),
            source_cert,
            key.destination.clone(),
        )?;
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(key.node))
            .await
            .map_err(|_| TunnelError::Timeout(key.node))?
            .map_err(|source| TunnelError::Connect {
                node: key.node,
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let server_name = rustls::pki_types::ServerName::try_from(key.destination.server_name())
            .map_err(|e| TunnelError::Tls {
                node: key.node,
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            })?;
        let tls = tokio::time::timeout(
            self.connect_timeout,
            tokio_rustls::TlsConnector::from(Arc::new(config)).connect(server_name, tcp),
        )
        .await
        .map_err(|_| TunnelError::Timeout(key.node))?
        .map_err(|source| TunnelError::Tls {
            node: key.node,
            source,
        })?;
        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_concurrent_streams(self.stream_limit as u32)
            .max_frame_size(MAX_FRAME)
            .max_send_buffer_size(1 << 20)
            .handshake::<_, Bytes>(tls)
            .await?;
        self.handshakes.fetch_add(1, Ordering::Relaxed);
        let closed = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(AtomicUsize::new(1));
        {
            let closed = closed.clone();
            let node = key.node;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(%node, error = %e, "HBONE connection ended");
                }
                closed.store(true, Ordering::Release);
            });
        }
        tracing::debug!(source = %key.source, destination = %key.destination, node = %key.node, "HBONE connection established");
        self.connections
            .entry(key.clone())
            .or_default()
            .push(PooledConnection {
                sender: sender.clone(),
                streams: streams.clone(),
                closed,
            });
        Ok((sender, StreamSlot(streams)))
    }

    /// Opens a stream to `target` (a pod address on the destination node),
    /// with the W3C `traceparent` of the connection's span when tracing.
    pub async fn connect(
        &self,
        key: &PoolKey,
        target: SocketAddr,
        client: SocketAddr,
        traceparent: Option<http::HeaderValue>,
    ) -> Result<HboneStream, TunnelError> {
        let (sender, slot) = match self.reuse(key) {
            Some(found) => found,
            None => self.open(key).await?,
        };
        let mut sender = sender.ready().await?;
        let mut request = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(target.to_string())
            .header(FORWARDED, format!("for=\"{client}\""))
            .body(())?;
        if let Some(value) = traceparent {
            request.headers_mut().insert(TRACEPARENT, value);
        }
        let (response, send) = sender.send_request(request, false)?;
        let response = response.await?;
        if response.status() != http::StatusCode::OK {
            return Err(TunnelError::Refused {
                status: response.status(),
            });
        }
        Ok(HboneStream {
            send,
            recv: response.into_body(),
            slot,
        })
    }
}

/// Bytes copied by [`splice`]: (TCP to HTTP/2, HTTP/2 to TCP).
pub type Copied = (u64, u64);

/// Copies both ways between `tcp` and an HTTP/2 stream until both directions
/// have ended. EOF from the TCP side is sent as END_STREAM; END_STREAM from
/// the peer shuts down the TCP write side; the other direction goes on.
pub async fn splice(tcp: TcpStream, mut send: SendStream<Bytes>, mut recv: RecvStream) -> Copied {
    let (mut reader, mut writer) = tcp.into_split();
    let up = async move {
        let mut total = 0u64;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            buf.reserve(READ_CHUNK);
            match reader.read_buf(&mut buf).await {
                Ok(0) => {
                    let _ = send.send_data(Bytes::new(), true);
                    return total;
                }
                Ok(n) => total += n as u64,
                Err(_) => {
                    send.send_reset(h2::Reason::CANCEL);
                    return total;
                }
            }
            let mut chunk = buf.split().freeze();
            while !chunk.is_empty() {
                send.reserve_capacity(chunk.len());
                match poll_fn(|cx| send.poll_capacity(cx)).await {
                    Some(Ok(0)) => continue,
                    Some(Ok(capacity)) => {
                        let part = chunk.split_to(capacity.min(chunk.len()));
                        if send.send_data(part, false).is_err() {
                            return total;
                        }
                    }
                    Some(Err(_)) | None => return total,
                }
            }
        }
    };
    let down = async move {
        let mut total = 0u64;
        while let Some(Ok(data)) = recv.data().await {
            let n = data.len();
            if writer.write_all(&data).await.is_err() {
                break;
            }
            let _ = recv.flow_control().release_capacity(n);
            total += n as u64;
        }
        let _ = writer.shutdown().await;
        total
    };
    tokio::join!(up, down)
}
