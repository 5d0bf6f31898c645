//! Connections that keep the client's address: the proxy opens its
//! connection to a pod (or beyond) from the address of the client it
//! carries, so the server sees its real client (logs, rate limits, CNI
//! policies, `externalTrafficPolicy: Local`).
//!
//! The socket is bound to an address that is not the node's
//! (`IP_TRANSPARENT`, which needs `CAP_NET_ADMIN`) and marked (`SO_MARK`).
//! The server's replies are addressed to the client, not to this node:
//! [`crate::capture::returns`] makes them come back to the socket (the
//! mark saved on the connection and restored on its replies, and a policy
//! route delivering marked packets locally).
//!
//! Where that cannot work the connection is made from the node's address,
//! as before, and counted in `ferry_client_address_fallbacks_total` by
//! reason (the first of each reason is logged):
//! - `no_return_route`: the reply routing could not be installed;
//! - `not_permitted`: the socket option or the bind was refused;
//! - `same_link`: client and server are pods of this node on one link (a
//!   bridge CNI's subnet): the server would answer its client directly on
//!   the link, around the proxy;
//! - `family`: the client's address is not of the server's family.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::net::{TcpSocket, TcpStream};

use super::connect::{connect, ConnectError};

/// Why a connection was made from the node's address.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Fallback {
    NoReturnRoute,
    NotPermitted,
    SameLink,
    Family,
}

impl Fallback {
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::NoReturnRoute => "no_return_route",
            Fallback::NotPermitted => "not_permitted",
            Fallback::SameLink => "same_link",
            Fallback::Family => "family",
        }
    }

    const ALL: [Fallback; 4] = [
        Fallback::NoReturnRoute,
        Fallback::NotPermitted,
        Fallback::SameLink,
        Fallback::Family,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// The label set of `ferry_client_address_fallbacks_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FallbackLabels {
    pub reason: &'static str,
}

/// How connections to servers are opened: from the client's address when
/// the node allows it.
#[derive(Debug)]
pub struct SourceAddresses {
    /// The mark the reply routing recognises; 0: keeping client addresses
    /// is off, or its routing is not installed ([`SourceAddresses::keep`]).
    mark: AtomicU32,
    /// Client addresses were asked for but the reply routing is missing.
    unavailable: AtomicBool,
    /// The subnets the node's pods share a link in (a bridge CNI's /24;
    /// none with routed CNIs), kept up to date by the capture rules.
    pub shared_subnets: Arc<ArcSwap<Vec<(IpAddr, u32)>>>,
    fallbacks: Family<FallbackLabels, Counter>,
    /// The first fallback of each reason is logged.
    logged: [AtomicBool; 4],
}

impl SourceAddresses {
    /// Off until [`SourceAddresses::keep`]: every connection from the
    /// node's address.
    pub fn new(fallbacks: Family<FallbackLabels, Counter>) -> Self {
        Self {
            mark: AtomicU32::new(0),
            unavailable: AtomicBool::new(false),
            shared_subnets: Arc::new(ArcSwap::from_pointee(Vec::new())),
            fallbacks,
            logged: Default::default(),
        }
    }

    /// Keeps client addresses from now on: the reply routing recognising
    /// `mark` is installed.
    pub fn keep(&self, mark: u32) {
        self.mark.store(mark, Ordering::Relaxed);
        self.unavailable.store(false, Ordering::Relaxed);
    }

    /// Client addresses were asked for but the reply routing could not be
    /// installed: every connection falls back, counted.
    pub fn unavailable(&self) {
        self.mark.store(0, Ordering::Relaxed);
        self.unavailable.store(true, Ordering::Relaxed);
    }

    fn fall_back(&self, reason: Fallback, client: IpAddr, server: SocketAddr, detail: &str) {
        self.fallbacks
            .get_or_create(&FallbackLabels {
                reason: reason.as_str(),
            })
            .inc();
        if !self.logged[reason.index()].swap(true, Ordering::Relaxed) {
            tracing::warn!(reason = reason.as_str(), %client, %server, detail, "the server sees the node's address, not its client's (logged once per reason; counted in ferry_client_address_fallbacks_total)");
        }
    }

