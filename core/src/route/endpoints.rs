//! Which endpoints may serve a service port: kube-proxy's conditions
//! (ready, else serving-and-terminating), traffic policy `Local`, and
//! topology hints.
//!
//! # Topology (kube-proxy's rules)
//!
//! Hints narrow the endpoints of a port whose traffic policy is `Cluster`
//! (a `Local` policy already keeps one node's endpoints). Over the ready
//! endpoints of the port (of the connection's address family):
//!
//! 1. every one has a node hint (`hints.forNodes`) and one names the
//!    serving node: only the endpoints hinted for that node;
//! 2. else every one has a zone hint (`hints.forZones`), the serving node
//!    has a zone (its `topology.kubernetes.io/zone` label) and one
//!    endpoint is hinted for it: only the endpoints hinted for that zone;
//! 3. else every ready endpoint, hints ignored.
//!
//! The serving-and-terminating fallback (no ready endpoint) ignores hints.
//! The hints come from the EndpointSlices (the EndpointSlice controller
//! sets them for `trafficDistribution`), or, for endpoints the control
//! plane derives from a selector, from the same rule the controller
//! applies.

use std::net::{IpAddr, SocketAddr};

use ferry_api::model::{Endpoint, Service, TrafficPolicy};
use serde::Serialize;

use crate::state::ProxyState;

/// Where a service port is served: the node whose endpoints a `Local`
/// policy means, and whose name and zone topology hints are matched
/// against. For a node port it is the node dialled, as with kube-proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locality<'a> {
    pub node: &'a str,
    /// The node's `topology.kubernetes.io/zone` label.
    pub zone: Option<&'a str>,
}

impl<'a> Locality<'a> {
    /// `node` with its zone as the configuration knows it.
    pub fn of(state: &'a ProxyState, node: &'a str) -> Self {
        Self {
            node,
            zone: state.node(node).and_then(|n| n.zone.as_deref()),
        }
    }
}

/// A node without a zone.
impl<'a> From<&'a str> for Locality<'a> {
    fn from(node: &'a str) -> Self {
        Self { node, zone: None }
    }
}

/// How topology narrowed a port's endpoints (what `ferryctl route` shows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", content = "value", rename_all = "snake_case")]
pub enum Topology<'s> {
    /// Only endpoints hinted for this node (`hints.forNodes`).
    SameNode(&'s str),
    /// Only endpoints hinted for this zone (`hints.forZones`).
    SameZone(&'s str),
    /// Every eligible endpoint, and why hints did not apply.
    Everywhere(Unhinted),
}

/// Why topology hints did not narrow the endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unhinted {
    /// Traffic policy `Local`: the node's own endpoints, hints unused.
    LocalPolicy,
    /// No ready endpoint carries a hint.
    NoHints,
    /// Some ready endpoints carry hints, others do not.
    MissingHint,
    /// Endpoints are hinted by zone but the serving node has no zone label.
    NodeWithoutZone,
    /// No ready endpoint is hinted for the serving node's zone.
    NoneForZone,
    /// No endpoint is ready: the serving-and-terminating fallback ignores
    /// hints.
    Fallback,
}

impl Topology<'_> {
    /// One line for people: "zone eu-1a (hints)", "every zone: ...".
    pub fn describe(&self) -> String {
        match self {
            Topology::SameNode(node) => format!("node {node} only (hints.forNodes)"),
            Topology::SameZone(zone) => format!("zone {zone} only (hints.forZones)"),
            Topology::Everywhere(why) => format!(
                "every zone: {}",
                match why {
                    Unhinted::LocalPolicy => "traffic policy Local keeps the node's endpoints",
                    Unhinted::NoHints => "no topology hints",
                    Unhinted::MissingHint =>
                        "one or more ready endpoints have no hint, so hints are ignored",
                    Unhinted::NodeWithoutZone =>
                        "the node has no topology.kubernetes.io/zone label, so hints are ignored",
                    Unhinted::NoneForZone =>
                        "no ready endpoint is hinted for the node's zone (fallback to all)",
                    Unhinted::Fallback =>
                        "no endpoint is ready; serving terminating endpoints ignore hints",
                }
            ),
        }
    }
}

