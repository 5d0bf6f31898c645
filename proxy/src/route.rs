//! Service routing, compatible with kube-proxy: what a destination address
//! means, which endpoints may serve it, which one does, and how the
//! connection is carried there.
//!
//! This module is shared by the proxy's data path and `ferryctl route`
//! ([`explain`]), so the answer ferryctl gives is computed by the code the
//! proxy runs.
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
//! # Endpoints ([`eligible`])
//!
//! An endpoint is a candidate for a service port when it serves that port
//! (its resolved target port is known); with policy `Local`, only when it
//! runs on the local node as well. Candidates that are ready are used; when
//! none is ready, the ones that are serving while terminating are used
//! instead (kube-proxy's terminating fallback). Endpoints that are neither
//! are never used. No candidate means the connection is refused.
//!
//! # Choice ([`LoadBalancer`])
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
//! # Names ([`service_by_name`])
//!
//! Names resolve as a pod's DNS search path would: `name`, `name.ns`,
//! `name.ns.svc` and `name.ns.svc.<cluster domain>`.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;
use ferry_api::model::{Endpoint, Protocol, Service, ServiceType, TrafficPolicy, Workload};
use serde::Serialize;

use crate::state::ProxyState;

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

impl Access {
    /// The traffic policy of `service` that applies to this access.
    fn policy(self, service: &Service) -> TrafficPolicy {
        match self {
            Access::ClusterIp | Access::PodIp => service.internal_traffic_policy,
            Access::NodePort | Access::LoadBalancer | Access::ExternalIp => {
                service.external_traffic_policy
            }
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

/// The index of the service port with this number and protocol TCP.
fn tcp_port(service: &Service, port: u16) -> Option<usize> {
    service
        .ports
        .iter()
        .position(|p| p.port == port && p.protocol == Protocol::Tcp)
}

/// The plan for a service port reached by `access` (at `node`'s address for a node port).
fn service_plan<'s>(
    service: &'s Service,
    port: usize,
    access: Access,
    node: Option<&'s str>,
) -> Plan<'s> {
    Plan::Service {
        service,
        port,
        access,
        policy: access.policy(service),
        node,
    }
}

fn no_such_port(service: &Service, port: u16) -> String {
    format!(
        "service {}/{} has no TCP port {port}",
        service.namespace, service.name
    )
}

/// What a destination address means (TCP only). Order: service cluster IP /
/// load-balancer IP / external IP (matched port by `port` and protocol TCP)
/// -> node IP with a node port -> pod IP -> passthrough.
pub fn plan(state: &ProxyState, destination: SocketAddr) -> Plan<'_> {
    // A dual-stack socket reports IPv4 peers as IPv4-mapped IPv6.
    let ip = destination.ip().to_canonical();
    let port = destination.port();

    if let Some(service) = state.service_by_ip(&ip) {
        let access = if service.cluster_ips.contains(&ip) {
            Access::ClusterIp
        } else if service.load_balancer_ips.contains(&ip) {
            Access::LoadBalancer
        } else {
            Access::ExternalIp
        };
        match tcp_port(service, port) {
            Some(index) => return service_plan(service, index, access, None),
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
        if let Some(service) = state.service_by_node_port(port) {
            let index = service
                .ports
                .iter()
                .position(|p| p.node_port == Some(port) && p.protocol == Protocol::Tcp);
            if let Some(index) = index {
                return service_plan(service, index, Access::NodePort, Some(node.name.as_str()));
            }
        }
    }

    if let Some(workload) = state.workload_by_ip(&ip) {
        return Plan::Workload { workload, port };
    }
    Plan::Passthrough
}

/// Resolves a DNS name the way a pod in `namespace` would:
/// `name.ns.svc.<domain>` (any domain suffix after `.svc.` accepted as long
/// as the whole name equals the service's own hostname), `name.ns.svc`,
/// `name.ns`, `name` (in `namespace`). Case-insensitive; a trailing dot is
/// accepted. Returns the service.
pub fn service_by_name<'s>(
    state: &'s ProxyState,
    name: &str,
    namespace: &str,
) -> Option<&'s Service> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let lowered;
    let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
        lowered = name.to_ascii_lowercase();
        lowered.as_str()
    } else {
        name
    };
    let mut labels = name.splitn(4, '.');
    let service_name = labels.next()?;
    let (namespace, fqdn) = match (labels.next(), labels.next(), labels.next()) {
        (None, _, _) => (namespace, false),
        (Some(ns), None, _) | (Some(ns), Some("svc"), None) => (ns, false),
        (Some(ns), Some("svc"), Some(domain)) if !domain.is_empty() => (ns, true),
        _ => return None,
    };
    if service_name.is_empty() || namespace.is_empty() {
        return None;
    }
    let service = state.service(&format!("{namespace}/{service_name}"))?;
    if fqdn && !service.hostname.eq_ignore_ascii_case(name) {
        return None;
    }
    Some(service)
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
    len: usize,
}

impl<'s> Eligible<'s> {
    /// Serves the port, and runs on the local node when the policy is Local.
    fn candidate(&self, endpoint: &Endpoint) -> bool {
        matches!(endpoint.ports.get(self.port), Some(Some(_)))
            && self
                .node
                .is_none_or(|node| endpoint.node.as_deref() == Some(node))
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

    fn find(&self, addr: IpAddr) -> Option<&'s Endpoint> {
        self.iter().find(|e| e.address == addr)
    }
}

/// Endpoints a service port may use, kube-proxy rules: only endpoints that
/// serve that port (`ports[port]` is `Some`); with policy Local only
/// endpoints whose node is `local_node`; the ready ones; if none is ready,
/// the serving-and-terminating ones (fallback); never unready non-serving
/// ones. Allocates nothing.
pub fn eligible<'s>(
    service: &'s Service,
    port: usize,
    policy: TrafficPolicy,
    local_node: &str,
) -> Eligible<'s> {
    let mut set = Eligible {
        endpoints: &service.endpoints,
        port,
        node: None,
        ready: true,
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
fn no_endpoints(service: &Service, port: usize, policy: TrafficPolicy, local_node: &str) -> String {
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
    /// Not carried at all (route level only).
    Refused,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Hbone => "hbone",
            Mode::Passthrough => "passthrough",
            Mode::Refused => "refused",
        }
    }
}

/// The carrying of a connection to one endpoint: same node -> Direct;
/// another node and the endpoint's workload is in the mesh
/// (`Workload.mesh`) and that node has an `hbone` address -> Hbone;
/// otherwise (bare address, non-mesh pod, unknown node) -> Passthrough.
/// Never returns [`Mode::Refused`].
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

// ---- load balancer keys ----
//
// The maps are keyed by (namespace, name[, client]) and looked up with
// borrowed parts through `dyn KeyParts`, so a lookup allocates nothing.

trait KeyParts {
    fn parts(&self) -> (&str, &str, Option<IpAddr>);
}

/// A service, and for affinity the client, as a map key.
#[derive(Debug)]
struct BalanceKey {
    namespace: Box<str>,
    name: Box<str>,
    client: Option<IpAddr>,
}

/// A borrowed [`BalanceKey`].
struct KeyRef<'a> {
    namespace: &'a str,
    name: &'a str,
    client: Option<IpAddr>,
}

impl KeyRef<'_> {
    fn owned(&self) -> BalanceKey {
        BalanceKey {
            namespace: self.namespace.into(),
            name: self.name.into(),
            client: self.client,
        }
    }
}

impl KeyParts for BalanceKey {
    fn parts(&self) -> (&str, &str, Option<IpAddr>) {
        (&self.namespace, &self.name, self.client)
    }
}

impl KeyParts for KeyRef<'_> {
    fn parts(&self) -> (&str, &str, Option<IpAddr>) {
        (self.namespace, self.name, self.client)
    }
}

impl<'a> Borrow<dyn KeyParts + 'a> for BalanceKey {
    fn borrow(&self) -> &(dyn KeyParts + 'a) {
        self
    }
}