    /// Connects to `server` within `timeout`, from `client`'s address when
    /// possible. `both_local_pods`: the client and the server are pods of
    /// this node.
    pub async fn connect(
        &self,
        client: IpAddr,
        server: SocketAddr,
        both_local_pods: bool,
        timeout: Duration,
    ) -> Result<TcpStream, ConnectError> {
        let client = client.to_canonical();
        // A client on this host (SOCKS5 on loopback) is the node itself.
        if client.is_loopback() || client.is_unspecified() {
            return connect(server, timeout).await;
        }
        let mark = self.mark.load(Ordering::Relaxed);
        if mark == 0 {
            if self.unavailable.load(Ordering::Relaxed) {
                self.fall_back(Fallback::NoReturnRoute, client, server, "");
            }
            return connect(server, timeout).await;
        }
        if client.is_ipv4() != server.is_ipv4() {
            self.fall_back(Fallback::Family, client, server, "");
            return connect(server, timeout).await;
        }
        if both_local_pods
            && self
                .shared_subnets
                .load()
                .iter()
                .any(|net| contains(*net, client) && contains(*net, server.ip()))
        {
            self.fall_back(Fallback::SameLink, client, server, "");
            return connect(server, timeout).await;
        }
        let socket = match transparent_socket(client, server, mark) {
            Ok(socket) => socket,
            Err(e) => {
                self.fall_back(Fallback::NotPermitted, client, server, &e.to_string());
                return connect(server, timeout).await;
            }
        };
        let tcp = tokio::time::timeout(timeout, socket.connect(server))
            .await
            .map_err(|_| ConnectError::Timeout(server))?
            .map_err(|source| ConnectError::Io {
                address: server,
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    /// Registers the reasons with zero counts, so the series exist.
    pub fn touch(&self) {
        for reason in Fallback::ALL {
            let _ = self.fallbacks.get_or_create(&FallbackLabels {
                reason: reason.as_str(),
            });
        }
    }
}

/// Whether `ip` is inside `network/prefix`.
fn contains((network, prefix): (IpAddr, u32), ip: IpAddr) -> bool {
    match (network, ip.to_canonical()) {
        (IpAddr::V4(net), IpAddr::V4(ip)) => {
            let mask = u32::MAX.checked_shl(32 - prefix.min(32)).unwrap_or(0);
            u32::from(net) & mask == u32::from(ip) & mask
        }
        (IpAddr::V6(net), IpAddr::V6(ip)) => {
            let mask = u128::MAX.checked_shl(128 - prefix.min(128)).unwrap_or(0);
            u128::from(net) & mask == u128::from(ip) & mask
        }
        _ => false,
    }
}

/// A socket bound to `client` (any port) for `server`, transparent and
/// marked.
fn transparent_socket(client: IpAddr, server: SocketAddr, mark: u32) -> std::io::Result<TcpSocket> {
    let socket = if server.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    nix::sys::socket::setsockopt(
        &socket.as_fd(),
        nix::sys::socket::sockopt::IpTransparent,
        &true,
    )?;
    nix::sys::socket::setsockopt(&socket.as_fd(), nix::sys::socket::sockopt::Mark, &mark)?;
    // Port 0: never the client's own port, whose connection (to the
    // address it dialled) the kernel still tracks.
    socket.bind(SocketAddr::new(client, 0))?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_contain_their_addresses_only() {
        let net = ("10.244.1.0".parse().unwrap(), 24);
        assert!(contains(net, "10.244.1.10".parse().unwrap()));
        assert!(!contains(net, "10.244.2.10".parse().unwrap()));
        assert!(!contains(net, "fd00::1".parse().unwrap()));
        let v6 = ("fd00:244:1::".parse().unwrap(), 64);
        assert!(contains(v6, "fd00:244:1::10".parse().unwrap()));
        assert!(!contains(v6, "fd00:244:2::10".parse().unwrap()));
        assert!(contains(
            ("0.0.0.0".parse().unwrap(), 0),
            "192.0.2.1".parse().unwrap()
        ));
    }

    #[tokio::test]
    async fn off_connects_from_the_node_and_counts_nothing() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        let counts = Family::<FallbackLabels, Counter>::default();
        let off = SourceAddresses::new(counts.clone());
        let tcp = off
            .connect(
                "10.9.9.9".parse().unwrap(),
                at,
                false,
                Duration::from_secs(2),
            )
            .await
            .unwrap();
        assert_eq!(tcp.local_addr().unwrap().ip(), at.ip());
        assert!(
            counts
                .get_or_create(&FallbackLabels { reason: "family" })
                .get()
                == 0
        );
    }

    #[tokio::test]
    async fn a_client_of_another_family_or_on_the_same_link_falls_back() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        let counts = Family::<FallbackLabels, Counter>::default();
        let keep = SourceAddresses::new(counts.clone());
        keep.keep(0x539);
        keep.connect(
            "fd00::1".parse().unwrap(),
            at,
            false,
            Duration::from_secs(2),
        )
        .await
        .unwrap();
        assert_eq!(
            counts
                .get_or_create(&FallbackLabels { reason: "family" })
                .get(),
            1
        );
        keep.shared_subnets
            .store(Arc::new(vec![("0.0.0.0".parse().unwrap(), 0)]));
        keep.connect(
            "10.9.9.9".parse().unwrap(),
            at,
            true,
            Duration::from_secs(2),
        )
        .await
        .unwrap();
        assert_eq!(
            counts
                .get_or_create(&FallbackLabels {
                    reason: "same_link"
                })
                .get(),
            1
        );
    }
}
