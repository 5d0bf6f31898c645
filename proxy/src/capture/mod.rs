//! Transparent capture: pods' outbound TCP is redirected by iptables to the
//! proxy's capture listener, which reads the original destination from the
//! socket (`SO_ORIGINAL_DST`, IPv4 and IPv6: [`crate::net::original_destination`]) and hands the connection to
//! the same outbound path as SOCKS5. The rules themselves are [`rules`].

use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::Either;
use futures::FutureExt;
use tokio::net::TcpListener;

use crate::net::original_destination;

use crate::outbound::{Destination, Outbound};

pub mod backend;
pub mod interface;
pub mod returns;
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
    /// Whether servers see their clients' addresses, and the mark and
    /// table of the reply routing ([`returns`]).
    pub client_address: ClientAddress,
    pub client_address_mark: (u32, u32),
    pub client_address_table: u32,
}

/// `--client-address`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClientAddress {
    /// Connections to servers are made from the client's address (where
    /// the node allows it: `net::transparent`).
    Keep,
    /// From the node's address.
    Node,
}

/// Parses `MARK/MASK` (hex with `0x`, or decimal).
pub fn parse_mark(text: &str) -> Result<(u32, u32), String> {
    let number = |s: &str| {
        let s = s.trim();
        match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(hex) => u32::from_str_radix(hex, 16),
            None => s.parse(),
        }
        .map_err(|e| format!("{s}: {e}"))
    };
    let (mark, mask) = match text.split_once('/') {
        Some((mark, mask)) => (number(mark)?, number(mask)?),
        None => (number(text)?, u32::MAX),
    };
    // The replies carry MARK + 1 (`returns`): it must fit the mask too.
    let reply = mark.checked_add(1).unwrap_or(0);
    if mark == 0 || mark & mask != mark || reply & mask != reply {
        return Err(format!(
            "{text}: the mark and the mark + 1 (the replies') must be non-zero and inside the mask"
        ));
    }
    Ok((mark, mask))
}

/// Serves redirected connections until the task is dropped. A
/// connection's original destination is read before its task starts;
/// the task is its connection, then its relay, chained (`then`): it holds
/// one stage at a time (see `outbound::socks5::session`).
pub async fn serve(listener: TcpListener, outbound: Arc<Outbound>) {
    ferry_process::accept::serve(listener, "capture", |client, peer| {
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
                return Either::Left(std::future::ready(()));
            }
            Err(e) => {
                tracing::info!(%peer, error = %e, "no original destination (not redirected?): closed");
                return Either::Left(std::future::ready(()));
            }
        };
        let _ = client.set_nodelay(true);
        let outbound = outbound.clone();
        let connect = async move {
            let connected = outbound
                .connect(peer, Destination::Address(destination), &client)
                .await;
            (client, connected)
        };
        Either::Right(connect.then(move |(client, connected)| match connected {
            Ok(connected) => Either::Left(Outbound::relay(client, connected).map(drop)),
            Err(e) => {
                // The client is reset ("connection refused" semantics),
                // also when its first bytes were read (`EarlyData`): a
                // plain close would look like an empty answer.
                let _ = client.set_zero_linger();
                tracing::debug!(%peer, %destination, error = %e, "captured connection refused");
                Either::Right(std::future::ready(()))
            }
        }))
    })
    .await
}

#[cfg(test)]
mod tests {
    #[test]
    fn marks_parse_with_their_mask() {
        assert_eq!(super::parse_mark("0x539/0xfff"), Ok((0x539, 0xfff)));
        assert_eq!(super::parse_mark("1337"), Ok((1337, u32::MAX)));
        assert!(super::parse_mark("0x1000/0xfff").is_err());
        assert!(
            super::parse_mark("0xfff/0xfff").is_err(),
            "the replies' mark leaves the mask"
        );
        assert!(super::parse_mark("0/0xfff").is_err());
        assert!(super::parse_mark("x").is_err());
    }
}
