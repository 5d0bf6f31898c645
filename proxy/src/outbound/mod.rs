//! The outbound path: from a client's connection and the destination it
//! asked for to an upstream connection.
//!
//! One entry point, [`Outbound::connect`], serves the capture listener
//! ([`crate::capture`]) and SOCKS5 ([`socks5`]): a name is first resolved
//! as the client's pod would ([`ferry_core::route::names`]), then the core
//! decides the connection ([`ferry_core::request::decide`]: service,
//! endpoint, carrying, source identity, policy), and this module only
//! carries out that decision: a direct TCP connection, or a stream of the
//! HBONE pool presenting the source workload's identity. [`Outbound::relay`]
//! moves the bytes ([`crate::net::relay`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_api::identity::Identity;
use ferry_core::request::{self, Admitted, Carry, Refusal};
use ferry_core::route::{self, LoadBalancer, Mode, NameTarget};
use ferry_core::state::{ConfigStore, ProxyState};
use futures::FutureExt;

use crate::hbone::{HbonePool, HboneStream, PoolKey, TunnelError};
use crate::net::connect::ConnectError;
use crate::net::relay::{relay, Peer, Transferred};
use crate::telemetry::metrics::{FailureReason, Reporter};
use crate::telemetry::{ConnectionTelemetry, Parties, Telemetry};
use crate::tracker::{ConnectionTracker, TrackedConnection};

pub mod early;
pub mod socks5;

use early::EarlyData;

/// Why a proxy without mesh credentials carries nothing over HBONE: it
/// refuses such connections before a SOCKS5 client is answered, and on a
/// retry that would need a tunnel.
const NO_MESH_CREDENTIALS: &str = "this proxy has no mesh credentials (HBONE disabled)";

/// Where a client wants to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Address(SocketAddr),
    /// A DNS name (a service name, or a name outside the mesh) and port.
    Name(String, u16),
}

