//! `ferryctl route`: every candidate a connection could take, computed by
//! the same rules the proxy runs ([`super::plan`], [`eligible`],
//! [`mode_for`]). The table and JSON output are ferryctl's.

use std::net::{IpAddr, SocketAddr};

use ferry_api::model::{Name, Service, Workload};
use serde::Serialize;

use super::endpoints::{eligible, eligible_for, no_endpoints, Locality, Topology};
use super::names::{name_target, service_by_name, NameTarget};
use super::{mode_for, no_such_port, plan, service_plan, tcp_port, Access, Mode, Origin, Plan};
use crate::state::ProxyState;

/// What `ferryctl route` reports for a whole route: how its endpoints are
/// reached, or that it is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteMode {
    Direct,
    Hbone,
    Passthrough,
    /// No endpoint may serve it, or the destination is refused.
    Refused,
}

impl From<Mode> for RouteMode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Direct => RouteMode::Direct,
            Mode::Hbone => RouteMode::Hbone,
            Mode::Passthrough => RouteMode::Passthrough,
        }
    }
}

impl RouteMode {
    /// The lowercase name (as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            RouteMode::Refused => "refused",
            RouteMode::Direct => "direct",
            RouteMode::Hbone => "hbone",
            RouteMode::Passthrough => "passthrough",
        }
    }
}

/// `sessionAffinity` of an explained route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteAffinity {
    /// Always `ClientIP`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub timeout_seconds: u32,
}

/// One endpoint of an explained route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteEndpoint {
    /// `namespace/name` of its pod; `None` for a bare address.
    pub pod: Option<Name>,
    pub address: IpAddr,
    /// The port connected to (the resolved target port).
    pub port: u16,
    pub node: Option<Name>,
    /// The zone of its node, when known.
    pub zone: Option<Name>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub mode: Mode,
}

/// `ferryctl route`'s answer, computed by the proxy's own code. Serializes
/// to `{"service", "mode", "reason", "affinity", "external_name",
/// "endpoints", "topology"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// `namespace/name` of the service, when one is involved.
    pub service: Option<String>,
    /// `refused` when there is no candidate or the destination is refused;
    /// `passthrough` for unknown destinations and ExternalName services; for
    /// a pod, that pod's mode; for a service, `direct` when every candidate
    /// is on the source's node, else `hbone` when any candidate is reached
    /// over HBONE, else `passthrough`.
    pub mode: RouteMode,
    /// Why it is refused (or passed through).
    pub reason: Option<String>,
    pub affinity: Option<RouteAffinity>,
    /// The host an ExternalName service points at.
    pub external_name: Option<String>,
    /// Every candidate [`eligible`] allows, or the one pod.
    pub endpoints: Vec<RouteEndpoint>,
    /// For a service port: how topology hints narrowed its endpoints.
    pub topology: Option<RouteTopology>,
}

/// The topology decision of an explained route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteTopology {
    /// The node that serves the connection and its zone.
    pub node: String,
    pub zone: Option<String>,
    /// `same_node`, `same_zone` or `everywhere`.
    pub decision: &'static str,
    /// The service's `trafficDistribution`, when set.
    pub traffic_distribution: Option<String>,
    /// One line for people.
    pub summary: String,
}

impl RouteTopology {
    fn new(service: &Service, at: Locality<'_>, topology: Topology<'_>) -> Self {
        Self {
            node: at.node.to_owned(),
            zone: at.zone.map(str::to_owned),
            decision: match topology {
                Topology::SameNode(_) => "same_node",
                Topology::SameZone(_) => "same_zone",
                Topology::Everywhere(_) => "everywhere",
            },
            traffic_distribution: service.traffic_distribution.clone(),
            summary: topology.describe(),
        }
    }
}

impl Explanation {
    fn bare(mode: RouteMode, service: Option<&Service>, reason: Option<String>) -> Self {
        Self {
            service: service.map(Service::key_name),
            mode,
            reason,
            affinity: None,
            external_name: None,
            endpoints: Vec::new(),
            topology: None,
        }
    }
}

/// Splits `HOST:PORT` (`[v6]:PORT` accepted).
fn split_host_port(to: &str) -> Result<(&str, u16), String> {
    let (host, port) = to
        .rsplit_once(':')
        .ok_or_else(|| format!("{to:?}: expected HOST:PORT"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(format!("{to:?}: expected HOST:PORT, the host is empty"));
    }
    match port.parse::<u16>() {
        Ok(port) if port != 0 => Ok((host, port)),
        _ => Err(format!("{to:?}: {port:?} is not a port number (1-65535)")),
    }
}

/// The plan for a service reached by name, and the pod IP dialed when the
/// name is a headless service's.
fn plan_by_name<'s>(
    state: &'s ProxyState,
    service: &'s Service,
    port: u16,
) -> (Plan<'s>, Option<IpAddr>) {
    let key = || format!("{}/{}", service.namespace, service.name);
    match name_target(service) {
        NameTarget::External(Some(host)) => {
            return (
                Plan::ExternalName {
                    service,
                    host,
                    port,
                },
                None,
            )
        }
        NameTarget::External(None) => {
            return (
                Plan::Refused {
                    service: Some(service),
                    reason: format!("ExternalName service {} has no externalName", key()),
                },
                None,
            )
        }
        // DNS answers with the pods' IPs; the client dials the port as is.
        NameTarget::Pods(addresses) => {
            return match addresses.first() {
                Some(&address) => (
                    plan(state, Origin::Cluster, SocketAddr::new(address, port)),
                    Some(address),
                ),
                None => (
                    Plan::Refused {
                        service: Some(service),
                        reason: format!("headless service {} has no ready endpoints", key()),
                    },
                    None,
                ),
            }
        }
        NameTarget::ClusterIps(_) => {}
    }
    match tcp_port(service, port) {
        Some(index) => (
            service_plan(service, index, Access::ClusterIp, Origin::Cluster, None),
            None,
        ),
        None => (
            Plan::Refused {
                service: Some(service),
                reason: no_such_port(service, port),
            },
            None,
        ),
    }
}