/// The endpoints a service port may use (see [`eligible`]). A view over the
/// service's endpoint list: `Copy`, and nothing is allocated.
#[derive(Debug, Clone, Copy)]
pub struct Eligible<'s> {
    /// The service's endpoints; empty when policy Local leaves none.
    endpoints: &'s [Endpoint],
    port: usize,
    /// With policy Local, the local node's name (as spelled by an endpoint).
    node: Option<&'s str>,
    /// Ready endpoints (`true`) or, none being ready, the serving and
    /// terminating ones (`false`).
    ready: bool,
    /// Only endpoints of this address family (`true`: IPv4), when the
    /// connection's destination says which: a dual-stack service is
    /// served per family, as kube-proxy runs one proxier per family.
    ipv4: Option<bool>,
    /// Topology hints in force (ready endpoints only).
    topology: Topology<'s>,
    len: usize,
}

impl<'s> Eligible<'s> {
    /// Serves the port, and runs on the local node when the policy is Local.
    fn candidate(&self, endpoint: &Endpoint) -> bool {
        matches!(endpoint.ports.get(self.port), Some(Some(_)))
            && self
                .node
                .is_none_or(|node| endpoint.node.as_deref() == Some(node))
            && self.ipv4.is_none_or(|v4| endpoint.address.is_ipv4() == v4)
    }

    fn admits(&self, endpoint: &Endpoint) -> bool {
        self.candidate(endpoint)
            && if self.ready {
                endpoint.ready
                    && match self.topology {
                        Topology::SameNode(node) => {
                            endpoint.node_hints.iter().any(|n| **n == *node)
                        }
                        Topology::SameZone(zone) => {
                            endpoint.zone_hints.iter().any(|z| **z == *zone)
                        }
                        Topology::Everywhere(_) => true,
                    }
            } else {
                endpoint.serving && endpoint.terminating
            }
    }

    /// Which topology hints narrowed the set.
    pub fn topology(&self) -> Topology<'s> {
        self.topology
    }

    /// kube-proxy's topology decision over the ready candidates. The hint
    /// named is borrowed from the service, so the view owns nothing.
    fn topology_for(&self, at: Locality<'_>) -> Topology<'s> {
        let ready = || {
            let this = *self;
            this.endpoints
                .iter()
                .filter(move |e| this.candidate(e) && e.ready)
        };
        let mut any = false;
        let (mut all_node, mut all_zone, mut some_hint) = (true, true, false);
        let (mut for_node, mut for_zone): (Option<&'s str>, Option<&'s str>) = (None, None);
        for e in ready() {
            any = true;
            some_hint |= !e.node_hints.is_empty() || !e.zone_hints.is_empty();
            all_node &= !e.node_hints.is_empty();
            all_zone &= !e.zone_hints.is_empty();
            if for_node.is_none() {
                for_node = e.node_hints.iter().find(|n| ***n == *at.node).map(|n| &**n);
            }
            if let (None, Some(zone)) = (for_zone, at.zone) {
                for_zone = e.zone_hints.iter().find(|z| ***z == *zone).map(|z| &**z);
            }
        }
        if !any {
            return Topology::Everywhere(Unhinted::Fallback);
        }
        if let (true, Some(node)) = (all_node, for_node) {
            return Topology::SameNode(node);
        }
        if !some_hint {
            return Topology::Everywhere(Unhinted::NoHints);
        }
        if !all_zone {
            return Topology::Everywhere(Unhinted::MissingHint);
        }
        match (at.zone, for_zone) {
            (_, Some(zone)) => Topology::SameZone(zone),
            (None, None) => Topology::Everywhere(Unhinted::NodeWithoutZone),
            (Some(_), None) => Topology::Everywhere(Unhinted::NoneForZone),
        }
    }

    /// How many endpoints are eligible.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no endpoint is eligible.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The `i`-th eligible endpoint, in the service's order.
    pub fn get(&self, i: usize) -> Option<&'s Endpoint> {
        self.iter().nth(i)
    }

    /// The eligible endpoints, in the service's order.
    pub fn iter(&self) -> impl Iterator<Item = &'s Endpoint> {
        let this = *self;
        this.endpoints.iter().filter(move |e| this.admits(e))
    }

    /// True when the endpoint with this address is eligible.
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.find(addr).is_some()
    }

    /// The eligible endpoint at this address and target port.
    pub(crate) fn find_target(&self, target: SocketAddr) -> Option<&'s Endpoint> {
        self.iter().find(|e| self.target(e) == Some(target))
    }

    /// An endpoint's address with its target port for this service port.
    pub(crate) fn target(&self, endpoint: &Endpoint) -> Option<SocketAddr> {
        let port = endpoint.ports.get(self.port).copied().flatten()?;
        Some(SocketAddr::new(endpoint.address, port))
    }

    pub(crate) fn find(&self, addr: IpAddr) -> Option<&'s Endpoint> {
        self.iter().find(|e| e.address == addr)
    }
}

