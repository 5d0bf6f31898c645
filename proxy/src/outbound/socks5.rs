//! The explicit outbound listener: SOCKS5 (RFC 1928), CONNECT only, no
//! authentication, loopback-only by default. It feeds the same outbound
//! path as transparent capture, so applications and tests can use the mesh
//! without capture rules. The source pod is identified by the client
//! socket's IP address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use ferry_core::request::Refusal;

use crate::outbound::{Destination, Outbound, OutboundError};

const VERSION: u8 = 5;
const NO_AUTH: u8 = 0;
const NO_ACCEPTABLE_METHOD: u8 = 0xff;
const CONNECT: u8 = 1;

/// SOCKS5 reply codes.
mod reply {
    pub const SUCCEEDED: u8 = 0;
    pub const NOT_ALLOWED: u8 = 2;
    pub const HOST_UNREACHABLE: u8 = 4;
    pub const CONNECTION_REFUSED: u8 = 5;
    pub const COMMAND_NOT_SUPPORTED: u8 = 7;
    pub const ADDRESS_NOT_SUPPORTED: u8 = 8;
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

async fn read_destination(stream: &mut TcpStream) -> Result<Destination, SocksError> {
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

async fn send_reply(stream: &mut TcpStream, code: u8) -> std::io::Result<()> {
    stream
        .write_all(&[VERSION, code, 0, 1, 0, 0, 0, 0, 0, 0])
        .await
}

async fn session(
    outbound: Arc<Outbound>,
    handshake_timeout: Duration,
    mut client: TcpStream,
    peer: SocketAddr,
) -> Result<(), SocksError> {
    let destination = tokio::time::timeout(handshake_timeout, read_destination(&mut client))
        .await
        .map_err(|_| SocksError::Timeout)??;
    let connected = match outbound.connect(peer, destination.clone()).await {
        Ok(connected) => connected,
        Err(e) => {
            let code = match &e {
                OutboundError::Refusal(Refusal::Refused(_) | Refusal::NoEndpoints(_))
                | OutboundError::Unsupported(_) => reply::CONNECTION_REFUSED,
                OutboundError::Refusal(Refusal::Denied(_)) => reply::NOT_ALLOWED,
                OutboundError::Unresolved(_) | OutboundError::Unreachable(_) => {
                    reply::HOST_UNREACHABLE
                }
                OutboundError::Tunnel(crate::hbone::TunnelError::Refused { .. }) => {
                    reply::CONNECTION_REFUSED
                }
                OutboundError::Tunnel(_) => reply::NOT_ALLOWED,
            };
            send_reply(&mut client, code).await?;
            tracing::info!(%peer, ?destination, error = %e, "outbound connection refused");
            return Err(e.into());
        }
    };
    send_reply(&mut client, reply::SUCCEEDED).await?;
    let service = connected.service.clone();
    let endpoint = connected.endpoint;
    let mode = connected.mode;
    let started = std::time::Instant::now();
    let transferred = Outbound::relay(client, connected).await;
    tracing::debug!(%peer, ?destination, service = service.as_deref().unwrap_or("-"), %endpoint, ?mode, sent = transferred.from_tcp, received = transferred.to_tcp, duration_ms = started.elapsed().as_millis() as u64, "outbound connection closed");
    Ok(())
}

/// Serves SOCKS5 until the task is dropped; a client has
/// `handshake_timeout` to say where it goes.
pub async fn serve(listener: TcpListener, outbound: Arc<Outbound>, handshake_timeout: Duration) {
    crate::net::accept::serve(listener, "socks5", |client, peer| {
        let outbound = outbound.clone();
        async move {
            let _ = client.set_nodelay(true);
            if let Err(e) = session(outbound, handshake_timeout, client, peer).await {
                tracing::debug!(%peer, error = %e, "SOCKS5 session ended");
            }
        }
    })
    .await
}
