//! The explicit outbound listener: SOCKS5 (RFC 1928), CONNECT only, no
//! authentication, loopback-only by default. It feeds the same outbound
//! path as transparent capture, so applications and tests can use the mesh
//! without capture rules. The source pod is identified by the client
//! socket's IP address.
//!
//! The client is answered as soon as its connection is decided and
//! allowed by this proxy (configuration, route, endpoint, egress policy),
//! before the upstream is opened: its first bytes then travel while the
//! HBONE stream opens, instead of after the destination's proxy answered
//! (one round trip through both proxies fewer per connection; ztunnel
//! answers earlier still, before deciding anything). What the decision
//! refuses (no configuration, no route or endpoint, an egress policy, no
//! mesh credentials for the tunnel) gets its reply code ([`reply_code`]);
//! a failure after the answer (the destination's proxy denying or
//! refusing, an unreachable endpoint with no other to retry, a failed
//! mTLS handshake or a missing certificate) resets the client's
//! connection, as it would a captured one, and is counted and logged by
//! the outbound path with its reason. Retries on another endpoint still
//! happen, with the client's first bytes sent again
//! ([`crate::outbound::early`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::future::Either;
use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::hbone::TunnelError;
use crate::net::connect::ConnectError;
use crate::outbound::{Destination, Outbound, OutboundError};
use crate::telemetry::metrics::FailureReason;

const VERSION: u8 = 5;
const NO_AUTH: u8 = 0;
const NO_ACCEPTABLE_METHOD: u8 = 0xff;
const CONNECT: u8 = 1;

/// SOCKS5 reply codes (RFC 1928, section 6).
pub mod reply {
    pub const SUCCEEDED: u8 = 0;
    pub const GENERAL_FAILURE: u8 = 1;
    pub const NOT_ALLOWED: u8 = 2;
    pub const HOST_UNREACHABLE: u8 = 4;
    pub const CONNECTION_REFUSED: u8 = 5;
    pub const COMMAND_NOT_SUPPORTED: u8 = 7;
    pub const ADDRESS_NOT_SUPPORTED: u8 = 8;
}

/// The SOCKS5 reply for a failed connection, from its reason
/// ([`OutboundError::reason`], the same one metrics and logs use):
///
/// - a NetworkPolicy denial is "connection not allowed by ruleset" (2);
/// - no endpoint, or a service port that does not exist, is "connection
///   refused" (5), as kube-proxy rejects such connections; so is an
///   upstream that actively refused;
/// - a name that does not resolve, or an upstream that cannot be reached
///   in time, is "host unreachable" (4);
/// - the proxy's own inability (no configuration yet, a failed mTLS
///   handshake) is "general SOCKS server failure" (1).
pub fn reply_code(error: &OutboundError) -> u8 {
    match error.reason() {
        FailureReason::PolicyDenied | FailureReason::DeniedByDestination => reply::NOT_ALLOWED,
        FailureReason::NoEndpoints | FailureReason::Refused => reply::CONNECTION_REFUSED,
        FailureReason::Unresolved => reply::HOST_UNREACHABLE,
        FailureReason::ConnectError => match error {
            OutboundError::Unreachable(ConnectError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                reply::CONNECTION_REFUSED
            }
            OutboundError::Tunnel(TunnelError::Refused { .. }) => reply::CONNECTION_REFUSED,
            _ => reply::HOST_UNREACHABLE,
        },
        FailureReason::NotConfigured | FailureReason::TlsFailure => reply::GENERAL_FAILURE,
    }
}

/// Why a SOCKS5 session failed before relaying.
#[derive(Debug, thiserror::Error)]
pub enum SocksError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("not SOCKS version 5 (got {0})")]
    Version(u8),
    #[error("the client offers no method without authentication")]
    NoMethod,
    #[error("unsupported command {0}")]
    Command(u8),
    #[error("unsupported address type {0}")]
    AddressType(u8),
    #[error("handshake timed out")]
    Timeout,
    #[error("{0}")]
    Outbound(#[from] OutboundError),
}

