//! Which endpoints may serve a service port: kube-proxy's conditions
//! (ready, else serving-and-terminating) and traffic policy `Local`.

use std::net::IpAddr;

use ferry_api::model::{Endpoint, Service, TrafficPolicy};

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
            } else {
                endpoint.serving && endpoint.terminating
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

    pub(crate) fn find(&self, addr: IpAddr) -> Option<&'s Endpoint> {
        self.iter().find(|e| e.address == addr)
    }
}

/// Endpoints a service port may use, kube-proxy rules: only endpoints that
/// serve that port (`ports[port]` is `Some`); with policy Local only
/// endpoints whose node is `local_node`; the ready ones; if none is ready,
/// the serving-and-terminating ones (fallback); never unready non-serving
/// ones. Allocates nothing. Every address family ([`eligible_for`] keeps
/// one).
pub fn eligible<'s>(
    service: &'s Service,
    port: usize,
    policy: TrafficPolicy,
    local_node: &str,
) -> Eligible<'s> {
    eligible_in(service, port, policy, local_node, None)
}

/// [`eligible`] for a connection to `destination`: only endpoints of its
/// address family (a dual-stack service is served per family).
pub fn eligible_for<'s>(
    service: &'s Service,
    port: usize,
    policy: TrafficPolicy,
    local_node: &str,
    destination: IpAddr,
) -> Eligible<'s> {
    eligible_in(
        service,
        port,
        policy,
        local_node,
        Some(destination.to_canonical().is_ipv4()),
    )
}

fn eligible_in<'s>(
    service: &'s Service,
    port: usize,
    policy: TrafficPolicy,
    local_node: &str,
    ipv4: Option<bool>,
) -> Eligible<'s> {
    let mut set = Eligible {
        endpoints: &service.endpoints,
        port,
        node: None,
        ready: true,
        ipv4,
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
    }
    set.len = set.iter().count();
    if set.len == 0 {
        set.ready = false;
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
    local_node: &str,
) -> String {
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
