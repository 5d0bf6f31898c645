//! Independent reference model of Kubernetes Service routing (kube-proxy
//! semantics) and NetworkPolicy (networking.k8s.io/v1) semantics, used as the
//! oracle of a differential test.
//!
//! Written from the Kubernetes documentation only:
//! - Services:            https://kubernetes.io/docs/concepts/services-networking/service/
//! - Virtual IPs/proxies: https://kubernetes.io/docs/reference/networking/virtual-ips/
//! - EndpointSlices:      https://kubernetes.io/docs/concepts/services-networking/endpoint-slices/
//! - Topology routing:    https://kubernetes.io/docs/concepts/services-networking/topology-aware-routing/
//! - Traffic distribution:https://kubernetes.io/docs/concepts/services-networking/service-traffic-distribution/
//! - Dual-stack:          https://kubernetes.io/docs/concepts/services-networking/dual-stack/
//! - NetworkPolicies:     https://kubernetes.io/docs/concepts/services-networking/network-policies/
//! - API reference (field docs): ServiceSpec, EndpointSlice, NetworkPolicySpec, LabelSelector.
//!
//! Where the behaviour is not spelled out in prose, the comments say which
//! kube-proxy / EndpointSlice-controller behaviour was modelled instead.
//!
//! Deliberate choices (see the comments at each place):
//! - EndpointSlice `serving: nil` is read as `true` (v1.33 API reference),
//!   and only the first address of a slice endpoint is used ("kube-proxy does
//!   not look at them").
//! - A service is invisible (`NotAService`) for a destination of an IP family
//!   it does not have; headless and ExternalName services are never proxied.
//! - Pods whose Node object is missing are skipped by the EndpointSlice
//!   controller unless `publishNotReadyAddresses` is set.
//! - For a selector service, EndpointSlices not managed by the EndpointSlice
//!   controller but labelled with the service name are merged in.
//! - Objects without `metadata.namespace` are in "default".

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{ContainerPort, Namespace, Node, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

type Labels = BTreeMap<String, String>;

const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
const SLICE_CONTROLLER: &str = "endpointslice-controller.k8s.io";
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Objects as read from manifests: NOT defaulted by an API server. The model
/// applies the API server's defaulting itself (see below).
#[derive(Debug, Default, Clone)]
pub struct Cluster {
    pub namespaces: Vec<Namespace>,
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    pub policies: Vec<NetworkPolicy>,
}

/// Who opens a connection.
#[derive(Debug, Clone, Copy)]
pub enum Client<'a> {
    /// A pod of the cluster (namespace, name); it runs on its spec.nodeName.
    Pod { namespace: &'a str, name: &'a str },
    /// A client outside the cluster whose connection enters the cluster at
    /// this node (for a node port: the node whose address was dialled).
    Outside { node: &'a str },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The destination is not a service address+port: not handled by the service proxy.
    NotAService,
    /// A service address, but the connection is rejected/dropped: no endpoint
    /// may serve it, or a cluster IP on a port the service does not define.
    Refused,
    /// The endpoints (endpoint IP, target port) any of which may serve it.
    Endpoints(BTreeSet<SocketAddr>),
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// `ipFamilies[]` values and EndpointSlice `addressType` share spelling.
    fn parse(s: &str) -> Option<Self> {
        match s {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        }
    }
}

/// One endpoint of one service port, as kube-proxy sees it.
#[derive(Debug, Clone)]
struct Ep {
    addr: SocketAddr,
    node: Option<String>,
    ready: bool,
    serving: bool,
    terminating: bool,
    zone_hints: BTreeSet<String>,
    node_hints: BTreeSet<String>,
}

/// How the service was reached.
enum Access<'c> {
    ClusterIp,
    External,
    NodePort(&'c str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

/// A connection end as judged by a NetworkPolicy peer.
struct PeerView<'a> {
    namespace: &'a str,
    labels: Labels,
    ip: IpAddr,
}

/// Namespaced objects without `metadata.namespace` land in "default"
/// (what `kubectl apply` does with a manifest that names no namespace).
fn namespace_of(meta: &ObjectMeta) -> &str {
    match meta.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => ns,
        _ => "default",
    }
}

fn name_of(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or("")
}

fn label<'m>(meta: &'m ObjectMeta, key: &str) -> Option<&'m str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

fn parse_ip(s: &str) -> Option<IpAddr> {
    s.trim().parse().ok()
}

/// Protocol defaulting (ServicePort, ContainerPort, EndpointPort,
/// NetworkPolicyPort): "Default is TCP".
fn protocol(p: Option<&String>) -> &str {
    p.map(String::as_str).unwrap_or("TCP")
}

fn to_port(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}

/// `cidr` contains `ip` (both of the same family).
fn cidr_contains(cidr: &str, ip: IpAddr) -> bool {
    let (addr, len) = match cidr.trim().split_once('/') {
        Some((a, l)) => match l.parse::<u32>() {
            Ok(l) => (a, Some(l)),
            Err(_) => return false,
        },
        None => (cidr.trim(), None),
    };
    let (net, host, bits) = match (parse_ip(addr), ip) {
        (Some(IpAddr::V4(n)), IpAddr::V4(h)) => {
            (u128::from(u32::from(n)), u128::from(u32::from(h)), 32)
        }
        (Some(IpAddr::V6(n)), IpAddr::V6(h)) => (u128::from(n), u128::from(h), 128),
        _ => return false,
    };
    let len = len.unwrap_or(bits);
    if len > bits {
        return false;
    }
    if len == 0 {
        return true;
    }
    let shift = bits - len;
    (net >> shift) == (host >> shift)
}