/// Explains where a connection from `from` to `to` goes. `to` is
/// `HOST:PORT` where HOST is an IP or a DNS name (resolved with
/// [`service_by_name`] in the source pod's namespace; a headless service
/// name resolves to its first eligible endpoint's pod; ExternalName gives an
/// ExternalName plan). `from` is the source workload, for its namespace and
/// node (the local node).
pub fn explain(state: &ProxyState, from: &Workload, to: &str) -> Result<Explanation, String> {
    let local_node = from
        .node
        .as_deref()
        .ok_or_else(|| format!("pod {} is not scheduled on a node", from.key))?;
    let (host, port) = split_host_port(to)?;
    let (route, via, dialed) = match host.parse::<IpAddr>() {
        Ok(ip) => {
            let ip = ip.to_canonical();
            (
                plan(state, Origin::Cluster, SocketAddr::new(ip, port)),
                None,
                Some(ip),
            )
        }
        Err(_) => match service_by_name(state, host, &from.namespace) {
            Some(service) => {
                let (route, dialed) = plan_by_name(state, service, port);
                (route, Some(service), dialed)
            }
            None => {
                return Ok(Explanation::bare(
                    RouteMode::Passthrough,
                    None,
                    Some(format!(
                        "{host} is not a service name known to the mesh (from namespace {}): \
                         the connection goes to whatever DNS answers, unchanged",
                        from.namespace
                    )),
                ))
            }
        },
    };

    Ok(match route {
        Plan::Passthrough => {
            let reason = match (via, dialed) {
                (Some(service), Some(address)) => format!(
                    "headless service {} resolves to {address}, not a pod in the mesh: \
                     passed through unchanged",
                    service.key_name()
                ),
                _ => format!(
                    "{host}:{port} is not a service, node port or pod known to the mesh: \
                     passed through unchanged"
                ),
            };
            Explanation::bare(RouteMode::Passthrough, via, Some(reason))
        }
        Plan::Refused { service, reason } => {
            Explanation::bare(RouteMode::Refused, service.or(via), Some(reason))
        }
        Plan::ExternalName { service, host, .. } => Explanation {
            external_name: Some(host.to_owned()),
            ..Explanation::bare(RouteMode::Passthrough, Some(service), None)
        },
        Plan::Workload { workload, port } => {
            let key = &workload.key;
            let mode = mode_for(
                state,
                local_node,
                from.mesh,
                workload.node.as_deref(),
                Some(key),
            );
            let address = dialed.or_else(|| workload.addresses.first().copied());
            Explanation {
                endpoints: address
                    .map(|address| RouteEndpoint {
                        pod: Some(key.clone()),
                        address,
                        port,
                        node: workload.node.clone(),
                        zone: workload
                            .node
                            .as_deref()
                            .and_then(|n| state.node(n)?.zone.as_deref().map(Name::from)),
                        ready: workload.ready,
                        serving: workload.ready,
                        terminating: workload.terminating,
                        mode,
                    })
                    .into_iter()
                    .collect(),
                ..Explanation::bare(mode.into(), via, None)
            }
        }
        Plan::Service {
            service,
            port,
            policy,
            node,
            ..
        } => {
            let serving_node = node.unwrap_or(local_node);
            let at = Locality::of(state, serving_node);
            // The family the data path would use: the address dialled, or
            // the cluster IP a name resolves to first.
            let set = match dialed.or_else(|| service.cluster_ips.first().copied()) {
                Some(destination) => eligible_for(service, port, policy, at, destination),
                None => eligible(service, port, policy, at),
            };
            let endpoints: Vec<RouteEndpoint> = set
                .iter()
                .filter_map(|e| {
                    Some(RouteEndpoint {
                        pod: e.workload.clone(),
                        address: e.address,
                        port: e.ports.get(port).copied().flatten()?,
                        node: e.node.clone(),
                        zone: e.zone.clone(),
                        ready: e.ready,
                        serving: e.serving,
                        terminating: e.terminating,
                        mode: mode_for(
                            state,
                            local_node,
                            from.mesh,
                            e.node.as_deref(),
                            e.workload.as_deref(),
                        ),
                    })
                })
                .collect();
            let (mode, reason) = if endpoints.is_empty() {
                (
                    RouteMode::Refused,
                    Some(no_endpoints(service, port, policy, at)),
                )
            } else if endpoints
                .iter()
                .all(|e| e.node.as_deref() == Some(local_node))
            {
                (RouteMode::Direct, None)
            } else if endpoints.iter().any(|e| e.mode == Mode::Hbone) {
                (RouteMode::Hbone, None)
            } else {
                (RouteMode::Passthrough, None)
            };
            Explanation {
                affinity: service
                    .client_ip_affinity
                    .map(|timeout_seconds| RouteAffinity {
                        kind: "ClientIP",
                        timeout_seconds,
                    }),
                endpoints,
                topology: Some(RouteTopology::new(service, at, set.topology())),
                ..Explanation::bare(mode, Some(service), reason)
            }
        }
    })
}
