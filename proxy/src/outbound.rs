//! The outbound path: from a client's connection and its original
//! destination to an upstream connection.
//!
//! One entry point, [`Outbound::connect`], serves the SOCKS5 listener today
//! and transparent capture later: resolve the destination with the
//! kube-proxy rules of [`crate::route`], pick an endpoint (round robin,
//! ClientIP affinity), then connect directly (same node, or a destination
//! outside the mesh) or through an HBONE tunnel to the destination node's
//! proxy, presenting the source workload's identity.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_api::identity::Identity;
use tokio::net::TcpStream;

use crate::policy::{Check, ConnectionTracker, TrackedConnection};
use crate::route::{self, LoadBalancer, Mode, Plan};
use crate::state::{ConfigStore, ProxyState};
use crate::telemetry::metrics::{FailureReason, Reporter};
use crate::telemetry::{ConnectionTelemetry, Parties, Telemetry};
use crate::tunnel::{HbonePool, HboneStream, PoolKey, TunnelError};

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
    /// The mesh rules refuse it (no endpoints, unknown service port...).
    #[error("refused: {0}")]
    Refused(String),
    /// A NetworkPolicy does not allow it.
    #[error("denied by policy: {0}")]
    Denied(String),
    /// The service has no endpoint that may serve the connection.
    #[error("refused: {0}")]
    NoEndpoints(String),
    /// Name resolution failed.
    #[error("cannot resolve {0}")]
    Unresolved(String),
    #[error("cannot connect to {address}: {reason}")]
    Unreachable { address: SocketAddr, reason: String },
    #[error("tunnel: {0}")]
    Tunnel(#[from] TunnelError),
}