impl Hash for dyn KeyParts + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

impl PartialEq for dyn KeyParts + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn KeyParts + '_ {}

// Must hash and compare exactly as `dyn KeyParts` does.
impl Hash for BalanceKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

impl PartialEq for BalanceKey {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for BalanceKey {}

/// A client's affinity to an endpoint.
#[derive(Debug, Clone, Copy)]
struct Sticky {
    address: IpAddr,
    last_used: Instant,
    timeout: Duration,
}

impl Sticky {
    fn fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_used) < self.timeout
    }
}

/// Round robin per service (key `ns/name`) and `sessionAffinity: ClientIP`
/// with its timeout ([`Service::client_ip_affinity`] seconds). Sharded maps,
/// no global lock; nothing is allocated once the service has its counter and
/// the client its affinity entry.
#[derive(Debug, Default)]
pub struct LoadBalancer {
    /// Next round-robin position per service.
    next: DashMap<BalanceKey, AtomicUsize>,
    /// Affinity per (service, client).
    sticky: DashMap<BalanceKey, Sticky>,
}

impl LoadBalancer {
    /// An empty balancer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Picks an endpoint; `Err(reason)` when none is eligible ("no ready
    /// endpoints for shop/backend:80: ..."). The returned address is the
    /// endpoint's address with its resolved target port. With affinity: the
    /// client's endpoint is reused while it is still eligible and the entry
    /// is younger than the timeout (its time is refreshed on use); otherwise
    /// one is picked by round robin and remembered.
    pub fn pick<'s>(
        &self,
        service: &'s Service,
        port: usize,
        policy: TrafficPolicy,
        local_node: &str,
        client: IpAddr,
        now: Instant,
    ) -> Result<(&'s Endpoint, SocketAddr), String> {
        let set = eligible(service, port, policy, local_node);
        let endpoint = match service.client_ip_affinity {
            None => self.round_robin(service, set),
            Some(seconds) => self.affine(
                service,
                set,
                client,
                now,
                Duration::from_secs(u64::from(seconds)),
            ),
        };
        let endpoint = endpoint.ok_or_else(|| no_endpoints(service, port, policy, local_node))?;
        // Eligible endpoints serve the port.
        let target = endpoint
            .ports
            .get(port)
            .copied()
            .flatten()
            .ok_or_else(|| no_endpoints(service, port, policy, local_node))?;
        Ok((endpoint, SocketAddr::new(endpoint.address, target)))
    }

    fn round_robin<'s>(&self, service: &Service, set: Eligible<'s>) -> Option<&'s Endpoint> {
        if set.is_empty() {
            return None;
        }
        let key = KeyRef {
            namespace: &service.namespace,
            name: &service.name,
            client: None,
        };
        let existing = self
            .next
            .get(&key as &dyn KeyParts)
            .map(|counter| counter.fetch_add(1, Ordering::Relaxed));
        let n = match existing {
            Some(n) => n,
            None => self
                .next
                .entry(key.owned())
                .or_insert_with(|| AtomicUsize::new(0))
                .fetch_add(1, Ordering::Relaxed),
        };
        set.get(n % set.len())
    }

    /// Round robin with ClientIP affinity.
    fn affine<'s>(
        &self,
        service: &Service,
        set: Eligible<'s>,
        client: IpAddr,
        now: Instant,
        timeout: Duration,
    ) -> Option<&'s Endpoint> {
        let reuse_or_move = |sticky: &mut Sticky| {
            let kept = set.find(sticky.address).filter(|_| sticky.fresh(now));
            let endpoint = match kept {
                Some(endpoint) => endpoint,
                None => self.round_robin(service, set)?,
            };
            *sticky = Sticky {
                address: endpoint.address,
                last_used: now,
                timeout,
            };
            Some(endpoint)
        };
        let key = KeyRef {
            namespace: &service.namespace,
            name: &service.name,
            client: Some(client),
        };
        if let Some(mut sticky) = self.sticky.get_mut(&key as &dyn KeyParts) {
            return reuse_or_move(&mut sticky);
        }
        // First connection of this client to this service (or its entry was
        // swept): another connection may be racing to create it.
        match self.sticky.entry(key.owned()) {
            MapEntry::Occupied(mut entry) => reuse_or_move(entry.get_mut()),
            MapEntry::Vacant(entry) => {
                let endpoint = self.round_robin(service, set)?;
                entry.insert(Sticky {
                    address: endpoint.address,
                    last_used: now,
                    timeout,
                });
                Some(endpoint)
            }
        }
    }

    /// Drops affinity entries older than their timeout; returns how many
    /// remain.
    pub fn sweep(&self, now: Instant) -> usize {
        self.sticky.retain(|_, sticky| sticky.fresh(now));
        self.sticky.len()
    }
}

// ---- ferryctl route ----

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
    pub pod: Option<String>,
    pub address: IpAddr,
    /// The port connected to (the resolved target port).
    pub port: u16,
    pub node: Option<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// Never [`Mode::Refused`].
    pub mode: Mode,
}

/// `ferryctl route`'s answer, computed by the proxy's own code. Serializes
/// to `{"service", "mode", "reason", "affinity", "external_name",
/// "endpoints"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// `namespace/name` of the service, when one is involved.
    pub service: Option<String>,
    /// `refused` when there is no candidate or the destination is refused;
    /// `passthrough` for unknown destinations and ExternalName services; for
    /// a pod, that pod's mode; for a service, `direct` when every candidate
    /// is on the source's node, else `hbone` when any candidate is reached
    /// over HBONE, else `passthrough`.
    pub mode: Mode,
    /// Why it is refused (or passed through).
    pub reason: Option<String>,
    pub affinity: Option<RouteAffinity>,
    /// The host an ExternalName service points at.
    pub external_name: Option<String>,
    /// Every candidate [`eligible`] allows, or the one pod.
    pub endpoints: Vec<RouteEndpoint>,
}

impl Explanation {
    fn bare(mode: Mode, service: Option<&Service>, reason: Option<String>) -> Self {
        Self {
            service: service.map(Service::key_name),
            mode,
            reason,
            affinity: None,
            external_name: None,
            endpoints: Vec::new(),
        }
    }

