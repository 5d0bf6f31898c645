//! Transparent capture: pods' outbound TCP is redirected by iptables to the
//! proxy's capture listener, which reads the original destination from the
//! socket (`SO_ORIGINAL_DST`, IPv4 and IPv6: [`crate::net::original_destination`]) and hands the connection to
//! the same outbound path as SOCKS5. The rules themselves are [`rules`].

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::net::original_destination;

use crate::outbound::{Destination, Outbound};

pub mod backend;
pub mod interface;
pub mod rules;

pub use backend::Backend;
pub use rules::{CaptureError, CaptureRules, Family, CHAIN, INBOUND_CHAIN};

/// How capture is set up.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaptureSettings {
    /// The pod-facing interface whose pods are captured (or `auto`);
    /// `None`: no rules.
    pub interface: Option<interface::InterfaceSetting>,
    /// Serve Service addresses for every pod, not only the mesh's (a
    /// cluster without kube-proxy): [`CaptureRules::kube_proxy_replacement`].
    pub kube_proxy_replacement: bool,
    /// Which iptables binaries manage the rules.
    pub iptables_backend: Backend,
    /// How often the jumps are checked to still come first.
    pub recheck: std::time::Duration,
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
