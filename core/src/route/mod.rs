//! Service routing, compatible with kube-proxy: what a destination address
//! means, which endpoints may serve it, which one does, and how the
//! connection is carried there.
//!
//! This module is shared by the proxy's data path and `ferryctl route`
//! ([`explain()`]), so the answer ferryctl gives is computed by the code the
//! proxy runs. The decision for one connection, which assembles these
//! rules, is [`crate::request`].
//!
//! # Destinations ([`plan`], TCP only)
//!
//! The first rule that matches wins:
//!
//! 1. A service's cluster IP, load-balancer ingress IP or external IP on one
//!    of the service's TCP ports (matched by `port`). A cluster IP on any
//!    other port is refused, as kube-proxy rejects it; a load-balancer or
//!    external IP on another port is not the service's and falls through
//!    (such addresses are often a node's or a real host's).
//! 2. A node's InternalIP or ExternalIP with the TCP node port of a NodePort
//!    or LoadBalancer service, on any node.
//! 3. A pod IP (headless service backends included): that pod, on the port
//!    dialed.
//! 4. Anything else passes through unchanged.
//!
//! Access through the cluster IP applies the service's
//! `internalTrafficPolicy`; access through a node port, a load-balancer IP or
//! an external IP applies its `externalTrafficPolicy`.
//!
//! # Endpoints ([`eligible`], in [`endpoints`])
//!
//! An endpoint is a candidate for a service port when it serves that port
//! (its resolved target port is known); with policy `Local`, only when it
//! runs on the local node as well. Candidates that are ready are used; when
//! none is ready, the ones that are serving while terminating are used
//! instead (kube-proxy's terminating fallback). Endpoints that are neither
//! are never used. No candidate means the connection is refused.
//!
//! # Choice ([`LoadBalancer`], in [`lb`])
//!
//! Round robin per service. With `sessionAffinity: ClientIP` a client keeps
//! its endpoint while that endpoint stays eligible and the client came back
//! within the timeout (each use restarts the timeout).
//!
//! # Carrying ([`mode_for`])
//!
//! An endpoint on the local node is reached directly; one on another node
//! through that node's proxy over HBONE when both the source and the
//! destination pod are in the mesh and the node has an HBONE address;
//! anything else (a source or a pod outside the mesh, a bare address, an
//! unknown node) by plain passthrough, where the destination node's proxy
//! polices it as inbound plaintext when the destination is in the mesh.
//!
//! # Names ([`names`])
//!
//! Names resolve as a pod's DNS search path would: `name`, `name.ns`,
//! `name.ns.svc` and `name.ns.svc.<cluster domain>`; a headless service
//! names its ready endpoints ([`headless_addresses`]: one rule for DNS,
//! the outbound path and `ferryctl route`).

use std::net::{IpAddr, SocketAddr};

use ferry_api::model::{Protocol, Service, TrafficPolicy, Workload};
use serde::Serialize;

use crate::state::ProxyState;

pub mod endpoints;
mod explain;
pub mod lb;
pub mod names;
#[cfg(test)]
pub(crate) mod tests;

pub use endpoints::{eligible, eligible_for, Eligible, Locality, Topology, Unhinted};
pub use explain::{explain, Explanation, RouteAffinity, RouteEndpoint, RouteMode, RouteTopology};
pub use lb::{Ends, LoadBalancer};
pub use names::{
    headless_addresses, name_target, resolve_fqdn, service_by_name, NameAnswer, NameTarget,
};

/// How the destination was reached, which decides the traffic policy that
/// applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// The service's cluster IP (or its name): `internalTrafficPolicy`.
    ClusterIp,
    /// A node IP and the port's node port: `externalTrafficPolicy`.
    NodePort,
    /// A load-balancer ingress IP: `externalTrafficPolicy`.
    LoadBalancer,
    /// One of the service's `externalIPs`: `externalTrafficPolicy`.
    ExternalIp,
    /// A pod IP: no service, no policy.
    PodIp,
}

/// Where a connection comes from, which decides whether
/// `externalTrafficPolicy: Local` applies to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// A pod of the cluster, or the node itself.
    Cluster,
    /// A client outside the cluster (through a node port, a load-balancer
    /// or an external IP).
    Outside,
}

impl Access {
    /// The traffic policy of `service` that applies to this access from
    /// `origin`. As kube-proxy does, `externalTrafficPolicy: Local` keeps
    /// a connection on the entry node's endpoints only when it comes from
    /// outside the cluster: a pod (or the node itself) reaching a node
    /// port, a load-balancer or an external IP of such a service is sent
    /// to every endpoint, as `Cluster` would (kube-proxy's "pod traffic
    /// for external destinations" rule), so it is never black-holed on a
    /// node without endpoints.
    fn policy(self, service: &Service, origin: Origin) -> TrafficPolicy {
        match self {
            Access::ClusterIp | Access::PodIp => service.internal_traffic_policy,
            Access::NodePort | Access::LoadBalancer | Access::ExternalIp => match origin {
                Origin::Cluster => TrafficPolicy::Cluster,
                Origin::Outside => service.external_traffic_policy,
            },
        }
    }
}