impl OutboundError {
    /// The failure as metrics count it.
    pub fn reason(&self) -> FailureReason {
        match self {
            OutboundError::Refused(_) => FailureReason::Refused,
            OutboundError::NoEndpoints(_) => FailureReason::NoEndpoints,
            OutboundError::Denied(_) => FailureReason::PolicyDenied,
            OutboundError::Unresolved(_) => FailureReason::Unresolved,
            OutboundError::Unreachable { .. } => FailureReason::ConnectError,
            OutboundError::Tunnel(e) => match e {
                TunnelError::Tls { .. }
                | TunnelError::Config(_)
                | TunnelError::NoCertificate(_) => FailureReason::TlsFailure,
                TunnelError::Refused { status } if *status == http::StatusCode::FORBIDDEN => {
                    FailureReason::PolicyDenied
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
    Tcp(TcpStream),
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
}

struct Choice {
    service: Option<Arc<str>>,
    endpoint: SocketAddr,
    mode: Mode,
    hbone: Option<(Identity, SocketAddr)>,
}

impl Outbound {
    pub fn new(
        node: impl Into<String>,
        trust_domain: impl Into<String>,
        store: Arc<ConfigStore>,
        pool: Option<Arc<HbonePool>>,
        tracker: Arc<ConnectionTracker>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        Self {
            node: node.into(),
            trust_domain: trust_domain.into(),
            store,
            lb: LoadBalancer::new(),
            pool,
            tracker,
            telemetry,
            connect_timeout: Duration::from_secs(5),
        }
    }

    pub fn load_balancer(&self) -> &LoadBalancer {
        &self.lb
    }

    /// Resolves a name the way a pod in `namespace` would; names outside the
    /// mesh go to the system resolver.
    async fn resolve(
        &self,
        state: &ProxyState,
        name: &str,
        port: u16,
        namespace: &str,
    ) -> Result<SocketAddr, OutboundError> {
        if let Some(service) = route::service_by_name(state, name, namespace) {
            if let Some(external) = &service.external_name {
                return lookup(external, port).await;
            }
            if let Some(ip) = service.cluster_ips.first() {
                return Ok(SocketAddr::new(*ip, port));
            }
            // Headless: DNS would answer with the ready pods' addresses.
            let ready = service
                .endpoints
                .iter()
                .find(|e| e.ready)
                .or_else(|| service.endpoints.iter().find(|e| e.serving))
                .ok_or_else(|| {
                    OutboundError::Refused(format!(
                        "headless service {} has no ready endpoints",
                        service.key_name()
                    ))
                })?;
            return Ok(SocketAddr::new(ready.address, port));
        }
        lookup(name, port).await
    }

    fn choose(
        &self,
        state: &ProxyState,
        client: SocketAddr,
        source_in_mesh: bool,
        destination: SocketAddr,
    ) -> Result<Choice, OutboundError> {
        let (service, endpoint, endpoint_node, endpoint_workload) =
            match route::plan(state, destination) {
                Plan::Service {
                    service,
                    port,
                    policy,
                    node,
                    ..
                } => {
                    let serving_node = node.unwrap_or(&self.node);
                    let (endpoint, address) = self
                        .lb
                        .pick(
                            service,
                            port,
                            policy,
                            serving_node,
                            client.ip(),
                            Instant::now(),
                        )
                        .map_err(OutboundError::NoEndpoints)?;
                    (
                        state.service_label(service).cloned(),
                        address,
                        endpoint.node.as_deref(),
                        endpoint.workload.as_deref(),
                    )
                }
                Plan::Workload { workload, port } => (
                    None,
                    SocketAddr::new(destination.ip(), port),
                    workload.node.as_deref(),
                    state
                        .workload_entry_by_ip(&destination.ip())
                        .map(|(key, _)| key),
                ),
                Plan::ExternalName { .. } | Plan::Passthrough => {
                    return Ok(Choice {
                        service: None,
                        endpoint: destination,
                        mode: Mode::Passthrough,
                        hbone: None,
                    })
                }
                Plan::Refused { reason, .. } => return Err(OutboundError::Refused(reason)),
            };
        // Bare endpoint addresses may still belong to a known pod. Keys are
        // borrowed from the snapshot: choosing allocates nothing.
        let workload_key = endpoint_workload.or_else(|| {
            state
                .workload_entry_by_ip(&endpoint.ip())
                .map(|(key, _)| key)
        });
        let mode = route::mode_for(
            state,
            &self.node,
            source_in_mesh,
            endpoint_node,
            workload_key,
        );
        let hbone = if mode == Mode::Hbone {
            let workload = workload_key
                .and_then(|k| state.workload(k))
                .ok_or_else(|| OutboundError::Refused(format!("no workload behind {endpoint}")))?;
            let node = endpoint_node
                .and_then(|n| state.node(n))
                .and_then(|n| n.hbone)
                .ok_or_else(|| {
                    OutboundError::Refused(format!("node of {endpoint} has no HBONE address"))
                })?;
            Some((
                Identity::new(
                    &self.trust_domain,
                    &workload.namespace,
                    &workload.service_account,
                ),
                node,
            ))
        } else {
            None
        };
        Ok(Choice {
            service,
            endpoint,
            mode,
            hbone,
        })
    }

    /// Resolves, picks and connects. `client` is the connecting socket's
    /// address: its IP identifies the source pod. A failure is counted and
    /// logged here; a success carries its telemetry to [`Outbound::relay`].
    pub async fn connect(
        &self,
        client: SocketAddr,
        destination: Destination,
    ) -> Result<Connected, OutboundError> {
        let state = self.store.snapshot();
        let mut parties = Parties {
            source: state.peer_labels(&client.ip()).cloned(),
            ..Parties::default()
        };
        let mut target = None;
        let connected = self
            .connect_with(&state, client, &destination, &mut parties, &mut target)
            .await;
        if let Err(e) = &connected {
            let target: &dyn std::fmt::Display = match &target {
                Some(address) => address,
                None => &destination,
            };
            self.telemetry
                .failure(Reporter::Source, &parties, e.reason(), client, target, e);
        }
        connected
    }

    async fn connect_with(
        &self,
        state: &ProxyState,
        client: SocketAddr,
        destination: &Destination,
        parties: &mut Parties,
        target: &mut Option<SocketAddr>,
    ) -> Result<Connected, OutboundError> {
        let source = state
            .workload_by_ip(&client.ip())
            .filter(|w| w.node.as_deref() == Some(self.node.as_str()));
        let destination = match destination {
            Destination::Address(address) => *address,
            Destination::Name(name, port) => {
                let namespace = source.map_or("default", |w| w.namespace.as_str());
                self.resolve(state, name, *port, namespace).await?
            }
        };
        *target = Some(destination);
        if let Some(service) = state.service_by_ip(&destination.ip()) {
            parties.service = state.service_label(service).cloned();
        }
        let choice = self.choose(state, client, source.is_some_and(|w| w.mesh), destination)?;
        *target = Some(choice.endpoint);
        parties.service = choice.service.clone().or(parties.service.take());
        parties.destination = state.peer_labels(&choice.endpoint.ip()).cloned();
        // Egress is judged here, on the source's node; ingress too when the
        // destination is on this node (no other proxy sees the connection).
        let check = Check {
            source: client.ip(),
            destination: choice.endpoint.ip(),
            port: choice.endpoint.port(),
            egress: true,
            ingress: choice.mode == Mode::Direct,
        };
        if let Err(reason) = check.allowed(state) {
            self.tracker
                .denied
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(OutboundError::Denied(reason));
        }
        let tracked = self.tracker.track(check);
        // The span starts now so the tunnel can carry it; the connection
        // is counted as opened once the upstream answers.
        let mut telemetry = self.telemetry.begin(
            Reporter::Source,
            parties,
            choice.mode.into(),
            client,
            choice.endpoint,
            None,
        );
        let upstream = match choice.hbone {
            None => Upstream::Tcp(self.connect_tcp(choice.endpoint).await?),
            Some((destination_identity, node)) => {
                let source = source.ok_or_else(|| {
                    OutboundError::Refused(format!(
                        "source {} is not a mesh workload on node {}: it has no identity for mTLS",
                        client.ip(),
                        self.node
                    ))
                })?;
                let pool = self.pool.as_ref().ok_or_else(|| {
                    OutboundError::Refused(
                        "this proxy has no mesh credentials (HBONE disabled)".into(),
                    )
                })?;
                let key = PoolKey {
                    source: Identity::new(
                        &self.trust_domain,
                        &source.namespace,
                        &source.service_account,
                    ),
                    destination: destination_identity,
                    node,
                };
                Upstream::Hbone(
                    pool.connect(&key, choice.endpoint, client, telemetry.traceparent())
                        .await?,
                )
            }
        };
        telemetry.established();
        Ok(Connected {
            upstream,
            tracked,
            service: choice.service,
            endpoint: choice.endpoint,
            mode: choice.mode,
            telemetry,
        })
    }

    async fn connect_tcp(&self, address: SocketAddr) -> Result<TcpStream, OutboundError> {
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| OutboundError::Unreachable {
                address,
                reason: "timed out".into(),
            })?
            .map_err(|e| OutboundError::Unreachable {
                address,
                reason: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    /// Copies between the client and its upstream until both sides are done.
    /// Copies between the client and its upstream until both sides are
    /// done, or until a policy update revokes the connection.
    pub async fn relay(mut client: TcpStream, connected: Connected) -> (u64, u64) {
        let tracked = connected.tracked;
        let telemetry = connected.telemetry;
        let copy = async move {
            match connected.upstream {
                Upstream::Tcp(mut upstream) => {
                    tokio::io::copy_bidirectional(&mut client, &mut upstream)
                        .await
                        .unwrap_or((0, 0))
                }
                Upstream::Hbone(stream) => {
                    let _slot = stream.slot;
                    crate::tunnel::splice(client, stream.send, stream.recv).await
                }
            }
        };
        let (copied, outcome) = tokio::select! {
            copied = copy => (copied, "completed"),
            _ = tracked.revoked() => ((0, 0), "revoked by policy"),
        };
        telemetry.close(copied.0, copied.1, outcome);
        copied
    }
}

async fn lookup(name: &str, port: u16) -> Result<SocketAddr, OutboundError> {
    tokio::net::lookup_host((name, port))
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| OutboundError::Unresolved(name.to_string()))
}
