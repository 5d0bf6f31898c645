//! Transparent capture: pods' outbound TCP is redirected by iptables to the
//! proxy's capture listener, which reads the original destination from the
//! socket (`SO_ORIGINAL_DST`, IPv4 and IPv6) and hands the connection to
//! the same outbound path as SOCKS5. The rules themselves are [`rules`].

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::Arc;

use nix::sys::socket::{getsockopt, sockopt};
use tokio::net::{TcpListener, TcpStream};

use crate::outbound::{Destination, Outbound};

pub mod rules;

pub use rules::{CaptureError, CaptureRules, Family, CHAIN, INBOUND_CHAIN};

/// The destination a redirected connection was sent to. A dual-stack
/// listener sees IPv4 clients with IPv4-mapped addresses: those are asked
/// with the IPv4 option.
pub fn original_destination(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    let ipv4 = match stream.local_addr()? {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(local) => local.ip().to_ipv4_mapped().is_some(),
    };
    if ipv4 {
        let sa = getsockopt(stream, sockopt::OriginalDst)?;
        Ok(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
            u16::from_be(sa.sin_port),
        )))
    } else {
        let sa = getsockopt(stream, sockopt::Ip6tOriginalDst)?;
        Ok(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(sa.sin6_addr.s6_addr),
            u16::from_be(sa.sin6_port),
            sa.sin6_flowinfo,
            sa.sin6_scope_id,
        )))
    }
}

/// Serves redirected connections until the task is dropped.
pub async fn serve(listener: TcpListener, outbound: Arc<Outbound>) {
    ferry_process::accept::serve(listener, "capture", |client, peer| {
        let outbound = outbound.clone();
        async move {
            // Not redirected, the "original" destination is this socket's
            // own address: serving it would loop.
            let local = client
                .local_addr()
                .map(|l| SocketAddr::new(l.ip().to_canonical(), l.port()))
                .ok();
            let destination = match original_destination(&client) {
                Ok(d) if Some(d) != local => d,
                Ok(_) => {
                    tracing::debug!(%peer, "connection to the capture port itself: closed");
                    return;
                }
                Err(e) => {
                    tracing::info!(%peer, error = %e, "no original destination (not redirected?): closed");
                    return;
                }
            };
            let _ = client.set_nodelay(true);
            match outbound
                .connect(peer, Destination::Address(destination))
                .await
            {
                Ok(connected) => {
                    Outbound::relay(client, connected).await;
                }
                Err(e) => {
                    // Dropping the socket resets the client: "connection refused" semantics.
                    tracing::debug!(%peer, %destination, error = %e, "captured connection refused");
                }
            }
        }
    })
    .await
}