    /// Human-readable form: the route, then the endpoints in aligned columns.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let mut line = |label: &str, value: &str| {
            out.push_str(&format!("{label:<15}{value}\n"));
        };
        line("service:", self.service.as_deref().unwrap_or("-"));
        line("mode:", self.mode.as_str());
        if let Some(reason) = &self.reason {
            line("reason:", reason);
        }
        if let Some(affinity) = &self.affinity {
            line(
                "affinity:",
                &format!("{} ({} s)", affinity.kind, affinity.timeout_seconds),
            );
        }
        if let Some(host) = &self.external_name {
            line("external name:", host);
        }
        if self.endpoints.is_empty() {
            out.push_str("endpoints:     none\n");
            return out;
        }
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        let mut rows: Vec<[String; 8]> = vec![[
            "POD".into(),
            "ADDRESS".into(),
            "PORT".into(),
            "NODE".into(),
            "READY".into(),
            "SERVING".into(),
            "TERMINATING".into(),
            "MODE".into(),
        ]];
        rows.extend(self.endpoints.iter().map(|e| {
            [
                e.pod.clone().unwrap_or_else(|| "-".into()),
                e.address.to_string(),
                e.port.to_string(),
                e.node.clone().unwrap_or_else(|| "-".into()),
                yes_no(e.ready).into(),
                yes_no(e.serving).into(),
                yes_no(e.terminating).into(),
                e.mode.as_str().into(),
            ]
        }));
        let mut widths = [0usize; 8];
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        out.push('\n');
        for row in &rows {
            let mut text = String::new();
            for (cell, width) in row.iter().zip(widths) {
                text.push_str(&format!("{cell:<width$}  "));
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
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
    local_node: &str,
) -> (Plan<'s>, Option<IpAddr>) {
    let key = || format!("{}/{}", service.namespace, service.name);
    if service.service_type == ServiceType::ExternalName {
        return match service.external_name.as_deref() {
            Some(host) => (
                Plan::ExternalName {
                    service,
                    host,
                    port,
                },
                None,
            ),
            None => (
                Plan::Refused {
                    service: Some(service),
                    reason: format!("ExternalName service {} has no externalName", key()),
                },
                None,
            ),
        };
    }
    if service.headless {
        // DNS answers with the pods' IPs; the client dials the port as is.
        let first = tcp_port(service, port)
            .and_then(|index| eligible(service, index, TrafficPolicy::Cluster, local_node).get(0))
            .or_else(|| service.endpoints.iter().find(|e| e.ready));
        return match first {
            Some(endpoint) => (
                plan(state, SocketAddr::new(endpoint.address, port)),
                Some(endpoint.address),
            ),
            None => (
                Plan::Refused {
                    service: Some(service),
                    reason: format!("headless service {} has no ready endpoints", key()),
                },
                None,
            ),
        };
    }
    match tcp_port(service, port) {
        Some(index) => (service_plan(service, index, Access::ClusterIp, None), None),
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
        .ok_or_else(|| format!("pod {} is not scheduled on a node", from.key_name()))?;
    let (host, port) = split_host_port(to)?;
    let (route, via, dialed) = match host.parse::<IpAddr>() {
        Ok(ip) => {
            let ip = ip.to_canonical();
            (plan(state, SocketAddr::new(ip, port)), None, Some(ip))
        }
        Err(_) => match service_by_name(state, host, &from.namespace) {
            Some(service) => {
                let (route, dialed) = plan_by_name(state, service, port, local_node);
                (route, Some(service), dialed)
            }
            None => {
                return Ok(Explanation::bare(
                    Mode::Passthrough,
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
            Explanation::bare(Mode::Passthrough, via, Some(reason))
        }
        Plan::Refused { service, reason } => {
            Explanation::bare(Mode::Refused, service.or(via), Some(reason))
        }
        Plan::ExternalName { service, host, .. } => Explanation {
            external_name: Some(host.to_owned()),
            ..Explanation::bare(Mode::Passthrough, Some(service), None)
        },
        Plan::Workload { workload, port } => {
            let key = workload.key_name();
            let mode = mode_for(
                state,
                local_node,
                from.mesh,
                workload.node.as_deref(),
                Some(&key),
            );
            let address = dialed.or_else(|| workload.addresses.first().copied());
            Explanation {
                endpoints: address
                    .map(|address| RouteEndpoint {
                        pod: Some(key.clone()),
                        address,
                        port,
                        node: workload.node.clone(),
                        ready: workload.ready,
                        serving: workload.ready,
                        terminating: workload.terminating,
                        mode,
                    })
                    .into_iter()
                    .collect(),
                ..Explanation::bare(mode, via, None)
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
            let endpoints: Vec<RouteEndpoint> = eligible(service, port, policy, serving_node)
                .iter()
                .filter_map(|e| {
                    Some(RouteEndpoint {
                        pod: e.workload.clone(),
                        address: e.address,
                        port: e.ports.get(port).copied().flatten()?,
                        node: e.node.clone(),
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
                    Mode::Refused,
                    Some(no_endpoints(service, port, policy, serving_node)),
                )
            } else if endpoints
                .iter()
                .all(|e| e.node.as_deref() == Some(local_node))
            {
                (Mode::Direct, None)
            } else if endpoints.iter().any(|e| e.mode == Mode::Hbone) {
                (Mode::Hbone, None)
            } else {
                (Mode::Passthrough, None)
            };
            Explanation {
                affinity: service
                    .client_ip_affinity
                    .map(|timeout_seconds| RouteAffinity {
                        kind: "ClientIP",
                        timeout_seconds,
                    }),
                endpoints,
                ..Explanation::bare(mode, Some(service), reason)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ConfigStore;
    use ferry_api::model::{Node, NodeAddress, ServicePort, TargetPort};
    use ferry_api::ResourceBody;
    use serde_json::json;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    /// The source pod's node in every test.
    const LOCAL: &str = "n1";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn node(name: &str, internal: &str, external: Option<&str>, hbone: bool) -> ResourceBody {
        let mut addresses = vec![NodeAddress {
            kind: "InternalIP".into(),
            address: internal.into(),
        }];
        addresses.extend(external.map(|a| NodeAddress {
            kind: "ExternalIP".into(),
            address: a.into(),
        }));
        ResourceBody::Node(Node {
            name: name.into(),
            addresses,
            hbone: hbone.then(|| SocketAddr::new(ip(internal), 15008)),
        })
    }

    fn pod(name: &str, address: &str, node: &str, mesh: bool) -> Workload {
        Workload {
            uid: format!("uid-{name}"),
            namespace: "shop".into(),
            name: name.into(),
            node: Some(node.into()),
            service_account: "default".into(),
            addresses: vec![ip(address)],
            labels: BTreeMap::new(),
            ports: vec![],
            ready: true,
            terminating: false,
            mesh,
        }
    }

    /// Nodes n1 (local, with an external IP), n2 (HBONE), n3 (no HBONE);
    /// mesh pods a1, a2, a3 on n1, n2, n3; `legacy` (outside the mesh) on n2;
    /// `client` on n1.
    fn cluster() -> Vec<ResourceBody> {
        vec![
            node("n1", "10.1.0.1", Some("203.0.113.1"), true),
            node("n2", "10.1.0.2", None, true),
            node("n3", "10.1.0.3", None, false),
            ResourceBody::Workload(pod("a1", "10.0.1.1", "n1", true)),
            ResourceBody::Workload(pod("a2", "10.0.2.1", "n2", true)),
            ResourceBody::Workload(pod("a3", "10.0.3.1", "n3", true)),
            ResourceBody::Workload(pod("legacy", "10.0.2.9", "n2", false)),
            ResourceBody::Workload(client()),
        ]
    }

    fn client() -> Workload {
        pod("client", "10.0.1.100", "n1", true)
    }

    fn tcp(name: &str, port: u16, target: u16) -> ServicePort {
        ServicePort {
            name: name.into(),
            port,
            protocol: Protocol::Tcp,
            target_port: TargetPort::Number(target),
            node_port: None,
        }
    }

    /// A ready endpoint of pod `shop/<pod>` (or a bare address for "").
    fn ep(pod: &str, address: &str, node: &str, ports: &[Option<u16>]) -> Endpoint {
        Endpoint {
            workload: (!pod.is_empty()).then(|| format!("shop/{pod}")),
            address: ip(address),
            node: (!node.is_empty()).then(|| node.to_string()),
            ports: ports.to_vec(),
            ready: true,
            serving: true,
            terminating: false,
            hostname: None,
        }
    }

    fn with_conditions(mut e: Endpoint, ready: bool, serving: bool, terminating: bool) -> Endpoint {
        e.ready = ready;
        e.serving = serving;
        e.terminating = terminating;
        e
    }

    fn service(
        name: &str,
        cluster_ip: Option<&str>,
        ports: Vec<ServicePort>,
        endpoints: Vec<Endpoint>,
    ) -> Service {
        Service {
            namespace: "shop".into(),
            name: name.into(),
            hostname: format!("{name}.shop.svc.cluster.local"),
            service_type: ServiceType::ClusterIP,
            cluster_ips: cluster_ip.map(ip).into_iter().collect(),
            headless: false,
            ports,
            load_balancer_ips: vec![],
            external_ips: vec![],
            external_name: None,
            client_ip_affinity: None,
            internal_traffic_policy: TrafficPolicy::Cluster,
            external_traffic_policy: TrafficPolicy::Cluster,
            endpoints,
            selector: true,
        }
    }

    /// shop/backend at 10.96.0.10: http 80 -> 8080 and metrics 9090 -> the
    /// named port `metrics` (9091), served by a1, a2, a3.
    fn backend() -> Service {
        let mut metrics = tcp("metrics", 9090, 0);
        metrics.target_port = TargetPort::Name("metrics".into());
        service(
            "backend",
            Some("10.96.0.10"),
            vec![tcp("http", 80, 8080), metrics],
            vec![
                ep("a1", "10.0.1.1", "n1", &[Some(8080), Some(9091)]),
                ep("a2", "10.0.2.1", "n2", &[Some(8080), Some(9091)]),
                ep("a3", "10.0.3.1", "n3", &[Some(8080), Some(9091)]),
            ],
        )
    }

    /// The cluster plus these services, through the config store.
    fn state_with(services: Vec<Service>) -> Arc<ProxyState> {
        let mut bodies = cluster();
        bodies.extend(services.into_iter().map(ResourceBody::Service));
        ConfigStore::holding(&bodies).snapshot()
    }

    fn expect_service(p: Plan<'_>) -> (&Service, usize, Access, TrafficPolicy) {
        match p {
            Plan::Service {
                service,
                port,
                access,
                policy,
                ..
            } => (service, port, access, policy),
            other => panic!("expected a service plan, got {other:?}"),
        }
    }

    fn addresses<'s>(endpoints: impl Iterator<Item = &'s Endpoint>) -> Vec<String> {
        endpoints.map(|e| e.address.to_string()).collect()
    }

    fn explain_to(state: &ProxyState, to: &str) -> Explanation {
        explain(state, &client(), to).unwrap()
    }

    // ---- destinations ----

    #[test]
    fn cluster_ip_maps_each_port_to_its_target_port() {
        let s = state_with(vec![backend()]);
        let lb = LoadBalancer::new();
        // (destination, service port index, target port)
        let cases = [("10.96.0.10:80", 0, 8080), ("10.96.0.10:9090", 1, 9091)];
        for (dest, want_index, want_target) in cases {
            let (svc, index, access, policy) = expect_service(plan(&s, sa(dest)));
            assert_eq!(svc.name, "backend", "{dest}");
            assert_eq!(index, want_index, "{dest}");
            assert_eq!(access, Access::ClusterIp, "{dest}");
            assert_eq!(policy, TrafficPolicy::Cluster, "{dest}");
            let (_, addr) = lb
                .pick(svc, index, policy, LOCAL, ip("10.0.1.100"), Instant::now())
                .unwrap();
            assert_eq!(addr.port(), want_target, "{dest}");
        }
    }

    #[test]
    fn a_cluster_ip_on_a_port_the_service_does_not_define_is_refused() {
        let mut dns = service(
            "dns",
            Some("10.96.0.53"),
            vec![ServicePort {
                protocol: Protocol::Udp,
                ..tcp("dns", 53, 53)
            }],
            vec![ep("a1", "10.0.1.1", "n1", &[Some(53)])],
        );
        dns.selector = false;
        let s = state_with(vec![backend(), dns]);
        // (destination, refused service, reason)
        let cases = [
            (
                "10.96.0.10:81",
                "backend",
                "service shop/backend has no TCP port 81 (cluster IP 10.96.0.10)",
            ),
            (
                "10.96.0.53:53",
                "dns",
                "service shop/dns has no TCP port 53 (cluster IP 10.96.0.53)",
            ),
        ];
        for (dest, want_service, want_reason) in cases {
            match plan(&s, sa(dest)) {
                Plan::Refused {
                    service: Some(svc),
                    reason,
                } => {
                    assert_eq!(svc.name, want_service, "{dest}");
                    assert_eq!(reason, want_reason, "{dest}");
                }
                other => panic!("{dest}: expected a refusal, got {other:?}"),
            }
            let e = explain_to(&s, dest);
            assert_eq!(e.mode, Mode::Refused, "{dest}");
            assert_eq!(e.reason.as_deref(), Some(want_reason), "{dest}");
            assert_eq!(e.service, Some(format!("shop/{want_service}")), "{dest}");
        }
        // By name too.
        let e = explain_to(&s, "backend:81");
        assert_eq!(e.mode, Mode::Refused);
        assert_eq!(
            e.reason.as_deref(),
            Some("service shop/backend has no TCP port 81")
        );
    }

    /// shop/web: LoadBalancer at cluster IP 10.96.0.20, LB IP 198.51.100.10,
    /// external IP 192.0.2.50, port 80 -> 8080 with node port 30080,
    /// externalTrafficPolicy Local.
    fn web() -> Service {
        let mut web = backend();
        web.name = "web".into();
        web.hostname = "web.shop.svc.cluster.local".into();
        web.service_type = ServiceType::LoadBalancer;
        web.cluster_ips = vec![ip("10.96.0.20")];
        web.load_balancer_ips = vec![ip("198.51.100.10")];
        web.external_ips = vec![ip("192.0.2.50")];
        web.ports = vec![ServicePort {
            node_port: Some(30080),
            ..tcp("http", 80, 8080)
        }];
        for e in &mut web.endpoints {
            e.ports = vec![Some(8080)];
        }
        web.external_traffic_policy = TrafficPolicy::Local;
        web
    }

    #[test]
    fn every_service_address_and_its_traffic_policy() {
        let s = state_with(vec![web()]);
        // (destination, access, policy, eligible endpoints seen from n1)
        let all = ["10.0.1.1", "10.0.2.1", "10.0.3.1"];
        let local = ["10.0.1.1"];
        let cases: [(&str, Access, TrafficPolicy, &[&str]); 7] = [
            // externalTrafficPolicy does not apply to the cluster IP.
            (
                "10.96.0.20:80",
                Access::ClusterIp,
                TrafficPolicy::Cluster,
                &all,
            ),
            // A node port on any node IP, internal or external.
            (
                "10.1.0.1:30080",
                Access::NodePort,
                TrafficPolicy::Local,
                &local,
            ),
            (
                "203.0.113.1:30080",
                Access::NodePort,
                TrafficPolicy::Local,
                &local,
            ),
            // Dialled at another node's address, that node serves it: its endpoints.
            (
                "10.1.0.2:30080",
                Access::NodePort,
                TrafficPolicy::Local,
                &["10.0.2.1"],
            ),
            (
                "[::ffff:10.1.0.3]:30080",
                Access::NodePort,
                TrafficPolicy::Local,
                &["10.0.3.1"],
            ),
            (
                "198.51.100.10:80",
                Access::LoadBalancer,
                TrafficPolicy::Local,
                &local,
            ),
            (
                "192.0.2.50:80",
                Access::ExternalIp,
                TrafficPolicy::Local,
                &local,
            ),
        ];
        for (dest, want_access, want_policy, want_eligible) in cases {
            let planned = plan(&s, sa(dest));
            let serving_node = match &planned {
                Plan::Service { node, .. } => node.unwrap_or(LOCAL),
                _ => LOCAL,
            };
            let (svc, index, access, policy) = expect_service(planned);
            assert_eq!(svc.name, "web", "{dest}");
            assert_eq!(index, 0, "{dest}");
            assert_eq!(access, want_access, "{dest}");
            assert_eq!(policy, want_policy, "{dest}");
            assert_eq!(
                addresses(eligible(svc, index, policy, serving_node).iter()),
                want_eligible.to_vec(),
                "{dest}"
            );
        }
        // Seen from n2, Local keeps n2's endpoint only.
        let (svc, index, _, policy) = expect_service(plan(&s, sa("10.1.0.1:30080")));
        assert_eq!(
            addresses(eligible(svc, index, policy, "n2").iter()),
            ["10.0.2.1"]
        );
    }

    #[test]
    fn addresses_that_are_not_a_service_port_fall_through() {
        let s = state_with(vec![web()]);
        // (destination, what it is)
        let cases = [
            // A pod IP on a node port number is the pod.
            ("10.0.1.1:30080", "pod a1"),
            // A node IP without a node port is the node itself.
            ("10.1.0.1:30081", "passthrough"),
            // An LB or external IP on another port is not the service's.
            ("198.51.100.10:443", "passthrough"),
            ("192.0.2.50:22", "passthrough"),
            // A node port on an address that is not a node's.
            ("192.0.2.99:30080", "passthrough"),
            ("8.8.8.8:53", "passthrough"),
        ];
        for (dest, want) in cases {
            let got = match plan(&s, sa(dest)) {
                Plan::Workload { workload, port } => {
                    assert_eq!(port, sa(dest).port());
                    format!("pod {}", workload.name)
                }
                Plan::Passthrough => "passthrough".into(),
                other => format!("{other:?}"),
            };
            assert_eq!(got, want, "{dest}");
        }
    }

    #[test]
    fn a_udp_node_port_is_not_a_tcp_destination() {
        let mut svc = web();
        svc.ports[0].protocol = Protocol::Udp;
        let s = state_with(vec![svc]);
        assert_eq!(plan(&s, sa("10.1.0.1:30080")), Plan::Passthrough);
    }

    #[test]
    fn a_pod_ip_is_that_pod_and_its_mode_depends_on_where_it_runs() {
        let s = state_with(vec![]);
        // (destination, pod, mode)
        let cases = [
            ("10.0.1.1:8080", "a1", Mode::Direct),
            ("10.0.2.1:8080", "a2", Mode::Hbone),
            // n3 has no HBONE address.
            ("10.0.3.1:8080", "a3", Mode::Passthrough),
            // Outside the mesh.
            ("10.0.2.9:8080", "legacy", Mode::Passthrough),
        ];
        for (dest, want_pod, want_mode) in cases {
            match plan(&s, sa(dest)) {
                Plan::Workload { workload, port } => {
                    assert_eq!(workload.name, want_pod, "{dest}");
                    assert_eq!(port, 8080, "{dest}");
                }
                other => panic!("{dest}: expected a pod, got {other:?}"),
            }
            let e = explain_to(&s, dest);
            assert_eq!(e.mode, want_mode, "{dest}");
            assert_eq!(e.service, None, "{dest}");
            assert_eq!(e.endpoints.len(), 1, "{dest}");
            assert_eq!(e.endpoints[0].pod, Some(format!("shop/{want_pod}")));
            assert_eq!(e.endpoints[0].address, sa(dest).ip());
            assert_eq!(e.endpoints[0].port, 8080);
            assert_eq!(e.endpoints[0].mode, want_mode);
        }
    }

    #[test]
    fn a_pod_explained_carries_its_own_conditions() {
        let mut bodies = cluster();
        let mut dying = pod("dying", "10.0.2.7", "n2", true);
        dying.ready = false;
        dying.terminating = true;
        bodies.push(ResourceBody::Workload(dying));
        let e = explain_to(&ConfigStore::holding(&bodies).snapshot(), "10.0.2.7:80");
        let ep = &e.endpoints[0];
        assert_eq!((ep.ready, ep.serving, ep.terminating), (false, false, true));
        assert_eq!(e.mode, Mode::Hbone);
    }

    #[test]
    fn a_headless_service_is_reached_through_its_pods() {
        let mut db = service(
            "db",
            None,
            vec![tcp("pg", 5432, 5432)],
            vec![
                with_conditions(
                    ep("a3", "10.0.3.1", "n3", &[Some(5432)]),
                    false,
                    false,
                    false,
                ),
                ep("a2", "10.0.2.1", "n2", &[Some(5432)]),
            ],
        );
        db.headless = true;
        let s = state_with(vec![db]);
        // Its backends by pod IP.
        match plan(&s, sa("10.0.2.1:5432")) {
            Plan::Workload { workload, port } => {
                assert_eq!((workload.name.as_str(), port), ("a2", 5432));
            }
            other => panic!("expected a pod, got {other:?}"),
        }
        // By name: the first eligible endpoint (a3 is not ready).
        let e = explain_to(&s, "db:5432");
        assert_eq!(e.service.as_deref(), Some("shop/db"));
        assert_eq!(e.mode, Mode::Hbone);
        assert_eq!(e.endpoints.len(), 1);
        assert_eq!(e.endpoints[0].pod.as_deref(), Some("shop/a2"));
        assert_eq!(e.endpoints[0].address, ip("10.0.2.1"));
        assert_eq!(e.endpoints[0].port, 5432);
    }

    #[test]
    fn a_headless_service_of_bare_addresses_passes_through_by_name() {
        let mut db = service(
            "db",
            None,
            vec![tcp("pg", 5432, 5432)],
            vec![ep("", "192.0.2.10", "", &[Some(5432)])],
        );
        db.headless = true;
        db.selector = false;
        let s = state_with(vec![db]);
        let e = explain_to(&s, "db:5432");
        assert_eq!(e.mode, Mode::Passthrough);
        assert_eq!(e.service.as_deref(), Some("shop/db"));
        assert_eq!(
            e.reason.as_deref(),
            Some(
                "headless service shop/db resolves to 192.0.2.10, not a pod in the mesh: \
                 passed through unchanged"
            )
        );
    }

    #[test]
    fn a_headless_service_without_ready_endpoints_is_refused_by_name() {
        let mut db = service("db", None, vec![tcp("pg", 5432, 5432)], vec![]);
        db.headless = true;
        let s = state_with(vec![db]);
        let e = explain_to(&s, "db.shop:5432");
        assert_eq!(e.mode, Mode::Refused);
        assert_eq!(
            e.reason.as_deref(),
            Some("headless service shop/db has no ready endpoints")
        );
    }

    #[test]
    fn a_selector_less_service_with_bare_addresses_passes_through() {
        let mut external_db = service(
            "external-db",
            Some("10.96.0.30"),
            vec![tcp("mysql", 3306, 3306)],
            vec![ep("", "192.0.2.10", "", &[Some(3306)])],
        );
        external_db.selector = false;
        let s = state_with(vec![external_db]);
        let (svc, index, _, policy) = expect_service(plan(&s, sa("10.96.0.30:3306")));
        let (_, addr) = LoadBalancer::new()
            .pick(svc, index, policy, LOCAL, ip("10.0.1.100"), Instant::now())
            .unwrap();
        assert_eq!(addr, sa("192.0.2.10:3306"));
        let e = explain_to(&s, "external-db:3306");
        assert_eq!(e.mode, Mode::Passthrough);
        assert_eq!(e.endpoints.len(), 1);
        assert_eq!(e.endpoints[0].pod, None);
        assert_eq!(e.endpoints[0].node, None);
        assert_eq!(e.endpoints[0].mode, Mode::Passthrough);
    }

    #[test]
    fn an_external_name_service_is_reached_by_name_outside_the_mesh() {
        let mut ext = service("ext", None, vec![], vec![]);
        ext.service_type = ServiceType::ExternalName;
        ext.external_name = Some("db.example.com".into());
        let s = state_with(vec![ext]);
        let svc = service_by_name(&s, "ext", "shop").unwrap();
        assert_eq!(svc.external_name.as_deref(), Some("db.example.com"));
        for to in ["ext:5432", "ext.shop.svc.cluster.local:5432"] {
            let e = explain_to(&s, to);
            assert_eq!(e.mode, Mode::Passthrough, "{to}");
            assert_eq!(e.service.as_deref(), Some("shop/ext"), "{to}");
            assert_eq!(e.external_name.as_deref(), Some("db.example.com"), "{to}");
            assert!(e.endpoints.is_empty(), "{to}");
            assert_eq!(e.reason, None, "{to}");
        }
    }

    #[test]
    fn unknown_destinations_pass_through() {
        let s = state_with(vec![backend()]);
        assert_eq!(plan(&s, sa("8.8.8.8:53")), Plan::Passthrough);
        assert_eq!(plan(&s, sa("[2001:db8::1]:443")), Plan::Passthrough);
        for to in ["8.8.8.8:53", "[2001:db8::1]:443", "example.com:443"] {
            let e = explain_to(&s, to);
            assert_eq!(e.mode, Mode::Passthrough, "{to}");
            assert_eq!(e.service, None, "{to}");
            assert!(e.endpoints.is_empty(), "{to}");
            assert!(e.reason.is_some(), "{to}");
        }
    }

    // ---- endpoints ----

    #[test]
    fn eligible_endpoints_follow_the_conditions() {
        let e = |n: u8, ready, serving, terminating| {
            with_conditions(
                ep("", &format!("10.0.9.{n}"), "n1", &[Some(8080)]),
                ready,
                serving,
                terminating,
            )
        };
        // (case, endpoints, eligible addresses)
        let cases: Vec<(&str, Vec<Endpoint>, Vec<&str>)> = vec![
            (
                "only the ready ones",
                vec![
                    e(1, true, true, false),
                    e(2, false, false, false),
                    e(3, false, true, true),
                    e(4, true, true, false),
                ],
                vec!["10.0.9.1", "10.0.9.4"],
            ),
            (
                "none ready: the serving and terminating ones",
                vec![
                    e(1, false, false, false),
                    e(2, false, true, true),
                    e(3, false, false, true),
                    e(4, false, true, true),
                ],
                vec!["10.0.9.2", "10.0.9.4"],
            ),
            (
                "never the unready non-serving ones",
                vec![e(1, false, false, false), e(2, false, false, true)],
                vec![],
            ),
            ("no endpoints", vec![], vec![]),
            (
                "only those that serve the port",
                vec![
                    ep("", "10.0.9.1", "n1", &[None]),
                    ep("", "10.0.9.2", "n1", &[Some(8080)]),
                ],
                vec!["10.0.9.2"],
            ),
        ];
        for (case, endpoints, want) in cases {
            let svc = service(
                "backend",
                Some("10.96.0.10"),
                vec![tcp("http", 80, 8080)],
                endpoints,
            );
            let set = eligible(&svc, 0, TrafficPolicy::Cluster, LOCAL);
            assert_eq!(addresses(set.iter()), want, "{case}");
            assert_eq!(set.len(), want.len(), "{case}");
            assert_eq!(set.is_empty(), want.is_empty(), "{case}");
            for (i, address) in want.iter().enumerate() {
                assert_eq!(set.get(i).map(|e| e.address), Some(ip(address)), "{case}");
                assert!(set.contains(ip(address)), "{case}");
            }
            assert!(set.get(want.len()).is_none(), "{case}");
            assert!(
                !set.contains(ip("10.0.9.3")) || want.contains(&"10.0.9.3"),
                "{case}"
            );
        }
    }

    #[test]
    fn a_port_index_out_of_range_has_no_endpoints() {
        let svc = backend();
        assert!(eligible(&svc, 2, TrafficPolicy::Cluster, LOCAL).is_empty());
        let err = LoadBalancer::new()
            .pick(
                &svc,
                2,
                TrafficPolicy::Cluster,
                LOCAL,
                ip("10.0.1.100"),
                Instant::now(),
            )
            .unwrap_err();
        assert_eq!(err, "service shop/backend has no port #2");
    }

    #[test]
    fn no_eligible_endpoint_is_refused_naming_service_and_port() {
        let unready = |e| with_conditions(e, false, false, false);
        // (case, endpoints, policy, reason)
        let cases = [
            (
                "no endpoints",
                vec![],
                TrafficPolicy::Cluster,
                "no ready endpoints for shop/backend:80: the service has no endpoints",
            ),
            (
                "none ready",
                vec![
                    unready(ep("a1", "10.0.1.1", "n1", &[Some(8080)])),
                    unready(ep("a2", "10.0.2.1", "n2", &[Some(8080)])),
                ],
                TrafficPolicy::Cluster,
                "no ready endpoints for shop/backend:80: none of its 2 endpoints is ready or serving while terminating",
            ),
            (
                "none serves the port",
                vec![ep("a1", "10.0.1.1", "n1", &[None])],
                TrafficPolicy::Cluster,
                "no ready endpoints for shop/backend:80: no endpoint serves this port",
            ),
            (
                "none local",
                vec![ep("a2", "10.0.2.1", "n2", &[Some(8080)])],
                TrafficPolicy::Local,
                "no ready endpoints for shop/backend:80: none of its 1 endpoints is on node n1 (traffic policy Local)",
            ),
            (
                "the local one not ready",
                vec![
                    unready(ep("a1", "10.0.1.1", "n1", &[Some(8080)])),
                    ep("a2", "10.0.2.1", "n2", &[Some(8080)]),
                ],
                TrafficPolicy::Local,
                "no ready endpoints for shop/backend:80: none of its 1 endpoints on node n1 is ready or serving while terminating (traffic policy Local)",
            ),
        ];
        for (case, endpoints, policy, want) in cases {
            let mut svc = service(
                "backend",
                Some("10.96.0.10"),
                vec![tcp("http", 80, 8080)],
                endpoints,
            );
            svc.internal_traffic_policy = policy;
            let err = LoadBalancer::new()
                .pick(&svc, 0, policy, LOCAL, ip("10.0.1.100"), Instant::now())
                .unwrap_err();
            assert_eq!(err, want, "{case}");
            let s = state_with(vec![svc]);
            let e = explain_to(&s, "10.96.0.10:80");
            assert_eq!(e.mode, Mode::Refused, "{case}");
            assert_eq!(e.reason.as_deref(), Some(want), "{case}");
            assert!(e.endpoints.is_empty(), "{case}");
        }
    }

    #[test]
    fn internal_traffic_policy_local_keeps_local_endpoints_only() {
        let mut svc = backend();
        svc.internal_traffic_policy = TrafficPolicy::Local;
        // Plus a terminating-but-serving second endpoint on n2.
        svc.endpoints.push(with_conditions(
            ep("", "10.0.2.50", "n2", &[Some(8080), Some(9091)]),
            false,
            true,
            true,
        ));
        let s = state_with(vec![svc]);
        let (svc, index, access, policy) = expect_service(plan(&s, sa("10.96.0.10:80")));
        assert_eq!((access, policy), (Access::ClusterIp, TrafficPolicy::Local));
        // (local node, eligible)
        let cases: [(&str, &[&str]); 4] = [
            ("n1", &["10.0.1.1"]),
            ("n2", &["10.0.2.1"]),
            ("n3", &["10.0.3.1"]),
            ("n4", &[]),
        ];
        for (node, want) in cases {
            assert_eq!(
                addresses(eligible(svc, index, policy, node).iter()),
                want.to_vec(),
                "{node}"
            );
        }
        let lb = LoadBalancer::new();
        for _ in 0..5 {
            let (e, _) = lb
                .pick(svc, index, policy, "n1", ip("10.0.1.100"), Instant::now())
                .unwrap();
            assert_eq!(e.address, ip("10.0.1.1"));
        }
        let err = lb
            .pick(svc, index, policy, "n4", ip("10.0.1.100"), Instant::now())
            .unwrap_err();
        assert!(
            err.contains("shop/backend:80") && err.contains("node n4"),
            "{err}"
        );
        // Seen from n1, the route is direct.
        let e = explain_to(&s, "backend:80");
        assert_eq!(e.mode, Mode::Direct);
        assert_eq!(e.endpoints.len(), 1);
    }

    #[test]
    fn local_policy_falls_back_to_local_terminating_endpoints() {
        let mut svc = backend();
        svc.endpoints[0] = with_conditions(svc.endpoints[0].clone(), false, true, true);
        // Cluster: the ready remote ones.
        assert_eq!(
            addresses(eligible(&svc, 0, TrafficPolicy::Cluster, LOCAL).iter()),
            ["10.0.2.1", "10.0.3.1"]
        );
        // Local: the local terminating one, not a remote ready one.
        assert_eq!(
            addresses(eligible(&svc, 0, TrafficPolicy::Local, LOCAL).iter()),
            ["10.0.1.1"]
        );
    }

    // ---- load balancing ----

    #[test]
    fn round_robin_spreads_evenly() {
        let svc = backend();
        let lb = LoadBalancer::new();
        let mut counts = BTreeMap::new();
        let mut order = Vec::new();
        for i in 0..300u32 {
            let client = IpAddr::from([10, 0, 1, (i % 7) as u8]);
            let (e, addr) = lb
                .pick(
                    &svc,
                    0,
                    TrafficPolicy::Cluster,
                    LOCAL,
                    client,
                    Instant::now(),
                )
                .unwrap();
            assert_eq!(addr, SocketAddr::new(e.address, 8080));
            *counts.entry(e.address.to_string()).or_insert(0) += 1;
            if i < 6 {
                order.push(e.address.to_string());
            }
        }
        assert_eq!(
            counts.into_iter().collect::<Vec<_>>(),
            [
                ("10.0.1.1".to_string(), 100),
                ("10.0.2.1".to_string(), 100),
                ("10.0.3.1".to_string(), 100)
            ]
        );
        assert_eq!(
            order,
            ["10.0.1.1", "10.0.2.1", "10.0.3.1", "10.0.1.1", "10.0.2.1", "10.0.3.1"]
        );
    }

    #[test]
    fn round_robin_is_per_service() {
        let a = backend();
        let mut b = backend();
        b.name = "other".into();
        let lb = LoadBalancer::new();
        let pick = |svc: &Service| {
            lb.pick(
                svc,
                0,
                TrafficPolicy::Cluster,
                LOCAL,
                ip("10.0.1.100"),
                Instant::now(),
            )
            .unwrap()
            .0
            .address
        };
        assert_eq!(pick(&a), ip("10.0.1.1"));
        assert_eq!(pick(&a), ip("10.0.2.1"));
        // Another service starts at its own first endpoint.
        assert_eq!(pick(&b), ip("10.0.1.1"));
    }

    #[test]
    fn affinity_sticks_until_its_timeout_and_is_refreshed_on_use() {
        let mut svc = backend();
        svc.client_ip_affinity = Some(10);
        let lb = LoadBalancer::new();
        let t0 = Instant::now();
        let secs = |n| t0 + Duration::from_secs(n);
        let pick = |client: &str, now| {
            lb.pick(&svc, 0, TrafficPolicy::Cluster, LOCAL, ip(client), now)
                .unwrap()
                .0
                .address
                .to_string()
        };
        // (client, time, endpoint)
        let steps = [
            ("10.0.1.100", secs(0), "10.0.1.1"),
            // Another client: the next by round robin.
            ("10.0.1.101", secs(0), "10.0.2.1"),
            ("10.0.1.100", secs(5), "10.0.1.1"),
            // 9 s after the last use (refreshed at 5 s).
            ("10.0.1.100", secs(14), "10.0.1.1"),
            // 11 s idle: expired, picked again by round robin.
            ("10.0.1.100", secs(25), "10.0.3.1"),
            ("10.0.1.100", secs(26), "10.0.3.1"),
            // Exactly the timeout is expired too.
            ("10.0.1.101", secs(10), "10.0.1.1"),
        ];
        for (i, (client, now, want)) in steps.into_iter().enumerate() {
            assert_eq!(pick(client, now), want, "step {i}");
        }
        // 10.0.1.101 was last used at 10 s, 10.0.1.100 at 26 s.
        assert_eq!(lb.sweep(secs(20)), 1);
        assert_eq!(lb.sweep(secs(35)), 1);
        assert_eq!(lb.sweep(secs(36)), 0);
    }

    #[test]
    fn affinity_moves_when_its_endpoint_becomes_ineligible() {
        let mut svc = backend();
        svc.client_ip_affinity = Some(model_default_timeout());
        let lb = LoadBalancer::new();
        let t0 = Instant::now();
        let client = ip("10.0.1.100");
        let (first, _) = lb
            .pick(&svc, 0, TrafficPolicy::Cluster, LOCAL, client, t0)
            .unwrap();
        assert_eq!(first.address, ip("10.0.1.1"));

        // a1 stops being ready: the client moves, and sticks to the new one.
        let mut changed = svc.clone();
        changed.endpoints[0] = with_conditions(changed.endpoints[0].clone(), false, false, false);
        let (moved, _) = lb
            .pick(&changed, 0, TrafficPolicy::Cluster, LOCAL, client, t0)
            .unwrap();
        assert_ne!(moved.address, ip("10.0.1.1"));
        let moved = moved.address;
        for s in 1..4 {
            let now = t0 + Duration::from_secs(s);
            let (again, _) = lb
                .pick(&changed, 0, TrafficPolicy::Cluster, LOCAL, client, now)
                .unwrap();
            assert_eq!(again.address, moved);
        }
        // a1 coming back does not take the client back.
        let (kept, _) = lb
            .pick(
                &svc,
                0,
                TrafficPolicy::Cluster,
                LOCAL,
                client,
                t0 + Duration::from_secs(5),
            )
            .unwrap();
        assert_eq!(kept.address, moved);

        // An endpoint that stops serving the port is ineligible as well.
        let mut unported = svc.clone();
        for e in &mut unported.endpoints {
            if e.address == moved {
                e.ports[0] = None;
            }
        }
        let (elsewhere, _) = lb
            .pick(
                &unported,
                0,
                TrafficPolicy::Cluster,
                LOCAL,
                client,
                t0 + Duration::from_secs(6),
            )
            .unwrap();
        assert_ne!(elsewhere.address, moved);
    }

    fn model_default_timeout() -> u32 {
        ferry_api::model::DEFAULT_AFFINITY_TIMEOUT_SECONDS
    }

    #[test]
    fn no_endpoint_keeps_no_affinity() {
        let mut svc = service(
            "backend",
            Some("10.96.0.10"),
            vec![tcp("http", 80, 8080)],
            vec![],
        );
        svc.client_ip_affinity = Some(10);
        let lb = LoadBalancer::new();
        let now = Instant::now();
        assert!(lb
            .pick(
                &svc,
                0,
                TrafficPolicy::Cluster,
                LOCAL,
                ip("10.0.1.100"),
                now
            )
            .is_err());
        assert_eq!(lb.sweep(now), 0);
    }

    // ---- carrying ----

    #[test]
    fn mode_for_each_kind_of_endpoint() {
        let s = state_with(vec![]);
        // (case, endpoint node, endpoint workload, mode)
        let cases = [
            ("local pod", Some("n1"), Some("shop/a1"), Mode::Direct),
            ("local bare address", Some("n1"), None, Mode::Direct),
            ("remote mesh pod", Some("n2"), Some("shop/a2"), Mode::Hbone),
            (
                "remote pod outside the mesh",
                Some("n2"),
                Some("shop/legacy"),
                Mode::Passthrough,
            ),
            (
                "node without HBONE",
                Some("n3"),
                Some("shop/a3"),
                Mode::Passthrough,
            ),
            (
                "unknown node",
                Some("n9"),
                Some("shop/a2"),
                Mode::Passthrough,
            ),
            ("remote bare address", Some("n2"), None, Mode::Passthrough),
            (
                "unknown workload",
                Some("n2"),
                Some("shop/ghost"),
                Mode::Passthrough,
            ),
            ("no node", None, Some("shop/a2"), Mode::Passthrough),
        ];
        for (case, node, workload, want) in cases {
            assert_eq!(mode_for(&s, LOCAL, true, node, workload), want, "{case}");
        }
        // A source outside the mesh has no identity: plaintext to remote
        // pods (the destination polices it), direct to local ones.
        assert_eq!(
            mode_for(&s, LOCAL, false, Some("n2"), Some("shop/a2")),
            Mode::Passthrough
        );
        assert_eq!(
            mode_for(&s, LOCAL, false, Some("n1"), Some("shop/a1")),
            Mode::Direct
        );
    }

    #[test]
    fn the_route_mode_of_a_service() {
        let on = |nodes: &[(&str, &str, &str)]| {
            let mut svc = service(
                "backend",
                Some("10.96.0.10"),
                vec![tcp("http", 80, 8080)],
                vec![],
            );
            svc.endpoints = nodes
                .iter()
                .map(|(pod, address, node)| ep(pod, address, node, &[Some(8080)]))
                .collect();
            svc
        };
        // (case, endpoints, mode)
        let cases = [
            ("all local", on(&[("a1", "10.0.1.1", "n1")]), Mode::Direct),
            (
                "one over HBONE",
                on(&[("a1", "10.0.1.1", "n1"), ("a2", "10.0.2.1", "n2")]),
                Mode::Hbone,
            ),
            (
                "remote, none over HBONE",
                on(&[
                    ("a1", "10.0.1.1", "n1"),
                    ("a3", "10.0.3.1", "n3"),
                    ("legacy", "10.0.2.9", "n2"),
                ]),
                Mode::Passthrough,
            ),
        ];
        for (case, svc, want) in cases {
            let s = state_with(vec![svc]);
            assert_eq!(explain_to(&s, "backend:80").mode, want, "{case}");
        }
    }

    // ---- names ----

    #[test]
    fn service_by_name_resolves_like_a_pods_dns_search_path() {
        let mut other = backend();
        other.namespace = "other".into();
        other.hostname = "backend.other.svc.cluster.local".into();
        other.cluster_ips = vec![ip("10.96.1.10")];
        let s = state_with(vec![backend(), other]);
        // (name, pod namespace, service found)
        let cases = [
            ("backend", "shop", Some("shop/backend")),
            ("backend", "other", Some("other/backend")),
            ("backend.shop", "other", Some("shop/backend")),
            ("backend.shop.svc", "other", Some("shop/backend")),
            (
                "backend.shop.svc.cluster.local",
                "other",
                Some("shop/backend"),
            ),
            (
                "backend.shop.svc.cluster.local.",
                "other",
                Some("shop/backend"),
            ),
            (
                "Backend.SHOP.svc.Cluster.Local",
                "other",
                Some("shop/backend"),
            ),
            // Wrong namespace.
            ("backend", "nowhere", None),
            ("backend.nowhere", "shop", None),
            ("frontend", "shop", None),
            // Another cluster domain than the service's own.
            ("backend.shop.svc.example.org", "shop", None),
            // Not a service name.
            ("backend.shop.pod", "shop", None),
            ("backend.shop.cluster.local", "shop", None),
            ("backend.shop.svc.", "shop", Some("shop/backend")),
            ("", "shop", None),
            (".shop", "shop", None),
            ("backend.", "shop", Some("shop/backend")),
        ];
        for (name, namespace, want) in cases {
            assert_eq!(
                service_by_name(&s, name, namespace)
                    .map(Service::key_name)
                    .as_deref(),
                want,
                "{name:?} from {namespace}"
            );
        }
    }

    // ---- ferryctl route ----

    #[test]
    fn explain_serializes_to_the_documented_shape() {
        let mut svc = backend();
        svc.client_ip_affinity = Some(10_800);
        svc.endpoints[2] = with_conditions(svc.endpoints[2].clone(), false, false, false);
        svc.endpoints
            .push(ep("legacy", "10.0.2.9", "n2", &[Some(8080), None]));
        let s = state_with(vec![svc]);
        let e = explain_to(&s, "backend.shop.svc.cluster.local:80");
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({
                "service": "shop/backend",
                "mode": "hbone",
                "reason": null,
                "affinity": {"type": "ClientIP", "timeout_seconds": 10800},
                "external_name": null,
                "endpoints": [
                    {"pod": "shop/a1", "address": "10.0.1.1", "port": 8080, "node": "n1",
                     "ready": true, "serving": true, "terminating": false, "mode": "direct"},
                    {"pod": "shop/a2", "address": "10.0.2.1", "port": 8080, "node": "n2",
                     "ready": true, "serving": true, "terminating": false, "mode": "hbone"},
                    {"pod": "shop/legacy", "address": "10.0.2.9", "port": 8080, "node": "n2",
                     "ready": true, "serving": true, "terminating": false, "mode": "passthrough"},
                ],
            })
        );
        // The metrics port: legacy does not serve it.
        let e = explain_to(&s, "10.96.0.10:9090");
        assert_eq!(
            e.endpoints.iter().map(|e| e.port).collect::<Vec<_>>(),
            [9091, 9091]
        );
    }

    #[test]
    fn explain_serializes_refusals_and_external_names() {
        let mut ext = service("ext", None, vec![], vec![]);
        ext.service_type = ServiceType::ExternalName;
        ext.external_name = Some("db.example.com".into());
        let s = state_with(vec![backend(), ext]);
        assert_eq!(
            serde_json::to_value(explain_to(&s, "10.96.0.10:81")).unwrap(),
            json!({
                "service": "shop/backend",
                "mode": "refused",
                "reason": "service shop/backend has no TCP port 81 (cluster IP 10.96.0.10)",
                "affinity": null,
                "external_name": null,
                "endpoints": [],
            })
        );
        assert_eq!(
            serde_json::to_value(explain_to(&s, "ext:443")).unwrap(),
            json!({
                "service": "shop/ext",
                "mode": "passthrough",
                "reason": null,
                "affinity": null,
                "external_name": "db.example.com",
                "endpoints": [],
            })
        );
    }

    #[test]
    fn explain_rejects_bad_input() {
        let s = state_with(vec![backend()]);
        let mut unscheduled = client();
        unscheduled.node = None;
        assert_eq!(
            explain(&s, &unscheduled, "backend:80").unwrap_err(),
            "pod shop/client is not scheduled on a node"
        );
        // (to, error)
        let cases = [
            ("backend", "\"backend\": expected HOST:PORT"),
            (
                "backend:http",
                "\"backend:http\": \"http\" is not a port number (1-65535)",
            ),
            (
                "backend:0",
                "\"backend:0\": \"0\" is not a port number (1-65535)",
            ),
            (
                "backend:70000",
                "\"backend:70000\": \"70000\" is not a port number (1-65535)",
            ),
            (":80", "\":80\": expected HOST:PORT, the host is empty"),
        ];
        for (to, want) in cases {
            assert_eq!(explain(&s, &client(), to).unwrap_err(), want, "{to}");
        }
    }

    #[test]
    fn the_table_aligns_its_columns() {
        let mut svc = backend();
        svc.client_ip_affinity = Some(60);
        svc.endpoints
            .push(ep("", "192.0.2.100", "", &[Some(80), Some(81)]));
        let s = state_with(vec![svc]);
        let table = explain_to(&s, "backend:80").to_table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "service:       shop/backend");
        assert_eq!(lines[1], "mode:          hbone");
        assert_eq!(lines[2], "affinity:      ClientIP (60 s)");
        let rows = &lines[4..];
        assert_eq!(rows.len(), 5, "{table}");
        assert!(rows[0].starts_with("POD"), "{table}");
        // Every column starts at the same offset on every row.
        let header = rows[0];
        for column in [
            "ADDRESS",
            "PORT",
            "NODE",
            "READY",
            "SERVING",
            "TERMINATING",
            "MODE",
        ] {
            let at = header.find(column).unwrap();
            for row in &rows[1..] {
                assert_eq!(row.as_bytes()[at - 1], b' ', "{column}: {row}");
                assert_ne!(row.as_bytes()[at], b' ', "{column}: {row}");
            }
        }
        assert!(rows[4].starts_with("-  "), "{table}");
        assert!(rows[4].ends_with("passthrough"), "{table}");

        let refused = explain_to(&s, "backend:81").to_table();
        assert_eq!(
            refused,
            "service:       shop/backend\nmode:          refused\n\
             reason:        service shop/backend has no TCP port 81\nendpoints:     none\n"
        );
    }
}