/// What a destination means to the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan<'s> {
    /// A service port: `port` indexes `service.ports`. `policy` is
    /// `internalTrafficPolicy` for [`Access::ClusterIp`],
    /// `externalTrafficPolicy` otherwise.
    Service {
        service: &'s Service,
        port: usize,
        access: Access,
        policy: TrafficPolicy,
        /// For a node port: the node whose address was dialled. As with
        /// kube-proxy, that node handles the connection, so a `Local`
        /// policy means *its* endpoints, not those of the client's node.
        node: Option<&'s str>,
    },
    /// ExternalName service reached by name: connect to `host:port` outside
    /// the mesh.
    ExternalName {
        service: &'s Service,
        host: &'s str,
        port: u16,
    },
    /// A pod IP (includes headless service backends).
    Workload { workload: &'s Workload, port: u16 },
    /// Not known to the mesh: pass through unchanged.
    Passthrough,
    /// Known but cannot be served (e.g. a cluster IP on a port the service
    /// does not define).
    Refused {
        service: Option<&'s Service>,
        reason: String,
    },
}

/// Whether the service has addresses of `ip`'s family: kube-proxy runs one
/// proxier per family, and a single-stack service is unknown to the other
/// one, so its node ports, load-balancer and external IPs of the other
/// family are not the service's. (A service without cluster IPs is taken
/// to serve both.)
fn serves_family(service: &Service, ip: IpAddr) -> bool {
    service.cluster_ips.is_empty()
        || service
            .cluster_ips
            .iter()
            .any(|c| c.is_ipv4() == ip.is_ipv4())
}

/// The index of the service port with this number and protocol TCP.
pub(crate) fn tcp_port(service: &Service, port: u16) -> Option<usize> {
    service
        .ports
        .iter()
        .position(|p| p.port == port && p.protocol == Protocol::Tcp)
}

/// The plan for a service port reached by `access` from `origin` (at
/// `node`'s address for a node port).
pub(crate) fn service_plan<'s>(
    service: &'s Service,
    port: usize,
    access: Access,
    origin: Origin,
    node: Option<&'s str>,
) -> Plan<'s> {
    Plan::Service {
        service,
        port,
        access,
        policy: access.policy(service, origin),
        node,
    }
}

pub(crate) fn no_such_port(service: &Service, port: u16) -> String {
    format!(
        "service {}/{} has no TCP port {port}",
        service.namespace, service.name
    )
}

/// What a destination address means (TCP only) to a connection from
/// `origin`. Order: service cluster IP / load-balancer IP / external IP
/// (matched port by `port` and protocol TCP) -> node IP with a node port
/// -> pod IP -> passthrough.
pub fn plan(state: &ProxyState, origin: Origin, destination: SocketAddr) -> Plan<'_> {
    // A dual-stack socket reports IPv4 peers as IPv4-mapped IPv6.
    let ip = destination.ip().to_canonical();
    let port = destination.port();

    if let Some(service) = state
        .service_by_ip(&ip)
        .filter(|s| s.cluster_ips.contains(&ip) || serves_family(s, ip))
    {
        let access = if service.cluster_ips.contains(&ip) {
            Access::ClusterIp
        } else if service.load_balancer_ips.contains(&ip) {
            Access::LoadBalancer
        } else {
            Access::ExternalIp
        };
        match tcp_port(service, port) {
            Some(index) => return service_plan(service, index, access, origin, None),
            None if access == Access::ClusterIp => {
                return Plan::Refused {
                    service: Some(service),
                    reason: format!("{} (cluster IP {ip})", no_such_port(service, port)),
                }
            }
            // Not the service's port: the address may be a node's or a host's.
            None => {}
        }
    }

    if let Some(node) = state.node_by_ip(&ip) {
        if let Some(service) = state
            .service_by_node_port(port)
            .filter(|s| serves_family(s, ip))
        {
            let index = service
                .ports
                .iter()
                .position(|p| p.node_port == Some(port) && p.protocol == Protocol::Tcp);
            if let Some(index) = index {
                return service_plan(
                    service,
                    index,
                    Access::NodePort,
                    origin,
                    Some(node.name.as_str()),
                );
            }
        }
    }

    if let Some(workload) = state.workload_by_ip(&ip) {
        return Plan::Workload { workload, port };
    }
    Plan::Passthrough
}

/// How a connection to one endpoint is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The endpoint is on this node: connect to it directly.
    Direct,
    /// Through the endpoint node's proxy, over the mTLS tunnel.
    Hbone,
    /// A plain connection to the address, outside the mesh.
    Passthrough,
}

impl Mode {
    /// The lowercase name (as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Hbone => "hbone",
            Mode::Passthrough => "passthrough",
        }
    }
}

/// The carrying of a connection to one endpoint: same node -> Direct;
/// another node and the endpoint's workload is in the mesh
/// (`Workload.mesh`) and that node has an `hbone` address -> Hbone;
/// otherwise (bare address, non-mesh pod, unknown node) -> Passthrough.
pub fn mode_for(
    state: &ProxyState,
    local_node: &str,
    source_in_mesh: bool,
    endpoint_node: Option<&str>,
    endpoint_workload: Option<&str>,
) -> Mode {
    let Some(node) = endpoint_node else {
        return Mode::Passthrough;
    };
    if node == local_node {
        return Mode::Direct;
    }
    if !source_in_mesh {
        // No identity to present: plaintext, policed by the destination.
        return Mode::Passthrough;
    }
    let in_mesh = endpoint_workload
        .and_then(|key| state.workload(key))
        .is_some_and(|w| w.mesh);
    let tunnel = state.node(node).is_some_and(|n| n.hbone.is_some());
    if in_mesh && tunnel {
        Mode::Hbone
    } else {
        Mode::Passthrough
    }
}