/// Why a connection could not be made; each maps to a SOCKS5 reply.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The decision refuses it: mesh rules, no endpoint, or policy.
    #[error(transparent)]
    Refusal(#[from] Refusal),
    /// A name the mesh points at cannot be resolved, or a headless
    /// service has no ready endpoint.
    #[error("cannot resolve {0}")]
    Unresolved(String),
    /// The proxy cannot carry it (no mesh credentials for HBONE).
    #[error("refused: {0}")]
    Unsupported(&'static str),
    #[error(transparent)]
    Unreachable(#[from] ConnectError),
    #[error("tunnel: {0}")]
    Tunnel(#[from] TunnelError),
}

impl OutboundError {
    /// The failure's reason: the one mapping metrics, logs and the SOCKS5
    /// reply ([`socks5::reply_code`]) all use.
    pub fn reason(&self) -> FailureReason {
        match self {
            OutboundError::Refusal(Refusal::NotConfigured) => FailureReason::NotConfigured,
            OutboundError::Refusal(Refusal::Refused(_)) | OutboundError::Unsupported(_) => {
                FailureReason::Refused
            }
            OutboundError::Refusal(Refusal::NoEndpoints(_)) => FailureReason::NoEndpoints,
            OutboundError::Refusal(Refusal::Denied(_)) => FailureReason::PolicyDenied,
            OutboundError::Unresolved(_) => FailureReason::Unresolved,
            OutboundError::Unreachable(_) => FailureReason::ConnectError,
            OutboundError::Tunnel(e) => match e.root() {
                TunnelError::Tls { .. }
                | TunnelError::Config(_)
                | TunnelError::NoCertificate(_) => FailureReason::TlsFailure,
                TunnelError::Refused { status } if *status == http::StatusCode::FORBIDDEN => {
                    FailureReason::DeniedByDestination
                }
                _ => FailureReason::ConnectError,
            },
        }
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Address(a) => a.fmt(f),
            Destination::Name(name, port) => write!(f, "{name}:{port}"),
        }
    }
}

/// An established upstream.
#[derive(Debug)]
pub enum Upstream {
    Tcp(tokio::net::TcpStream),
    Hbone(HboneStream),
}

/// An upstream and how it was chosen.
#[derive(Debug)]
pub struct Connected {
    pub upstream: Upstream,
    /// Closed when a policy update no longer allows the connection.
    pub tracked: TrackedConnection,
    /// The service's host name, when the destination was a service.
    pub service: Option<Arc<str>>,
    pub endpoint: SocketAddr,
    pub mode: Mode,
    /// Metrics, span and access log of the connection.
    pub telemetry: ConnectionTelemetry,
    /// The client's bytes the upstream was given while it opened
    /// ([`EarlyData`]); the relay carries the rest.
    pub early_bytes: u64,
}

/// The outbound side of a node proxy.
#[derive(Debug)]
pub struct Outbound {
    node: String,
    trust_domain: String,
    store: Arc<ConfigStore>,
    lb: LoadBalancer,
    pool: Option<Arc<HbonePool>>,
    tracker: Arc<ConnectionTracker>,
    telemetry: Arc<Telemetry>,
    connect_timeout: Duration,
    /// Names outside the mesh (shared with the DNS forwarder).
    resolver: Option<hickory_resolver::TokioResolver>,
    /// Connections to pods and beyond keep the client's address where the
    /// node allows it.
    sources: Arc<crate::net::transparent::SourceAddresses>,
}

impl Outbound {
    pub fn new(
        node: impl Into<String>,
        trust_domain: impl Into<String>,
        store: Arc<ConfigStore>,
        pool: Option<Arc<HbonePool>>,
        tracker: Arc<ConnectionTracker>,
        telemetry: Arc<Telemetry>,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            resolver: None,
            sources: Arc::new(crate::net::transparent::SourceAddresses::new(
                Default::default(),
            )),
            node: node.into(),
            trust_domain: trust_domain.into(),
            store,
            lb: LoadBalancer::new(),
            pool,
            tracker,
            telemetry,
            connect_timeout,
        }
    }

    /// Resolves names outside the mesh with `resolver` (the DNS
    /// forwarder's); without one they do not resolve.
    pub fn with_resolver(mut self, resolver: Option<hickory_resolver::TokioResolver>) -> Self {
        self.resolver = resolver;
        self
    }

    /// How connections keep their clients' addresses.
    pub fn with_sources(mut self, sources: Arc<crate::net::transparent::SourceAddresses>) -> Self {
        self.sources = sources;
        self
    }

    /// A name outside the mesh, through the same upstream resolver as the
    /// DNS server's forwarder (its timeout, no /etc/hosts).
    async fn lookup(&self, name: &str, port: u16) -> Result<SocketAddr, OutboundError> {
        let resolver = self
            .resolver
            .as_ref()
            .ok_or_else(|| OutboundError::Unresolved(format!("{name}: no DNS upstream")))?;
        let found = resolver
            .lookup_ip(name)
            .await
            .map_err(|e| OutboundError::Unresolved(format!("{name}: {e}")))?;
        found
            .iter()
            .next()
            .map(|ip| SocketAddr::new(ip, port))
            .ok_or_else(|| OutboundError::Unresolved(name.to_string()))
    }

    pub fn load_balancer(&self) -> &LoadBalancer {
        &self.lb
    }

    /// Resolves a name the way a pod in `namespace` would: a service's
    /// cluster IP, a headless service's first ready pod, an ExternalName's
    /// target; names outside the mesh go to the system resolver.
    async fn resolve(
        &self,
        state: &ProxyState,
        name: &str,
        port: u16,
        namespace: &str,
    ) -> Result<SocketAddr, OutboundError> {
        let Some(service) = route::service_by_name(state, name, namespace) else {
            return self.lookup(name, port).await;
        };
        let unresolved = |what: &str| {
            OutboundError::Unresolved(format!("{name}: {what} {}", service.key_name()))
        };
        match route::name_target(service) {
            NameTarget::External(Some(external)) => self.lookup(external, port).await,
            NameTarget::External(None) => Err(unresolved("no externalName for")),
            NameTarget::ClusterIps(ips) => ips
                .first()
                .map(|ip| SocketAddr::new(*ip, port))
                .ok_or_else(|| unresolved("no cluster IP for")),
            NameTarget::Pods(addresses) => addresses
                .first()
                .map(|ip| SocketAddr::new(*ip, port))
                .ok_or_else(|| unresolved("no ready endpoints for headless service")),
        }
    }

    /// Resolves, decides and connects. `client` is the connecting socket's
    /// address: its IP identifies the source pod. A failure is counted and
    /// logged here; a success carries its telemetry to [`Outbound::relay`].
    ///
    /// The work is boxed: resolving and connecting (the DNS lookup, the
    /// HBONE pool and its CONNECT exchange) hold far more state than
    /// relaying, and inline it would size the caller's future, and so its
    /// task, for the connection's whole life (about 18 KiB per open
    /// connection, measured: docs/benchmarks.md).
    ///
    /// `stream` is the client's connection: its first bytes go out while
    /// an HBONE stream waits for its answer ([`EarlyData`]).
    pub async fn connect(
        &self,
        client: SocketAddr,
        destination: Destination,
        stream: &tokio::net::TcpStream,
    ) -> Result<Connected, OutboundError> {
        Box::pin(self.decide_and_connect(client, destination, stream, std::future::ready)).await
    }

    /// [`Outbound::connect`], calling `admitted` (and awaiting what it
    /// returns) once the connection is decided and allowed here, before
    /// the upstream is opened: SOCKS5 answers its client then, so that the
    /// client's first bytes are on their way while the tunnel opens
    /// (`outbound::socks5`). Every failure after that point (the upstream
    /// unreachable, the destination's proxy refusing) is still counted,
    /// logged and retried here, but the client was already told yes.
    pub async fn connect_announced<F, A>(
        &self,
        client: SocketAddr,
        destination: Destination,
        stream: &tokio::net::TcpStream,
        admitted: F,
    ) -> Result<Connected, OutboundError>
    where
        F: FnOnce(()) -> A,
        A: std::future::Future<Output = ()>,
    {
        Box::pin(self.decide_and_connect(client, destination, stream, admitted)).await
    }

    async fn decide_and_connect<F, A>(
        &self,
        client: SocketAddr,
        destination: Destination,
        stream: &tokio::net::TcpStream,
        admitted_hook: F,
    ) -> Result<Connected, OutboundError>
    where
        F: FnOnce(()) -> A,
        A: std::future::Future<Output = ()>,
    {
        let state = self.store.snapshot();
        let source = state.peer_labels(&client.ip()).cloned();
        let client_pod = state
            .workload_by_ip(&client.ip())
            .filter(|w| w.node.as_deref() == Some(self.node.as_str()));
        let client_is_local_pod = client_pod.is_some();
        let client_in_mesh = client_pod.is_some_and(|w| w.mesh);
        // Beyond this node a connection keeps the pod's address, except a
        // mesh pod's in plaintext to another mesh pod (a node without
        // HBONE): the far proxy refuses plaintext claiming a mesh pod's
        // address, and judges the node's.
        let keeps_address = |endpoint: SocketAddr| {
            client_is_local_pod
                && !(client_in_mesh && state.workload_by_ip(&endpoint.ip()).is_some_and(|w| w.mesh))
        };
        let address = match &destination {
            Destination::Address(address) => Ok(*address),
            Destination::Name(name, port) => {
                let namespace = state
                    .workload_by_ip(&client.ip())
                    .filter(|w| w.node.as_deref() == Some(self.node.as_str()))
                    .map_or("default", |w| &*w.namespace);
                self.resolve(&state, name, *port, namespace).await
            }
        };
        let address = match address {
            Ok(address) => address,
            Err(e) => {
                let parties = Parties {
                    source,
                    ..Parties::default()
                };
                self.telemetry.failure(
                    Reporter::Source,
                    &parties,
                    e.reason(),
                    client,
                    &destination,
                    &e,
                );
                return Err(e);
            }
        };
        let decided = request::decide(
            &state,
            &self.lb,
            &self.node,
            client,
            address,
            Instant::now(),
        );
        let mut parties = Parties {
            source,
            service: decided
                .service
                .and_then(|s| state.service_label(s).cloned()),
            destination: decided
                .endpoint
                .and_then(|e| state.peer_labels(&e.ip()).cloned()),
        };
        let mut target = decided.endpoint.unwrap_or(address);
        let first_node = match &decided.outcome {
            Ok(Admitted {
                carry: Carry::Hbone { node, .. },
                ..
            }) => Some(*node),
            _ => None,
        };
        let mut early = EarlyData::new(stream);
        let result = match decided.outcome {
            // Without mesh credentials nothing can be carried over HBONE:
            // refused here, before anyone is told yes.
            Ok(Admitted {
                carry: Carry::Hbone { .. },
                ..
            }) if self.pool.is_none() => Err(OutboundError::Unsupported(NO_MESH_CREDENTIALS)),
            Ok(mut admitted) => {
                admitted_hook(()).await;
                let mut retried = false;
                loop {
                    let keep = keeps_address(admitted.endpoint);
                    let opened = self
                        .open(
                            client,
                            client_is_local_pod,
                            keep,
                            admitted,
                            &mut parties,
                            &mut early,
                        )
                        .await;
                    // A service's endpoint (or its node's proxy) that
                    // cannot be reached: once, another endpoint of the same
                    // service, on another node when the failure was the
                    // node's proxy. Refusals and TLS failures are not
                    // retried.
                    let e = match opened {
                        Err(e)
                            if !retried
                                && decided.service.is_some()
                                && e.reason() == FailureReason::ConnectError =>
                        {
                            e
                        }
                        other => break other,
                    };
                    // Only when the node's proxy itself failed (connect,
                    // TLS, HTTP/2, its CONNECT reply timing out) is the
                    // whole node avoided; an endpoint its proxy could not
                    // reach is just that endpoint.
                    let failed_node = match &e {
                        OutboundError::Tunnel(TunnelError::Refused { .. }) => None,
                        OutboundError::Tunnel(_) => first_node,
                        _ => None,
                    };
                    let Some(next) =
                        self.another_endpoint(&state, client, address, target, failed_node)
                    else {
                        break Err(e);
                    };
                    // One client connection, one outcome: the failed
                    // attempt is logged, the retry's result is counted.
                    tracing::info!(%client, failed = %target, retry = %next.endpoint, error = %e, "endpoint unreachable: retrying once on another endpoint");
                    target = next.endpoint;
                    parties.destination = state.peer_labels(&target.ip()).cloned();
                    admitted = next;
                    retried = true;
                }
            }
            Err(refusal) => {
                if let Refusal::Denied(_) = refusal {
                    self.tracker.count_denied();
                }
                Err(refusal.into())
            }
        };
        if let Err(e) = &result {
            self.telemetry
                .failure(Reporter::Source, &parties, e.reason(), client, &target, e);
        }
        result
    }

    /// For a retry: the load balancer's next picks for `address`, the
    /// first that is neither `failed` nor carried through `failed_node`
    /// (a few picks at most: round robin reaches another endpoint quickly;
    /// ClientIP affinity keeps answering the same one, and then there is
    /// no retry).
    fn another_endpoint<'s>(
        &self,
        state: &'s ProxyState,
        client: SocketAddr,
        address: SocketAddr,
        failed: SocketAddr,
        failed_node: Option<SocketAddr>,
    ) -> Option<Admitted<'s>> {
        const PICKS: usize = 4;
        (0..PICKS).find_map(|_| {
            let again =
                request::decide(state, &self.lb, &self.node, client, address, Instant::now());
            let admitted = again.outcome.ok()?;
            let via = match admitted.carry {
                Carry::Hbone { node, .. } => Some(node),
                _ => None,
            };
            let elsewhere =
                admitted.endpoint != failed && (failed_node.is_none() || via != failed_node);
            elsewhere.then_some(admitted)
        })
    }

    /// Carries out an admitted decision. The client's early bytes go
    /// with an HBONE stream's CONNECT; bytes an earlier attempt sent are
    /// sent again on this one ([`EarlyData`]).
    async fn open(
        &self,
        client: SocketAddr,
        client_is_local_pod: bool,
        keeps_address: bool,
        admitted: Admitted<'_>,
        parties: &mut Parties,
        early: &mut EarlyData<'_>,
    ) -> Result<Connected, OutboundError> {
        let endpoint = admitted.endpoint;
        let mode = admitted.carry.mode();
        let tracked = self.tracker.track(admitted.check, &self.store);
        // The span starts now so the tunnel can carry it; the connection
        // is counted as opened once the upstream answers.
        let mut telemetry = self.telemetry.begin(
            Reporter::Source,
            parties,
            mode.into(),
            client,
            endpoint,
            None,
        );
        let upstream = match admitted.carry {
            // A pod of this node: it sees the client's address (the reply
            // comes back through this node, which routes it to us).
            Carry::Direct => Upstream::Tcp(
                self.sources
                    .connect(
                        client.ip(),
                        endpoint,
                        client_is_local_pod,
                        self.connect_timeout,
                    )
                    .await?,
            ),
            // Elsewhere: from the client's address only when the client is
            // a pod of this node, whose replies come back here (a client
            // from outside would be answered around this node: kube-proxy
            // masquerades these for the same reason), see `keeps_address`.
            Carry::Passthrough if keeps_address => Upstream::Tcp(
                self.sources
                    .connect(client.ip(), endpoint, false, self.connect_timeout)
                    .await?,
            ),
            Carry::Passthrough => {
                Upstream::Tcp(crate::net::connect::connect(endpoint, self.connect_timeout).await?)
            }
            Carry::Hbone {
                source,
                destination,
                node,
            } => {
                let pool = self
                    .pool
                    .as_ref()
                    .ok_or(OutboundError::Unsupported(NO_MESH_CREDENTIALS))?;
                let key = PoolKey {
                    source: Identity::new(
                        &self.trust_domain,
                        &source.namespace,
                        &source.service_account,
                    ),
                    destination: Identity::new(
                        &self.trust_domain,
                        &destination.namespace,
                        &destination.service_account,
                    ),
                    node,
                };
                Upstream::Hbone(
                    pool.connect(&key, endpoint, client, telemetry.traceparent(), Some(early))
                        .await?,
                )
            }
        };
        let upstream = match upstream {
            Upstream::Tcp(mut tcp) => {
                early
                    .replay(&mut tcp)
                    .await
                    .map_err(|source| ConnectError::Io {
                        address: endpoint,
                        source,
                    })?;
                Upstream::Tcp(tcp)
            }
            hbone => hbone,
        };
        telemetry.established();
        Ok(Connected {
            upstream,
            tracked,
            service: parties.service.as_ref().map(|s| s.host.clone()),
            endpoint,
            mode,
            telemetry,
            early_bytes: early.len(),
        })
    }

    /// Copies between the client and its upstream until both sides are
    /// done, or until a policy update revokes the connection. Built from
    /// the relay, not an `async fn`: that would keep `connected` and
    /// `client` for the connection's life beside the relay holding them.
    pub fn relay(
        client: tokio::net::TcpStream,
        connected: Connected,
    ) -> impl std::future::Future<Output = Transferred> {
        let Connected {
            upstream,
            tracked,
            telemetry,
            early_bytes,
            ..
        } = connected;
        let (peer, slot) = match upstream {
            Upstream::Tcp(upstream) => (Peer::Tcp(upstream), None),
            Upstream::Hbone(stream) => (
                Peer::H2 {
                    send: stream.send,
                    recv: stream.recv,
                },
                // A pooled connection's stream slot is held until the end.
                Some(stream.slot),
            ),
        };
        let revoked = tracked.revoked();
        relay(client, peer, revoked).map(move |(mut transferred, ended)| {
            transferred.from_tcp += early_bytes;
            telemetry.close(transferred.from_tcp, transferred.to_tcp, ended.as_str());
            drop((slot, tracked));
            transferred
        })
    }
}