/// Full LabelSelector semantics (matchLabels AND matchExpressions; an empty
/// selector matches everything).
/// https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#resources-that-support-set-based-requirements
fn selector_matches(sel: &LabelSelector, labels: &Labels) -> bool {
    let equal = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions = sel.match_expressions.iter().flatten().all(|req| {
        let values: &[String] = req.values.as_deref().unwrap_or(&[]);
        let value = labels.get(&req.key);
        match req.operator.as_str() {
            "In" => match value {
                Some(v) => values.contains(v),
                None => false,
            },
            "NotIn" => match value {
                Some(v) => !values.contains(v),
                None => true,
            },
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    equal && expressions
}

// ---------------------------------------------------------------------------
// Service fields with API-server defaulting
// ---------------------------------------------------------------------------

/// `type` "Defaults to ClusterIP" (ServiceSpec API reference).
fn service_type(svc: &Service) -> &str {
    match svc.spec.as_ref().and_then(|s| s.type_.as_deref()) {
        Some(t) if !t.is_empty() => t,
        _ => "ClusterIP",
    }
}

/// `clusterIPs`, else `clusterIP` ("If this field is not specified, it will be
/// initialized from the clusterIP field").
fn cluster_ip_strings(svc: &Service) -> Vec<&str> {
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    match spec.cluster_ips.as_ref() {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.iter().map(String::as_str).collect(),
    }
}

fn cluster_ips(svc: &Service) -> Vec<IpAddr> {
    cluster_ip_strings(svc)
        .into_iter()
        .filter_map(parse_ip)
        .collect()
}

/// Services the proxy handles at all. Services page: ExternalName services are
/// DNS CNAMEs, "No proxying of any kind is set up"; headless services: "a
/// cluster IP is not allocated, kube-proxy does not handle these Services, and
/// there is no load balancing or proxying done by the platform for them".
fn is_proxied(svc: &Service) -> bool {
    service_type(svc) != "ExternalName" && cluster_ip_strings(svc).first() != Some(&"None")
}

/// Effective ipFamilies: `ipFamilies`, else the families of the cluster IPs,
/// else unknown (`None` = every family; the API server would have allocated an
/// IP the manifest does not tell us about).
fn service_families(svc: &Service) -> Option<BTreeSet<Family>> {
    let spec = svc.spec.as_ref()?;
    let declared: BTreeSet<Family> = spec
        .ip_families
        .iter()
        .flatten()
        .filter_map(|f| Family::parse(f))
        .collect();
    if !declared.is_empty() {
        return Some(declared);
    }
    let from_ips: BTreeSet<Family> = cluster_ips(svc).into_iter().map(Family::of).collect();
    if from_ips.is_empty() {
        None
    } else {
        Some(from_ips)
    }
}

/// kube-proxy runs one proxier per IP family and a proxier ignores a service
/// that has no cluster IP of its family (dual-stack page: a single-stack
/// service only gets addresses of its family). So a single-stack service is
/// simply not a service for a destination of the other family.
fn handles_family(svc: &Service, family: Family) -> bool {
    match service_families(svc) {
        Some(families) => families.contains(&family),
        None => true,
    }
}

fn tcp_port(svc: &Service, pick: impl Fn(&ServicePort) -> bool) -> Option<&ServicePort> {
    svc.spec
        .as_ref()?
        .ports
        .iter()
        .flatten()
        .filter(|p| protocol(p.protocol.as_ref()) == "TCP")
        .find(|p| pick(p))
}

/// `spec.externalIPs` (any proxied type) and, for type LoadBalancer,
/// `status.loadBalancer.ingress[].ip`. An ingress with `ipMode: Proxy` is not
/// captured by the node ("traffic is delivered ... with the destination set to
/// the node's IP and node port", LoadBalancerIngress API reference).
fn external_ips(svc: &Service) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = svc
        .spec
        .iter()
        .flat_map(|s| s.external_ips.iter().flatten())
        .filter_map(|s| parse_ip(s))
        .collect();
    if service_type(svc) == "LoadBalancer" {
        let ingress = svc
            .status
            .iter()
            .filter_map(|s| s.load_balancer.as_ref())
            .flat_map(|lb| lb.ingress.iter().flatten())
            .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
            .filter_map(|i| i.ip.as_deref().and_then(parse_ip));
        ips.extend(ingress);
    }
    ips
}

/// `internalTrafficPolicy` / `externalTrafficPolicy`: default Cluster.
fn is_local(policy: Option<&String>) -> bool {
    policy.map(String::as_str) == Some("Local")
}

// ---------------------------------------------------------------------------
// Pods
// ---------------------------------------------------------------------------

/// `status.podIPs`, else `status.podIP`.
fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    match status.pod_ips.as_ref() {
        Some(ips) if !ips.is_empty() => ips.iter().filter_map(|p| parse_ip(&p.ip)).collect(),
        _ => status.pod_ip.iter().filter_map(|s| parse_ip(s)).collect(),
    }
}

/// Pod condition Ready = "True".
fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

fn pod_node(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// A named container port of the pod with that protocol.
fn named_container_port(pod: &Pod, name: &str, proto: &str) -> Option<i32> {
    container_ports(pod)
        .find(|p| p.name.as_deref() == Some(name) && protocol(p.protocol.as_ref()) == proto)
        .map(|p| p.container_port)
}

/// Container ports of regular containers and of sidecars (init containers
/// with `restartPolicy: Always`).
fn container_ports(pod: &Pod) -> impl Iterator<Item = &ContainerPort> {
    let spec = pod.spec.as_ref();
    let containers = spec.into_iter().flat_map(|s| s.containers.iter());
    let sidecars = spec
        .into_iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    containers
        .chain(sidecars)
        .flat_map(|c| c.ports.iter().flatten())
}

/// The pod declares container port `number` under `name` with `proto`.
fn has_named_port(pod: &Pod, name: &str, proto: &str, number: i32) -> bool {
    container_ports(pod).any(|p| {
        p.name.as_deref() == Some(name)
            && protocol(p.protocol.as_ref()) == proto
            && p.container_port == number
    })
}

/// targetPort defaulting ("By default ... the targetPort is set to the same
/// value as the port field") and named-port resolution against the pod.
fn resolve_target_port(pod: &Pod, sp: &ServicePort) -> Option<u16> {
    let number = match sp.target_port.as_ref() {
        None | Some(IntOrString::Int(0)) => sp.port,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) if s.is_empty() => sp.port,
        Some(IntOrString::String(s)) => match s.parse::<i32>() {
            Ok(n) => n,
            Err(_) => named_container_port(pod, s, protocol(sp.protocol.as_ref()))?,
        },
    };
    to_port(number)
}

// ---------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------

impl Cluster {
    /// Where a TCP connection from `client` to `destination` may go.
    pub fn route(&self, client: Client<'_>, destination: SocketAddr) -> Route {
        let ip = destination.ip();
        let port = i32::from(destination.port());
        let family = Family::of(ip);
        let services: Vec<&Service> = self
            .services
            .iter()
            .filter(|s| is_proxied(s) && handles_family(s, family))
            .collect();

        // 1. A cluster IP: the service port with that port, else rejected
        //    (kube-proxy rejects/drops cluster-IP traffic on unknown ports).
        if let Some(svc) = services.iter().find(|s| cluster_ips(s).contains(&ip)) {
            return match tcp_port(svc, |p| p.port == port) {
                Some(sp) => self.serve(client, svc, sp, Access::ClusterIp, family),
                None => Route::Refused,
            };
        }
        // 2. An external IP / load-balancer IP on one of the service's ports.
        for svc in services.iter().filter(|s| external_ips(s).contains(&ip)) {
            if let Some(sp) = tcp_port(svc, |p| p.port == port) {
                return self.serve(client, svc, sp, Access::External, family);
            }
        }
        // 3. A node address on a node port.
        if let Some(node) = self.node_with_address(ip) {
            let node_port_services = services
                .iter()
                .filter(|s| matches!(service_type(s), "NodePort" | "LoadBalancer"));
            for svc in node_port_services {
                if let Some(sp) = tcp_port(svc, |p| p.node_port == Some(port)) {
                    return self.serve(client, svc, sp, Access::NodePort(node), family);
                }
            }
        }
        Route::NotAService
    }

    fn serve(
        &self,
        client: Client<'_>,
        svc: &Service,
        sp: &ServicePort,
        access: Access<'_>,
        family: Family,
    ) -> Route {
        let Some(spec) = svc.spec.as_ref() else {
            return Route::Refused;
        };
        let outside = matches!(client, Client::Outside { .. });
        let client_node = match client {
            Client::Pod { namespace, name } => self.find_pod(namespace, name).and_then(pod_node),
            Client::Outside { node } => Some(node),
        };
        // ServiceSpec.externalTrafficPolicy: "traffic sent to an External IP or
        // LoadBalancer IP from within the cluster will always get 'Cluster'
        // semantics". For node ports the reference only says in-cluster clients
        // "may need to take traffic policy into account"; we model kube-proxy's
        // short-circuit of pod-originated traffic to the Cluster policy.
        let etp_local = outside && is_local(spec.external_traffic_policy.as_ref());
        let (local, node) = match access {
            Access::ClusterIp => (is_local(spec.internal_traffic_policy.as_ref()), client_node),
            Access::External => (etp_local, client_node),
            Access::NodePort(node) => (etp_local, Some(node)),
        };
        let zone = node.and_then(|n| self.node_zone(n));
        let endpoints = self.endpoints(svc, sp, family);
        let chosen: BTreeSet<SocketAddr> = select(&endpoints, local, node, zone)
            .into_iter()
            .map(|e| e.addr)
            .collect();
        if chosen.is_empty() {
            Route::Refused
        } else {
            Route::Endpoints(chosen)
        }
    }

    fn find_pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods
            .iter()
            .find(|p| namespace_of(&p.metadata) == namespace && name_of(&p.metadata) == name)
    }

    fn find_node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| name_of(&n.metadata) == name)
    }

    fn node_zone(&self, name: &str) -> Option<&str> {
        self.find_node(name)
            .and_then(|n| label(&n.metadata, ZONE_LABEL))
            .filter(|z| !z.is_empty())
    }

    /// The node that owns `ip` as an InternalIP or ExternalIP address.
    fn node_with_address(&self, ip: IpAddr) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| {
                n.status
                    .iter()
                    .flat_map(|s| s.addresses.iter().flatten())
                    .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
                    .any(|a| parse_ip(&a.address) == Some(ip))
            })
            .map(|n| name_of(&n.metadata))
    }

    /// Every endpoint of one service port in one IP family (first occurrence
    /// of an IP:port wins).
    fn endpoints(&self, svc: &Service, sp: &ServicePort, family: Family) -> Vec<Ep> {
        let mut out = Vec::new();
        let selector = svc
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .filter(|s| !s.is_empty());
        if let Some(selector) = selector {
            self.controller_endpoints(svc, selector, sp, family, &mut out);
        }
        self.slice_endpoints(svc, sp, family, selector.is_some(), &mut out);
        out
    }

    /// What the EndpointSlice controller publishes for a selector service.
    fn controller_endpoints(
        &self,
        svc: &Service,
        selector: &Labels,
        sp: &ServicePort,
        family: Family,
        out: &mut Vec<Ep>,
    ) {
        let Some(spec) = svc.spec.as_ref() else {
            return;
        };
        let namespace = namespace_of(&svc.metadata);
        let publish = spec.publish_not_ready_addresses == Some(true);
        let distribution = spec.traffic_distribution.as_deref();
        for pod in &self.pods {
            if namespace_of(&pod.metadata) != namespace {
                continue;
            }
            let labels = pod.metadata.labels.as_ref();
            if !selector
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            {
                continue;
            }
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if matches!(phase, Some("Succeeded" | "Failed")) {
                continue;
            }
            let Some(node_name) = pod_node(pod) else {
                continue;
            };
            // The controller skips a pod whose Node object does not exist,
            // unless publishNotReadyAddresses is set.
            if self.find_node(node_name).is_none() && !publish {
                continue;
            }
            let Some(target) = resolve_target_port(pod, sp) else {
                continue;
            };
            // EndpointConditions: serving = pod Ready; ready = serving and not
            // terminating, or always with publishNotReadyAddresses.
            let serving = pod_ready(pod);
            let terminating = pod.metadata.deletion_timestamp.is_some();
            let ready = publish || (serving && !terminating);
            let zone = self.node_zone(node_name);
            // Traffic distribution: hints only on ready endpoints.
            let mut zone_hints = BTreeSet::new();
            let mut node_hints = BTreeSet::new();
            if ready {
                let (zones, nodes) = match distribution {
                    Some("PreferClose" | "PreferSameZone") => (true, false),
                    Some("PreferSameNode") => (true, true),
                    _ => (false, false),
                };
                if let (true, Some(z)) = (zones, zone) {
                    zone_hints.insert(z.to_string());
                }
                if nodes {
                    node_hints.insert(node_name.to_string());
                }
            }
            for ip in pod_ips(pod)
                .into_iter()
                .filter(|ip| Family::of(*ip) == family)
            {
                push_unique(
                    out,
                    Ep {
                        addr: SocketAddr::new(ip, target),
                        node: Some(node_name.to_string()),
                        ready,
                        serving,
                        terminating,
                        zone_hints: zone_hints.clone(),
                        node_hints: node_hints.clone(),
                    },
                );
            }
        }
    }

    /// Endpoints from EndpointSlice objects labelled with the service name.
    /// For a selector service, the controller-managed slices are replaced by
    /// `controller_endpoints`; slices managed by anyone else are still merged
    /// (kube-proxy joins all slices carrying the service-name label).
    fn slice_endpoints(
        &self,
        svc: &Service,
        sp: &ServicePort,
        family: Family,
        has_selector: bool,
        out: &mut Vec<Ep>,
    ) {
        let namespace = namespace_of(&svc.metadata);
        let service_name = name_of(&svc.metadata);
        let port_name = sp.name.as_deref().unwrap_or("");
        let port_protocol = protocol(sp.protocol.as_ref());
        for slice in &self.slices {
            if namespace_of(&slice.metadata) != namespace
                || label(&slice.metadata, SERVICE_NAME_LABEL) != Some(service_name)
            {
                continue;
            }
            if has_selector && label(&slice.metadata, MANAGED_BY_LABEL) == Some(SLICE_CONTROLLER) {
                continue;
            }
            // "kube-proxy only processes slices of addressType IPv4 and IPv6".
            if Family::parse(&slice.address_type) != Some(family) {
                continue;
            }
            let Some(target) = slice
                .ports
                .iter()
                .flatten()
                .find(|p| {
                    p.name.as_deref().unwrap_or("") == port_name
                        && protocol(p.protocol.as_ref()) == port_protocol
                })
                .and_then(|p| p.port)
                .and_then(to_port)
            else {
                continue;
            };
            for endpoint in &slice.endpoints {
                // Endpoint.addresses: "No semantics are defined for additional
                // addresses beyond the first, and kube-proxy does not look at them."
                let Some(ip) = endpoint.addresses.first().and_then(|a| parse_ip(a)) else {
                    continue;
                };
                if Family::of(ip) != family {
                    continue;
                }
                let conditions = endpoint.conditions.as_ref();
                let hints = endpoint.hints.as_ref();
                push_unique(
                    out,
                    Ep {
                        addr: SocketAddr::new(ip, target),
                        node: endpoint.node_name.clone(),
                        // ready: "A nil value should be interpreted as true".
                        ready: conditions.and_then(|c| c.ready).unwrap_or(true),
                        // serving: the v1.33 API reference says "A nil value
                        // should be interpreted as true" (not "same as ready",
                        // as the brief suggested; older docs said "defer to
                        // ready").
                        serving: conditions.and_then(|c| c.serving).unwrap_or(true),
                        // terminating: "A nil value should be interpreted as false".
                        terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
                        zone_hints: hints
                            .iter()
                            .flat_map(|h| h.for_zones.iter().flatten())
                            .map(|z| z.name.clone())
                            .collect(),
                        node_hints: hints
                            .iter()
                            .flat_map(|h| h.for_nodes.iter().flatten())
                            .map(|n| n.name.clone())
                            .collect(),
                    },
                );
            }
        }
    }
}