/// Endpoints a service port may use, kube-proxy rules: only endpoints that
/// serve that port (`ports[port]` is `Some`); with policy Local only
/// endpoints whose node is `at`'s; the ready ones, narrowed by topology
/// hints (see the module); if none is ready, the serving-and-terminating
/// ones (fallback); never unready non-serving ones. Allocates nothing.
/// Every address family ([`eligible_for`] keeps one).
pub fn eligible<'s, 'a>(
    service: &'s Service,
    port: usize,
    policy: TrafficPolicy,
    at: impl Into<Locality<'a>>,
) -> Eligible<'s> {
    eligible_in(service, port, policy, at.into(), None)
}

/// [`eligible`] for a connection to `destination`: only endpoints of its
/// address family (a dual-stack service is served per family).
pub fn eligible_for<'s, 'a>(
    service: &'s Service,
    port: usize,
    policy: TrafficPolicy,
    at: impl Into<Locality<'a>>,
    destination: IpAddr,
) -> Eligible<'s> {
    eligible_in(
        service,
        port,
        policy,
        at.into(),
        Some(destination.to_canonical().is_ipv4()),
    )
}

fn eligible_in<'s>(
    service: &'s Service,
    port: usize,
    policy: TrafficPolicy,
    at: Locality<'_>,
    ipv4: Option<bool>,
) -> Eligible<'s> {
    let local_node = at.node;
    let mut set = Eligible {
        endpoints: &service.endpoints,
        port,
        node: None,
        ready: true,
        ipv4,
        topology: Topology::Everywhere(Unhinted::LocalPolicy),
        len: 0,
    };
    if policy == TrafficPolicy::Local {
        // Borrow the node name from the service so the view lives as long as
        // the service; no endpoint on the local node means none is eligible.
        let local = service
            .endpoints
            .iter()
            .find_map(|e| e.node.as_deref().filter(|n| *n == local_node));
        match local {
            Some(node) => set.node = Some(node),
            None => {
                set.endpoints = &[];
                return set;
            }
        }
    } else {
        set.topology = set.topology_for(at);
    }
    set.len = set.iter().count();
    if set.len == 0 {
        set.ready = false;
        if policy != TrafficPolicy::Local {
            set.topology = Topology::Everywhere(Unhinted::Fallback);
        }
        set.len = set.iter().count();
    }
    set
}

/// Why a service port has no eligible endpoint: "no ready endpoints for
/// ns/name:port: ...".
pub(crate) fn no_endpoints(
    service: &Service,
    port: usize,
    policy: TrafficPolicy,
    at: Locality<'_>,
) -> String {
    let local_node = at.node;
    let key = format!("{}/{}", service.namespace, service.name);
    let Some(service_port) = service.ports.get(port) else {
        return format!("service {key} has no port #{port}");
    };
    let prefix = format!("no ready endpoints for {key}:{}", service_port.port);
    let serving: Vec<&Endpoint> = service
        .endpoints
        .iter()
        .filter(|e| matches!(e.ports.get(port), Some(Some(_))))
        .collect();
    if service.endpoints.is_empty() {
        return format!("{prefix}: the service has no endpoints");
    }
    if serving.is_empty() {
        return format!("{prefix}: no endpoint serves this port");
    }
    if policy == TrafficPolicy::Local {
        let local = serving
            .iter()
            .filter(|e| e.node.as_deref() == Some(local_node))
            .count();
        if local == 0 {
            return format!(
                "{prefix}: none of its {} endpoints is on node {local_node} (traffic policy Local)",
                serving.len()
            );
        }
        return format!(
            "{prefix}: none of its {local} endpoints on node {local_node} is ready or serving while terminating (traffic policy Local)"
        );
    }
    format!(
        "{prefix}: none of its {} endpoints is ready or serving while terminating",
        serving.len()
    )
}