/// Reads a client's greeting and CONNECT request (answering the method
/// selection, and refusing other commands and address types), up to the
/// destination. Reads exactly what the protocol says, so nothing the
/// client sends after its request is consumed. Generic over the stream so
/// that it can be exercised without sockets (the `socks5` fuzz target).
pub async fn read_destination<S>(stream: &mut S) -> Result<Destination, SocksError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut greeting = [0u8; 2];
    stream.read_exact(&mut greeting).await?;
    if greeting[0] != VERSION {
        return Err(SocksError::Version(greeting[0]));
    }
    let mut methods = vec![0u8; usize::from(greeting[1])];
    stream.read_exact(&mut methods).await?;
    if !methods.contains(&NO_AUTH) {
        stream.write_all(&[VERSION, NO_ACCEPTABLE_METHOD]).await?;
        return Err(SocksError::NoMethod);
    }
    stream.write_all(&[VERSION, NO_AUTH]).await?;
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await?;
    if head[0] != VERSION {
        return Err(SocksError::Version(head[0]));
    }
    if head[1] != CONNECT {
        send_reply(stream, reply::COMMAND_NOT_SUPPORTED).await?;
        return Err(SocksError::Command(head[1]));
    }
    let destination = match head[3] {
        1 => {
            let mut ip = [0u8; 4];
            stream.read_exact(&mut ip).await?;
            let port = stream.read_u16().await?;
            Destination::Address(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        4 => {
            let mut ip = [0u8; 16];
            stream.read_exact(&mut ip).await?;
            let port = stream.read_u16().await?;
            Destination::Address(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
        3 => {
            let len = stream.read_u8().await?;
            let mut name = vec![0u8; usize::from(len)];
            stream.read_exact(&mut name).await?;
            let port = stream.read_u16().await?;
            let name = String::from_utf8_lossy(&name)
                .trim_end_matches('.')
                .to_string();
            match name.parse::<IpAddr>() {
                Ok(ip) => Destination::Address(SocketAddr::new(ip, port)),
                Err(_) => Destination::Name(name, port),
            }
        }
        other => {
            send_reply(stream, reply::ADDRESS_NOT_SUPPORTED).await?;
            return Err(SocksError::AddressType(other));
        }
    };
    Ok(destination)
}

async fn send_reply<S: AsyncWrite + Unpin>(stream: &mut S, code: u8) -> std::io::Result<()> {
    stream.write_all(&reply_bytes(code)).await
}

/// [`send_reply`] through a shared reference, while the outbound path
/// holds one too (it reads the client's first bytes as the tunnel opens).
async fn send_reply_shared(stream: &TcpStream, code: u8) -> std::io::Result<()> {
    let reply = reply_bytes(code);
    let mut written = 0;
    while written < reply.len() {
        stream.writable().await?;
        match stream.try_write(&reply[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A reply to CONNECT: the code, and an unspecified IPv4 bound address.
fn reply_bytes(code: u8) -> [u8; 10] {
    [VERSION, code, 0, 1, 0, 0, 0, 0, 0, 0]
}

/// One SOCKS5 client: its handshake and connection, then its relay. Two
/// stages chained, not one `async fn`: the task holds one stage at a time,
/// where an async function lays the setup's state out beside the relay's
/// (about 1 KiB more for every open connection; docs/benchmarks.md).
fn session(
    outbound: Arc<Outbound>,
    handshake_timeout: Duration,
    client: TcpStream,
    peer: SocketAddr,
) -> impl std::future::Future<Output = Result<(), SocksError>> {
    setup(outbound, handshake_timeout, client, peer).then(move |setup| {
        let (client, connected, destination) = match setup {
            Ok(set_up) => set_up,
            Err(e) => return Either::Left(std::future::ready(Err(e))),
        };
        let service = connected.service.clone();
        let endpoint = connected.endpoint;
        let mode = connected.mode;
        let started = std::time::Instant::now();
        Either::Right(Outbound::relay(client, connected).map(move |transferred| {
            tracing::debug!(%peer, ?destination, service = service.as_deref().unwrap_or("-"), %endpoint, ?mode, sent = transferred.from_tcp, received = transferred.to_tcp, duration_ms = started.elapsed().as_millis() as u64, "outbound connection closed");
            Ok(())
        }))
    })
}

/// The handshake, the reply and the connection upstream: the client, its
/// connection and where it asked to go, ready to relay.
async fn setup(
    outbound: Arc<Outbound>,
    handshake_timeout: Duration,
    mut client: TcpStream,
    peer: SocketAddr,
) -> Result<(TcpStream, super::Connected, Destination), SocksError> {
    let destination = tokio::time::timeout(handshake_timeout, read_destination(&mut client))
        .await
        .map_err(|_| SocksError::Timeout)??;
    // Answered as soon as the connection is decided and allowed here (see
    // the module doc): `answered` holds the reply's outcome once sent.
    let mut answered: Option<std::io::Result<()>> = None;
    let answer = &mut answered;
    let stream = &client;
    let result = outbound
        .connect_announced(peer, destination.clone(), stream, move |()| async move {
            *answer = Some(send_reply_shared(stream, reply::SUCCEEDED).await);
        })
        .await;
    match (result, answered) {
        (Ok(connected), Some(Ok(()))) => Ok((client, connected, destination)),
        // The client left before its answer: nothing to relay.
        (_, Some(Err(e))) => Err(e.into()),
        (Err(e), None) => {
            send_reply(&mut client, reply_code(&e)).await?;
            tracing::info!(%peer, ?destination, reason = e.reason().as_str(), error = %e, "outbound connection refused");
            Err(e.into())
        }
        (Err(e), Some(Ok(()))) => {
            // Told yes, then the upstream failed (counted and logged as a
            // failure by the outbound path): the client sees its
            // connection reset, as a captured connection would.
            let _ = client.set_zero_linger();
            Err(e.into())
        }
        (Ok(connected), None) => {
            send_reply(&mut client, reply::SUCCEEDED).await?;
            Ok((client, connected, destination))
        }
    }
}

/// Serves SOCKS5 until the task is dropped; a client has
/// `handshake_timeout` to say where it goes.
pub async fn serve(listener: TcpListener, outbound: Arc<Outbound>, handshake_timeout: Duration) {
    // `map`, not an `async move` block awaiting the session: the block
    // would keep room for what it moved into the session (88 bytes in
    // every connection's task).
    ferry_process::accept::serve(listener, "socks5", |client, peer| {
        let _ = client.set_nodelay(true);
        session(outbound.clone(), handshake_timeout, client, peer).map(move |ended| {
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "SOCKS5 session ended");
            }
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::policy::{Denied, Direction};
    use ferry_core::request::Refusal;

    fn addr() -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], 80))
    }

    #[test]
    fn reply_codes_follow_rfc_1928() {
        let io = |kind| ConnectError::Io {
            address: addr(),
            source: std::io::Error::from(kind),
        };
        let cases: [(&str, OutboundError, u8); 9] = [
            (
                "policy denial here",
                Refusal::Denied(Denied {
                    direction: Direction::Egress,
                    policies: vec!["shop/deny".into()],
                })
                .into(),
                reply::NOT_ALLOWED,
            ),
            (
                "policy denial at the destination's proxy",
                TunnelError::Refused {
                    status: http::StatusCode::FORBIDDEN,
                }
                .into(),
                reply::NOT_ALLOWED,
            ),
            (
                "no endpoints",
                Refusal::NoEndpoints("shop/api".into()).into(),
                reply::CONNECTION_REFUSED,
            ),
            (
                "a port the service lacks",
                Refusal::Refused("no TCP port 81".into()).into(),
                reply::CONNECTION_REFUSED,
            ),
            (
                "the upstream refused",
                io(std::io::ErrorKind::ConnectionRefused).into(),
                reply::CONNECTION_REFUSED,
            ),
            (
                "the upstream timed out",
                ConnectError::Timeout(addr()).into(),
                reply::HOST_UNREACHABLE,
            ),
            (
                "the peer proxy cannot be reached",
                TunnelError::Connect(ConnectError::Timeout(addr())).into(),
                reply::HOST_UNREACHABLE,
            ),
            (
                "a name that does not resolve",
                OutboundError::Unresolved("nowhere.example".into()),
                reply::HOST_UNREACHABLE,
            ),
            (
                "no configuration yet",
                Refusal::NotConfigured.into(),
                reply::GENERAL_FAILURE,
            ),
        ];
        for (case, error, code) in cases {
            assert_eq!(reply_code(&error), code, "{case}: {error}");
        }
    }
}