fn push_unique(out: &mut Vec<Ep>, ep: Ep) {
    if !out.iter().any(|e| e.addr == ep.addr) {
        out.push(ep);
    }
}

/// kube-proxy endpoint selection for one service port on serving node `node`.
///
/// Virtual IPs page, "Traffic policies" and "Traffic to terminating
/// endpoints": Cluster routes to all ready endpoints, Local to ready node-local
/// ones (dropping when there are none); when no ready endpoint is usable, the
/// serving-and-terminating ones are used instead. Topology only applies with
/// the Cluster policy ("Topology Aware Hints are not used when
/// internalTrafficPolicy is set to Local").
fn select<'e>(eps: &'e [Ep], local: bool, node: Option<&str>, zone: Option<&str>) -> Vec<&'e Ep> {
    if local {
        let on_node = |e: &&Ep| node.is_some() && e.node.as_deref() == node;
        let ready: Vec<&Ep> = eps.iter().filter(on_node).filter(|e| e.ready).collect();
        if !ready.is_empty() {
            return ready;
        }
        return eps
            .iter()
            .filter(on_node)
            .filter(|e| e.serving && e.terminating)
            .collect();
    }
    let ready = topology_filter(eps.iter().filter(|e| e.ready).collect(), node, zone);
    if !ready.is_empty() {
        return ready;
    }
    eps.iter().filter(|e| e.serving && e.terminating).collect()
}

/// Topology-aware routing safeguards: hints are only honoured when every ready
/// endpoint carries one ("One or more endpoints does not have a zone hint ...
/// kube-proxy falls back to using all endpoints") and at least one targets
/// this node/zone ("A zone is not represented in hints ... falls back").
/// Same-node hints (PreferSameNode) are looked at before zone hints.
fn topology_filter<'e>(ready: Vec<&'e Ep>, node: Option<&str>, zone: Option<&str>) -> Vec<&'e Ep> {
    if let Some(n) = node {
        if ready.iter().all(|e| !e.node_hints.is_empty())
            && ready.iter().any(|e| e.node_hints.contains(n))
        {
            return ready
                .into_iter()
                .filter(|e| e.node_hints.contains(n))
                .collect();
        }
    }
    if let Some(z) = zone {
        if ready.iter().all(|e| !e.zone_hints.is_empty())
            && ready.iter().any(|e| e.zone_hints.contains(z))
        {
            return ready
                .into_iter()
                .filter(|e| e.zone_hints.contains(z))
                .collect();
        }
    }
    ready
}

// ---------------------------------------------------------------------------
// NetworkPolicy
// ---------------------------------------------------------------------------

/// NetworkPolicySpec.policyTypes: "If this field is not specified, it will
/// default based on the existence of ingress or egress rules; policies that
/// contain an egress section are assumed to affect egress, and all policies
/// ... are assumed to affect ingress." An empty `egress: []` list does not
/// count as an egress section (the API server's defaulting tests len != 0).
fn affects(spec: &NetworkPolicySpec, direction: Direction) -> bool {
    let wanted = match direction {
        Direction::Ingress => "Ingress",
        Direction::Egress => "Egress",
    };
    match spec.policy_types.as_ref() {
        Some(types) if !types.is_empty() => types.iter().any(|t| t == wanted),
        _ => match direction {
            Direction::Ingress => true,
            Direction::Egress => spec.egress.as_ref().is_some_and(|e| !e.is_empty()),
        },
    }
}

impl Cluster {
    /// Whether NetworkPolicies allow a connection from pod `from` (using
    /// source address `from_ip`) to pod `to` (at address `to_ip`) on
    /// destination port `port` with `protocol` ("TCP", "UDP" or "SCTP"):
    /// egress of `from` AND ingress of `to` must both allow it.
    pub fn policy_allows(
        &self,
        from: (&str, &str),
        from_ip: IpAddr,
        to: (&str, &str),
        to_ip: IpAddr,
        port: u16,
        protocol: &str,
    ) -> bool {
        let source = PeerView {
            namespace: from.0,
            labels: self.pod_labels(from),
            ip: from_ip,
        };
        let destination = PeerView {
            namespace: to.0,
            labels: self.pod_labels(to),
            ip: to_ip,
        };
        let dst_pod = self.find_pod(to.0, to.1);
        let conn = (port, protocol, dst_pod);
        self.direction_allows(Direction::Egress, &source, &destination, conn)
            && self.direction_allows(Direction::Ingress, &destination, &source, conn)
    }

    fn pod_labels(&self, (namespace, name): (&str, &str)) -> Labels {
        self.find_pod(namespace, name)
            .and_then(|p| p.metadata.labels.clone())
            .unwrap_or_default()
    }

    /// Namespace labels plus the immutable `kubernetes.io/metadata.name`.
    fn namespace_labels(&self, namespace: &str) -> Labels {
        let mut labels = self
            .namespaces
            .iter()
            .find(|n| name_of(&n.metadata) == namespace)
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default();
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), namespace.to_string());
        labels
    }

    /// Concept page, "The two sorts of pod isolation": a pod is isolated for a
    /// direction when a policy of its namespace selects it and has that
    /// direction in policyTypes; then only traffic allowed by the union of
    /// those policies' rules passes. Non-isolated: everything passes.
    fn direction_allows(
        &self,
        direction: Direction,
        subject: &PeerView<'_>,
        peer: &PeerView<'_>,
        (port, proto, dst_pod): (u16, &str, Option<&Pod>),
    ) -> bool {
        let empty_spec = NetworkPolicySpec::default();
        let empty_selector = LabelSelector::default();
        let mut isolated = false;
        for policy in &self.policies {
            let policy_ns = namespace_of(&policy.metadata);
            if policy_ns != subject.namespace {
                continue;
            }
            let spec = policy.spec.as_ref().unwrap_or(&empty_spec);
            // "An empty podSelector selects all pods in the namespace."
            let selector = spec.pod_selector.as_ref().unwrap_or(&empty_selector);
            if !selector_matches(selector, &subject.labels) || !affects(spec, direction) {
                continue;
            }
            isolated = true;
            let rules: Vec<_> = match direction {
                Direction::Ingress => (spec.ingress.iter().flatten())
                    .map(|r| (r.from.as_ref(), r.ports.as_ref()))
                    .collect(),
                Direction::Egress => (spec.egress.iter().flatten())
                    .map(|r| (r.to.as_ref(), r.ports.as_ref()))
                    .collect(),
            };
            let allowed = rules.into_iter().any(|(peers, ports)| {
                self.peers_match(policy_ns, peers, peer) && ports_match(ports, port, proto, dst_pod)
            });
            if allowed {
                return true;
            }
        }
        !isolated
    }

    /// Missing or empty `from`/`to`: every peer. Otherwise any listed peer.
    fn peers_match(
        &self,
        policy_ns: &str,
        peers: Option<&Vec<NetworkPolicyPeer>>,
        peer: &PeerView<'_>,
    ) -> bool {
        let Some(peers) = peers.filter(|p| !p.is_empty()) else {
            return true;
        };
        peers.iter().any(|p| self.peer_matches(policy_ns, p, peer))
    }

    /// NetworkPolicyPeer API reference: podSelector alone = pods of the
    /// policy's namespace; namespaceSelector alone = all pods of the selected
    /// namespaces; both = matching pods in matching namespaces; ipBlock = the
    /// CIDR minus `except`.
    fn peer_matches(&self, policy_ns: &str, p: &NetworkPolicyPeer, peer: &PeerView<'_>) -> bool {
        if let Some(block) = p.ip_block.as_ref() {
            return cidr_contains(&block.cidr, peer.ip)
                && !block
                    .except
                    .iter()
                    .flatten()
                    .any(|e| cidr_contains(e, peer.ip));
        }
        match (p.pod_selector.as_ref(), p.namespace_selector.as_ref()) {
            (None, None) => false,
            (Some(pods), None) => {
                peer.namespace == policy_ns && selector_matches(pods, &peer.labels)
            }
            (pods, Some(namespaces)) => {
                let pod_ok = match pods {
                    Some(pods) => selector_matches(pods, &peer.labels),
                    None => true,
                };
                pod_ok && selector_matches(namespaces, &self.namespace_labels(peer.namespace))
            }
        }
    }
}

/// NetworkPolicyPort API reference: protocol defaults to TCP; a missing port
/// "matches all port names and numbers"; `endPort` makes the inclusive range
/// port..=endPort; a named port is a port name "on a pod" (the destination).
fn ports_match(
    ports: Option<&Vec<NetworkPolicyPort>>,
    port: u16,
    proto: &str,
    dst_pod: Option<&Pod>,
) -> bool {
    let Some(ports) = ports.filter(|p| !p.is_empty()) else {
        return true;
    };
    let port = i32::from(port);
    ports.iter().any(|p| {
        if protocol(p.protocol.as_ref()) != proto {
            return false;
        }
        let numeric = |n: i32| match p.end_port {
            Some(end) => (n..=end).contains(&port),
            None => n == port,
        };
        match p.port.as_ref() {
            None => true,
            Some(IntOrString::Int(n)) => numeric(*n),
            Some(IntOrString::String(s)) => match s.parse::<i32>() {
                Ok(n) => numeric(n),
                Err(_) => dst_pod.is_some_and(|pod| has_named_port(pod, s, proto, port)),
            },
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use serde_json::{json, Value};

    fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn eps(addrs: &[&str]) -> Route {
        Route::Endpoints(addrs.iter().map(|a| sa(a)).collect())
    }

    fn node(name: &str, zone: &str, addr: &str) -> Node {
        from(json!({
            "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
            "status": {"addresses": [{"type": "InternalIP", "address": addr}]}
        }))
    }

    /// A running pod `id` = "namespace/name@node" labelled app=`app`, with
    /// container port "http" = 8080.
    fn pod(id: &str, ips: &[&str], app: &str, ready: bool) -> Pod {
        let (ns, rest) = id.split_once('/').unwrap();
        let (name, node) = rest.split_once('@').unwrap();
        let ips: Vec<Value> = ips.iter().map(|i| json!({ "ip": i })).collect();
        from(json!({
            "metadata": {"namespace": ns, "name": name, "labels": {"app": app}},
            "spec": {"nodeName": node, "containers": [
                {"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}
            ]},
            "status": {"phase": "Running", "podIPs": ips, "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" }}
            ]}
        }))
    }

    /// A ready pod labelled app=web with a single IP.
    fn web(id: &str, ip: &str) -> Pod {
        pod(id, &[ip], "web", true)
    }

    fn terminating(mut p: Pod) -> Pod {
        p.metadata.deletion_timestamp = from(json!("2024-01-01T00:00:00Z"));
        p
    }

    fn without_ports(mut p: Pod) -> Pod {
        if let Some(spec) = p.spec.as_mut() {
            spec.containers[0].ports = None;
        }
        p
    }

    /// Nodes n1/n2/n3 in zones a/b/c at 10.0.0.1-3; client pods c1 on n1 and
    /// c2 on n2.
    fn base() -> Cluster {
        Cluster {
            nodes: vec![
                node("n1", "a", "10.0.0.1"),
                node("n2", "b", "10.0.0.2"),
                node("n3", "c", "10.0.0.3"),
            ],
            pods: vec![
                pod("default/c1@n1", &["10.9.0.1"], "client", true),
                pod("default/c2@n2", &["10.9.0.2"], "client", true),
            ],
            ..Cluster::default()
        }
    }

    /// default/web: cluster IP 10.96.0.10, port 80 -> 8080, selector app=web;
    /// `extra` is merged into the spec.
    fn web_service(extra: Value) -> Service {
        let mut v = json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "web"},
                     "ports": [{"port": 80, "targetPort": 8080}]}
        });
        if let (Some(spec), Value::Object(extra)) = (v["spec"].as_object_mut(), extra) {
            spec.extend(extra);
        }
        from(v)
    }

    const C1: Client<'static> = Client::Pod {
        namespace: "default",
        name: "c1",
    };
    const C2: Client<'static> = Client::Pod {
        namespace: "default",
        name: "c2",
    };

    // ServicePort API reference, targetPort: "Number or name of the port to
    // access on the pods targeted by the service". A cluster IP on a port the
    // service does not define is rejected (kube-proxy behaviour, see
    // kubernetes/kubernetes#72236: "ClusterIPs should reject or drop traffic
    // to unexpected ports").
    #[test]
    fn cluster_ip_on_undefined_port_is_refused() {
        let mut c = base();
        c.pods.push(web("default/w1@n1", "10.1.0.1"));
        c.services.push(web_service(json!({})));
        assert_eq!(c.route(C1, sa("10.96.0.10:80")), eps(&["10.1.0.1:8080"]));
        assert_eq!(c.route(C1, sa("10.96.0.10:81")), Route::Refused);
        assert_eq!(c.route(C1, sa("10.1.0.1:8080")), Route::NotAService);
    }

    // Services page, "Port definitions": a named targetPort works "even if
    // there is a mixture of Pods in the Service using a single configured
    // name"; a pod without that port name does not back the port.
    #[test]
    fn named_target_port_resolves_per_pod() {
        let mut c = base();
        c.pods.extend([
            web("default/w1@n1", "10.1.0.1"),
            without_ports(web("default/w2@n2", "10.1.0.2")),
        ]);
        c.services.push(web_service(
            json!({"ports": [{"port": 80, "targetPort": "http"}]}),
        ));
        assert_eq!(c.route(C1, sa("10.96.0.10:80")), eps(&["10.1.0.1:8080"]));
    }

    // Virtual IPs page, "Traffic to terminating endpoints"; EndpointSlices
    // page, "Conditions": serving-and-terminating endpoints are only used
    // when there is no ready endpoint.
    #[test]
    fn terminating_endpoints_are_a_fallback() {
        let mut c = base();
        c.pods.extend([
            terminating(web("default/t1@n1", "10.1.0.1")),
            terminating(pod("default/t2@n2", &["10.1.0.2"], "web", false)),
        ]);
        c.services.push(web_service(json!({})));
        assert_eq!(c.route(C1, sa("10.96.0.10:80")), eps(&["10.1.0.1:8080"]));
        c.pods.push(web("default/w3@n2", "10.1.0.3"));
        assert_eq!(c.route(C1, sa("10.96.0.10:80")), eps(&["10.1.0.3:8080"]));
    }

    // Service Internal Traffic Policy page: Local means "only route to ready
    // node-local endpoints. If the traffic policy is Local and there are no
    // node-local endpoints, traffic is dropped by kube-proxy."
    #[test]
    fn internal_traffic_policy_local() {
        let mut c = base();
        c.pods.extend([
            web("default/w1@n1", "10.1.0.1"),
            web("default/w3@n3", "10.1.0.3"),
        ]);
        c.services
            .push(web_service(json!({"internalTrafficPolicy": "Local"})));
        assert_eq!(c.route(C1, sa("10.96.0.10:80")), eps(&["10.1.0.1:8080"]));
        assert_eq!(c.route(C2, sa("10.96.0.10:80")), Route::Refused);
    }

    // ServiceSpec.externalTrafficPolicy: "Traffic mistakenly sent to a node
    // with no endpoints will be dropped"; "traffic sent to an External IP or
    // LoadBalancer IP from within the cluster will always get 'Cluster'
    // semantics" (node ports: kube-proxy short-circuits pod traffic too).
    #[test]
    fn external_traffic_policy_local_only_for_outside_clients() {
        let mut c = base();
        c.pods.push(web("default/w1@n1", "10.1.0.1"));
        c.services.push(web_service(json!({
            "type": "NodePort", "externalTrafficPolicy": "Local", "externalIPs": ["192.0.2.10"],
            "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}]
        })));
        let (via_n1, via_n2) = (
            Client::Outside { node: "n1" },
            Client::Outside { node: "n2" },
        );
        let w1 = eps(&["10.1.0.1:8080"]);
        assert_eq!(c.route(via_n1, sa("10.0.0.1:30080")), w1);
        assert_eq!(c.route(via_n2, sa("10.0.0.2:30080")), Route::Refused);
        assert_eq!(c.route(via_n2, sa("192.0.2.10:80")), Route::Refused);
        assert_eq!(c.route(C2, sa("10.0.0.2:30080")), w1);
        assert_eq!(c.route(C2, sa("192.0.2.10:80")), w1);
        assert_eq!(c.route(C2, sa("10.0.0.2:30081")), Route::NotAService);
    }

    // Topology Aware Routing page, "Safeguards": "One or more endpoints does
    // not have a zone hint: ... kube-proxy falls back to using all
    // endpoints"; Traffic Distribution page: PreferClose prefers endpoints in
    // the client's zone, and routes cluster-wide when the zone has none.
    #[test]
    fn topology_hints_and_fallback() {
        let mut c = base();
        c.services.push(from(json!({
            "metadata": {"namespace": "default", "name": "ext"},
            "spec": {"clusterIP": "10.96.0.11", "ports": [{"name": "h", "port": 80}]}
        })));
        let slice = |third_hints: Value| -> EndpointSlice {
            from(json!({
                "metadata": {"namespace": "default", "name": "ext-1",
                             "labels": {"kubernetes.io/service-name": "ext"}},
                "addressType": "IPv4",
                "ports": [{"name": "h", "port": 9000}],
                "endpoints": [
                    {"addresses": ["10.2.0.1"], "hints": {"forZones": [{"name": "a"}]}},
                    {"addresses": ["10.2.0.2"], "hints": {"forZones": [{"name": "b"}]}},
                    {"addresses": ["10.2.0.3"], "hints": third_hints}
                ]
            }))
        };
        c.slices.push(slice(json!({})));
        let all = eps(&["10.2.0.1:9000", "10.2.0.2:9000", "10.2.0.3:9000"]);
        assert_eq!(c.route(C1, sa("10.96.0.11:80")), all);
        c.slices[0] = slice(json!({"forZones": [{"name": "c"}]}));
        assert_eq!(c.route(C1, sa("10.96.0.11:80")), eps(&["10.2.0.1:9000"]));

        c.pods.extend([
            web("default/w1@n1", "10.1.0.1"),
            web("default/w2@n2", "10.1.0.2"),
        ]);
        c.services
            .push(web_service(json!({"trafficDistribution": "PreferClose"})));
        assert_eq!(c.route(C2, sa("10.96.0.10:80")), eps(&["10.1.0.2:8080"]));
        let via_n3 = Client::Outside { node: "n3" };
        let both = eps(&["10.1.0.1:8080", "10.1.0.2:8080"]);
        assert_eq!(c.route(via_n3, sa("10.96.0.10:80")), both);
    }

    // Dual-stack page: a dual-stack Service has a cluster IP per family, and
    // EndpointSlices are per address family; a single-stack IPv4 service has
    // no IPv6 service address.
    #[test]
    fn dual_stack_family_selection() {
        let mut c = base();
        c.pods.push(pod(
            "default/w1@n1",
            &["10.1.0.1", "fd00:1::1"],
            "web",
            true,
        ));
        c.services.push(web_service(json!({
            "clusterIPs": ["10.96.0.10", "fd00::10"], "ipFamilies": ["IPv4", "IPv6"]
        })));
        assert_eq!(c.route(C1, sa("10.96.0.10:80")), eps(&["10.1.0.1:8080"]));
        assert_eq!(c.route(C1, sa("[fd00::10]:80")), eps(&["[fd00:1::1]:8080"]));
        c.services[0] = web_service(json!({"externalIPs": ["192.0.2.1", "2001:db8::1"]}));
        assert_eq!(c.route(C1, sa("192.0.2.1:80")), eps(&["10.1.0.1:8080"]));
        assert_eq!(c.route(C1, sa("[2001:db8::1]:80")), Route::NotAService);
    }

    fn policy(ns: &str, spec: Value) -> NetworkPolicy {
        from(json!({"metadata": {"namespace": ns, "name": "p"}, "spec": spec}))
    }

    /// Pods prod/web, prod/db, dev/web, dev/tool (10.3.0.1-4); namespaces
    /// prod (team=a) and dev (team=b).
    fn policy_cluster() -> Cluster {
        let ns = |name: &str, team: &str| -> Namespace {
            from(json!({"metadata": {"name": name, "labels": {"team": team}}}))
        };
        Cluster {
            namespaces: vec![ns("prod", "a"), ns("dev", "b")],
            pods: vec![
                web("prod/web@n1", "10.3.0.1"),
                pod("prod/db@n1", &["10.3.0.2"], "db", true),
                web("dev/web@n1", "10.3.0.3"),
                pod("dev/tool@n1", &["10.3.0.4"], "tool", true),
            ],
            ..Cluster::default()
        }
    }

    fn allows(c: &Cluster, from: (&str, &str), to: (&str, &str), port: u16, proto: &str) -> bool {
        let addr = |p: (&str, &str)| pod_ips(c.find_pod(p.0, p.1).unwrap())[0];
        c.policy_allows(from, addr(from), to, addr(to), port, proto)
    }

    // NetworkPolicySpec.policyTypes: "policies that contain an egress section
    // are assumed to affect egress, and all policies (whether or not they
    // contain an ingress section) are assumed to affect ingress."
    #[test]
    fn policy_types_defaulting() {
        let mut c = policy_cluster();
        c.policies.push(policy(
            "prod",
            json!({
                "podSelector": {"matchLabels": {"app": "web"}},
                "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "db"}}}]}]
            }),
        ));
        assert!(allows(&c, ("prod", "web"), ("prod", "db"), 5432, "TCP"));
        assert!(!allows(&c, ("prod", "web"), ("dev", "tool"), 80, "TCP"));
        assert!(!allows(&c, ("prod", "db"), ("prod", "web"), 80, "TCP"));
        c.policies[0] = policy(
            "prod",
            json!({
                "podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{}], "egress": []
            }),
        );
        assert!(allows(&c, ("prod", "web"), ("dev", "tool"), 80, "TCP"));
        assert!(allows(&c, ("dev", "tool"), ("prod", "web"), 80, "TCP"));
    }

    // Network Policies page, "Behavior of to and from selectors": one element
    // with namespaceSelector and podSelector (AND) versus two elements (OR);
    // namespaces carry the kubernetes.io/metadata.name label.
    #[test]
    fn selectors_and_versus_or() {
        let mut c = policy_cluster();
        let db = json!({"matchLabels": {"app": "db"}});
        c.policies.push(policy(
            "prod",
            json!({"podSelector": db, "ingress": [{"from": [
                {"namespaceSelector": {"matchLabels": {"team": "b"}},
                 "podSelector": {"matchLabels": {"app": "web"}}}
            ]}]}),
        ));
        assert!(allows(&c, ("dev", "web"), ("prod", "db"), 5432, "TCP"));
        assert!(!allows(&c, ("dev", "tool"), ("prod", "db"), 5432, "TCP"));
        assert!(!allows(&c, ("prod", "web"), ("prod", "db"), 5432, "TCP"));
        c.policies[0] = policy(
            "prod",
            json!({"podSelector": db, "ingress": [{"from": [
                {"namespaceSelector": {"matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["dev"]}
                ]}},
                {"podSelector": {"matchLabels": {"app": "web"}}}
            ]}]}),
        );
        assert!(allows(&c, ("dev", "web"), ("prod", "db"), 5432, "TCP"));
        assert!(allows(&c, ("dev", "tool"), ("prod", "db"), 5432, "TCP"));
        assert!(allows(&c, ("prod", "web"), ("prod", "db"), 5432, "TCP"));
        assert!(!allows(&c, ("prod", "db"), ("prod", "db"), 5432, "TCP"));
    }

    // IPBlock API reference: "The except entry describes CIDRs that should
    // not be included within this rule."
    #[test]
    fn ip_block_except() {
        let mut c = policy_cluster();
        c.policies.push(policy(
            "prod",
            json!({"podSelector": {}, "ingress": [{"from": [
                {"ipBlock": {"cidr": "10.3.0.0/16", "except": ["10.3.5.0/24"]}}
            ]}]}),
        ));
        let (src, dst, db) = (("dev", "tool"), ("prod", "db"), ip("10.3.0.2"));
        assert!(c.policy_allows(src, ip("10.3.0.4"), dst, db, 80, "TCP"));
        assert!(!c.policy_allows(src, ip("10.3.5.4"), dst, db, 80, "TCP"));
        assert!(!c.policy_allows(src, ip("10.4.0.4"), dst, db, 80, "TCP"));
        assert!(!c.policy_allows(src, ip("fd00::4"), dst, db, 80, "TCP"));
    }

    // NetworkPolicyPort.endPort: "the range of ports from port to endPort if
    // set, inclusive"; protocol: "If not specified, this field defaults to TCP".
    #[test]
    fn end_port_range() {
        let mut c = policy_cluster();
        c.policies.push(policy(
            "prod",
            json!({"podSelector": {}, "ingress": [
                {"ports": [{"port": 8000, "endPort": 8100}]}
            ]}),
        ));
        let check = |port, proto| allows(&c, ("dev", "web"), ("prod", "db"), port, proto);
        assert!(check(8000, "TCP") && check(8050, "TCP") && check(8100, "TCP"));
        assert!(!check(7999, "TCP") && !check(8101, "TCP") && !check(8050, "UDP"));
    }

    // NetworkPolicyPort.port: "This can either be a numerical or named port on
    // a pod" -- the destination pod's container port of that name.
    #[test]
    fn named_policy_port() {
        let mut c = policy_cluster();
        c.policies.push(policy(
            "dev",
            json!({"podSelector": {}, "policyTypes": ["Egress"],
            "egress": [{"ports": [{"port": "http"}]}]}),
        ));
        assert!(allows(&c, ("dev", "web"), ("prod", "db"), 8080, "TCP"));
        assert!(!allows(&c, ("dev", "web"), ("prod", "db"), 9090, "TCP"));
        assert!(!allows(&c, ("dev", "web"), ("prod", "db"), 8080, "UDP"));
        c.pods[1] = without_ports(c.pods[1].clone());
        assert!(!allows(&c, ("dev", "web"), ("prod", "db"), 8080, "TCP"));
    }
}
