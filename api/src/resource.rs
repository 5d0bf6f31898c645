//! Resource keys, content versions, and the conversion between the wire form
//! ([`crate::proto`]) and the model ([`crate::model`]).
//!
//! A resource's version is the xxh3 hash of its encoded body. Encoding is
//! deterministic (maps are ordered), so the same content gets the same version
//! in every control plane process: after a restart, a proxy that reports what
//! it holds is sent only what really changed.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use serde::Serialize;

use crate::model::*;
use crate::proto;

/// The kinds of resource the control plane distributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Workload,
    Service,
    Node,
    Policy,
    #[serde(rename = "peer_group")]
    PeerGroup,
}

impl Kind {
    /// All kinds, in the order a proxy applies them.
    pub const ALL: [Kind; 5] = [
        Kind::Node,
        Kind::Workload,
        Kind::Service,
        Kind::PeerGroup,
        Kind::Policy,
    ];

    fn to_proto(self) -> proto::Kind {
        match self {
            Kind::Workload => proto::Kind::Workload,
            Kind::Service => proto::Kind::Service,
            Kind::Node => proto::Kind::Node,
            Kind::Policy => proto::Kind::Policy,
            Kind::PeerGroup => proto::Kind::PeerGroup,
        }
    }

    fn from_proto(value: i32) -> Option<Self> {
        match proto::Kind::try_from(value).ok()? {
            proto::Kind::Workload => Some(Kind::Workload),
            proto::Kind::Service => Some(Kind::Service),
            proto::Kind::Node => Some(Kind::Node),
            proto::Kind::Policy => Some(Kind::Policy),
            proto::Kind::PeerGroup => Some(Kind::PeerGroup),
            proto::Kind::Unspecified => None,
        }
    }

    /// Lower-case name, as used in keys and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Workload => "workload",
            Kind::Service => "service",
            Kind::Node => "node",
            Kind::Policy => "policy",
            Kind::PeerGroup => "peer_group",
        }
    }
}

/// Stable identity of a resource: its kind and name (`namespace/name`, or the
/// node name for nodes).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ResourceKey {
    pub kind: Kind,
    /// Shared: the proxy's tables and indexes, and the control plane's
    /// published map, change log and streams, hold one copy of each key.
    pub name: Name,
}

/// A borrowed view of a [`ResourceKey`]: maps keyed by `ResourceKey` can
/// be searched with a `(Kind, &str)` through it, allocating nothing.
/// Hashes and compares exactly as `ResourceKey` does (kind, then name).
pub trait KeyView {
    fn kind(&self) -> Kind;
    fn name(&self) -> &str;
}

impl KeyView for ResourceKey {
    fn kind(&self) -> Kind {
        self.kind
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl KeyView for (Kind, &str) {
    fn kind(&self) -> Kind {
        self.0
    }

    fn name(&self) -> &str {
        self.1
    }
}

impl std::hash::Hash for dyn KeyView + '_ {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // The same sequence as the derived `Hash` of `ResourceKey`.
        self.kind().hash(state);
        self.name().hash(state);
    }
}

impl PartialEq for dyn KeyView + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.kind() == other.kind() && self.name() == other.name()
    }
}

impl Eq for dyn KeyView + '_ {}

impl<'a> std::borrow::Borrow<dyn KeyView + 'a> for ResourceKey {
    fn borrow(&self) -> &(dyn KeyView + 'a) {
        self
    }
}

impl ResourceKey {
    pub fn new(kind: Kind, name: impl Into<Name>) -> Self {
        Self {
            kind,
            name: name.into(),
        }
    }

    pub fn to_proto(&self) -> proto::ResourceKey {
        proto::ResourceKey {
            kind: self.kind.to_proto() as i32,
            name: self.name.to_string(),
        }
    }

    /// Converts a wire key; `None` for an unknown kind or an empty name.
    pub fn from_proto(key: &proto::ResourceKey) -> Option<Self> {
        let kind = Kind::from_proto(key.kind)?;
        (!key.name.is_empty()).then(|| Self::new(kind, key.name.as_str()))
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.as_str(), self.name)
    }
}

/// Why a resource on the wire was rejected; a proxy sends this back in a NACK.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ResourceError {
    pub key: ResourceKey,
    pub message: String,
}

/// A field that does not convert into the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The body of a resource in model form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ResourceBody {
    Workload(Workload),
    /// Boxed: the largest body, and the rarest (one per ten or so
    /// workloads); inline it would size every resource.
    Service(Box<Service>),
    // Boxed too: nodes, policies and peer groups are few next to pods, and
    // a pod's resource is no larger than the largest body.
    Node(Box<Node>),
    Policy(Box<Policy>),
    PeerGroup(Box<PeerGroup>),
}

impl ResourceBody {
    /// The key this body is stored under.
    pub fn key(&self) -> ResourceKey {
        match self {
            ResourceBody::Workload(w) => ResourceKey::new(Kind::Workload, w.key.clone()),
            ResourceBody::Service(s) => ResourceKey::new(Kind::Service, s.key_name()),
            ResourceBody::Node(n) => ResourceKey::new(Kind::Node, n.name.clone()),
            ResourceBody::Policy(p) => ResourceKey::new(Kind::Policy, p.key_name()),
            ResourceBody::PeerGroup(g) => ResourceKey::new(Kind::PeerGroup, g.key_name()),
        }
    }

    /// Whether this body belongs under `key` (its kind and name), without
    /// building the key.
    fn is_under(&self, key: &ResourceKey) -> bool {
        let namespaced = |namespace: &str, name: &str| is_key_of(&key.name, namespace, name);
        match self {
            ResourceBody::Workload(w) => {
                key.kind == Kind::Workload && namespaced(&w.namespace, w.name())
            }
            ResourceBody::Service(s) => {
                key.kind == Kind::Service && namespaced(&s.namespace, &s.name)
            }
            ResourceBody::Node(n) => key.kind == Kind::Node && *key.name == *n.name,
            ResourceBody::Policy(p) => {
                key.kind == Kind::Policy && namespaced(&p.namespace, &p.name)
            }
            ResourceBody::PeerGroup(g) => {
                key.kind == Kind::PeerGroup && namespaced(&g.namespace, &g.group)
            }
        }
    }

    fn to_proto(&self) -> proto::resource::Body {
        match self {
            ResourceBody::Workload(w) => proto::resource::Body::Workload(workload_to_proto(w)),
            ResourceBody::Service(s) => proto::resource::Body::Service(service_to_proto(s)),
            ResourceBody::Node(n) => proto::resource::Body::Node(node_to_proto(n)),
            ResourceBody::Policy(p) => proto::resource::Body::Policy(policy_to_proto(p)),
            ResourceBody::PeerGroup(g) => proto::resource::Body::PeerGroup(peer_group_to_proto(g)),
        }
    }
}

/// Content version of an encoded body.
fn version_of(body: &proto::resource::Body) -> u64 {
    let mut buf = Vec::with_capacity(256);
    body.encode(&mut buf);
    xxhash_rust::xxh3::xxh3_64(&buf)
}

/// A resource in model form with its key and content version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionedResource {
    pub key: ResourceKey,
    pub version: u64,
    pub body: ResourceBody,
}

impl VersionedResource {
    /// Encodes a body for the wire, computing its key and version.
    pub fn encode(body: &ResourceBody) -> proto::Resource {
        let wire = body.to_proto();
        proto::Resource {
            key: Some(body.key().to_proto()),
            version: version_of(&wire),
            body: Some(wire),
        }
    }

    /// The wire form of a resource already held, with its version as
    /// received (what the proxy saves on disk).
    pub fn to_proto(&self) -> proto::Resource {
        proto::Resource {
            key: Some(self.key.to_proto()),
            version: self.version,
            body: Some(self.body.to_proto()),
        }
    }

    /// Converts a resource received from the wire, checking every field.
    pub fn decode(resource: proto::Resource) -> Result<Self, ResourceError> {
        Self::decode_with(resource, &mut Interner::new())
    }

    /// [`decode`](Self::decode), with the names, label sets and port lists
    /// shared with what `interner` already holds.
    pub fn decode_with(
        resource: proto::Resource,
        interner: &mut Interner,
    ) -> Result<Self, ResourceError> {
        // The key is unique to the resource: not worth a place in the
        // interner (a store shares it with whatever refers to the resource).
        let Some(key) = resource.key.as_ref().and_then(ResourceKey::from_proto) else {
            return Err(ResourceError {
                key: ResourceKey::new(Kind::Workload, "<missing>"),
                message: "key: missing, of unknown kind, or with an empty name".into(),
            });
        };
        let fail = |e: FieldError| ResourceError {
            key: key.clone(),
            message: e.to_string(),
        };
        let body = match resource.body {
            None => return Err(fail(FieldError::new("body", "missing"))),
            Some(proto::resource::Body::Workload(w)) => {
                ResourceBody::Workload(workload_from_proto(w, &key.name, interner).map_err(fail)?)
            }
            Some(proto::resource::Body::Service(s)) => {
                ResourceBody::Service(Box::new(service_from_proto(s, interner).map_err(fail)?))
            }
            Some(proto::resource::Body::Node(n)) => {
                ResourceBody::Node(Box::new(node_from_proto(n).map_err(fail)?))
            }
            Some(proto::resource::Body::Policy(p)) => {
                ResourceBody::Policy(Box::new(policy_from_proto(p).map_err(fail)?))
            }
            Some(proto::resource::Body::PeerGroup(g)) => {
                ResourceBody::PeerGroup(Box::new(peer_group_from_proto(g).map_err(fail)?))
            }
        };
        if !body.is_under(&key) {
            let body_key = body.key();
            return Err(fail(FieldError::new(
                "body",
                format!("describes {body_key}, not the key it was sent under"),
            )));
        }
        Ok(Self {
            key,
            version: resource.version,
            body,
        })
    }
}

// ---- field helpers ----

/// Whether `key` is `namespace/name`.
fn is_key_of(key: &str, namespace: &str, name: &str) -> bool {
    key.len() == namespace.len() + 1 + name.len()
        && key.starts_with(namespace)
        && key[namespace.len()..].starts_with('/')
        && key.ends_with(name)
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn ip_from_bytes(bytes: &[u8], field: impl FnOnce() -> String) -> Result<IpAddr, FieldError> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Ok(IpAddr::V4(Ipv4Addr::from(v4)));
    }
    if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        return Ok(IpAddr::V6(Ipv6Addr::from(v6)));
    }
    Err(FieldError::new(
        field(),
        format!("an IP address has 4 or 16 bytes, not {}", bytes.len()),
    ))
}

fn ips_from_bytes<C: FromIterator<IpAddr>>(list: &[Vec<u8>], field: &str) -> Result<C, FieldError> {
    list.iter()
        .enumerate()
        .map(|(i, b)| ip_from_bytes(b, || format!("{field}[{i}]")))
        .collect()
}

fn port(value: u32, field: impl FnOnce() -> String) -> Result<u16, FieldError> {
    match u16::try_from(value) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(FieldError::new(
            field(),
            format!("port {value} is outside 1-65535"),
        )),
    }
}

fn optional_port(value: u32, field: impl FnOnce() -> String) -> Result<Option<u16>, FieldError> {
    if value == 0 {
        Ok(None)
    } else {
        port(value, field).map(Some)
    }
}

fn protocol_to_proto(p: Protocol) -> i32 {
    match p {
        Protocol::Tcp => proto::Protocol::Tcp as i32,
        Protocol::Udp => proto::Protocol::Udp as i32,
        Protocol::Sctp => proto::Protocol::Sctp as i32,
    }
}

fn protocol_from_proto(value: i32, field: impl FnOnce() -> String) -> Result<Protocol, FieldError> {
    match proto::Protocol::try_from(value) {
        Ok(proto::Protocol::Tcp) => Ok(Protocol::Tcp),
        Ok(proto::Protocol::Udp) => Ok(Protocol::Udp),
        Ok(proto::Protocol::Sctp) => Ok(Protocol::Sctp),
        Err(_) => Err(FieldError::new(
            field(),
            format!("unknown protocol {value}"),
        )),
    }
}

fn traffic_policy_to_proto(p: TrafficPolicy) -> i32 {
    match p {
        TrafficPolicy::Cluster => proto::TrafficPolicy::Cluster as i32,
        TrafficPolicy::Local => proto::TrafficPolicy::Local as i32,
    }
}

fn traffic_policy_from_proto(value: i32, field: &str) -> Result<TrafficPolicy, FieldError> {
    match proto::TrafficPolicy::try_from(value) {
        Ok(proto::TrafficPolicy::Cluster) => Ok(TrafficPolicy::Cluster),
        Ok(proto::TrafficPolicy::Local) => Ok(TrafficPolicy::Local),
        Err(_) => Err(FieldError::new(
            field,
            format!("unknown traffic policy {value}"),
        )),
    }
}

fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

fn text(value: &Option<Name>) -> String {
    value.as_deref().unwrap_or_default().to_string()
}

fn required(value: &str, field: &str) -> Result<(), FieldError> {
    if value.is_empty() {
        Err(FieldError::new(field, "must not be empty"))
    } else {
        Ok(())
    }
}

// ---- workload ----

fn workload_to_proto(w: &Workload) -> proto::Workload {
    proto::Workload {
        namespace: w.namespace.to_string(),
        name: w.name().to_string(),
        node: text(&w.node),
        service_account: w.service_account.to_string(),
        addresses: w.addresses.iter().map(ip_bytes).collect(),
        labels: w
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ports: w
            .ports
            .iter()
            .map(|p| proto::NamedPort {
                name: p.name.to_string(),
                port: u32::from(p.port),
                protocol: protocol_to_proto(p.protocol),
            })
            .collect(),
        ready: w.ready,
        terminating: w.terminating,
        mesh: w.mesh,
        controller: text(&w.controller),
    }
}

/// A pod, its name shared with `key` (the name of the key it came under)
/// when that is its own.
fn workload_from_proto(
    w: proto::Workload,
    key: &Name,
    interner: &mut Interner,
) -> Result<Workload, FieldError> {
    required(&w.namespace, "namespace")?;
    required(&w.name, "name")?;
    // The key the pod came under, shared, when it is the pod's (if it is
    // not, the resource is refused for it).
    let key = if is_key_of(key, &w.namespace, &w.name) {
        key.clone()
    } else {
        Workload::key_of(&w.namespace, &w.name)
    };
    let ports: Vec<NamedPort> = w
        .ports
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            Ok(NamedPort {
                port: port(p.port, || format!("ports[{i}].port"))?,
                protocol: protocol_from_proto(p.protocol, || format!("ports[{i}].protocol"))?,
                name: p.name.into(),
            })
        })
        .collect::<Result<_, FieldError>>()?;
    let profile = Profile {
        namespace: w.namespace.into(),
        service_account: w.service_account.into(),
        labels: w.labels.into_iter().collect(),
        ports: Arc::from(ports),
        mesh: w.mesh,
        controller: non_empty(w.controller).map(Name::from),
    };
    Ok(Workload {
        addresses: ips_from_bytes(&w.addresses, "addresses")?,
        key,
        node: interner.optional(&w.node),
        ready: w.ready,
        terminating: w.terminating,
        profile: interner.profile(profile),
    })
}

// ---- service ----

fn service_type_to_proto(t: ServiceType) -> i32 {
    match t {
        ServiceType::ClusterIP => proto::ServiceType::ClusterIp as i32,
        ServiceType::NodePort => proto::ServiceType::NodePort as i32,
        ServiceType::LoadBalancer => proto::ServiceType::LoadBalancer as i32,
        ServiceType::ExternalName => proto::ServiceType::ExternalName as i32,
    }
}

fn service_to_proto(s: &Service) -> proto::Service {
    proto::Service {
        namespace: s.namespace.to_string(),
        name: s.name.to_string(),
        hostname: s.hostname.to_string(),
        r#type: service_type_to_proto(s.service_type),
        cluster_ips: s.cluster_ips.iter().map(ip_bytes).collect(),
        headless: s.headless,
        ports: s
            .ports
            .iter()
            .map(|p| proto::ServicePort {
                name: p.name.clone(),
                port: u32::from(p.port),
                protocol: protocol_to_proto(p.protocol),
                target_port: Some(match &p.target_port {
                    TargetPort::Number(n) => {
                        proto::service_port::TargetPort::TargetPortNumber(u32::from(*n))
                    }
                    TargetPort::Name(n) => {
                        proto::service_port::TargetPort::TargetPortName(n.clone())
                    }
                }),
                node_port: p.node_port.map_or(0, u32::from),
            })
            .collect(),
        load_balancer_ips: s.load_balancer_ips.iter().map(ip_bytes).collect(),
        external_ips: s.external_ips.iter().map(ip_bytes).collect(),
        external_name: s.external_name.clone().unwrap_or_default(),
        client_ip_affinity: s
            .client_ip_affinity
            .map(|timeout_seconds| proto::ClientIpAffinity { timeout_seconds }),
        internal_traffic_policy: traffic_policy_to_proto(s.internal_traffic_policy),
        external_traffic_policy: traffic_policy_to_proto(s.external_traffic_policy),
        endpoints: s
            .endpoints
            .iter()
            .map(|e| proto::Endpoint {
                workload: text(&e.workload),
                address: ip_bytes(&e.address),
                node: text(&e.node),
                ports: e.ports.iter().map(|p| p.map_or(0, u32::from)).collect(),
                ready: e.ready,
                serving: e.serving,
                terminating: e.terminating,
                hostname: text(&e.hostname),
                zone: text(&e.zone),
                zone_hints: e.zone_hints.iter().map(|z| z.to_string()).collect(),
                node_hints: e.node_hints.iter().map(|n| n.to_string()).collect(),
            })
            .collect(),
        selector: s.selector,
        traffic_distribution: s.traffic_distribution.clone().unwrap_or_default(),
    }
}

fn service_from_proto(s: proto::Service, interner: &mut Interner) -> Result<Service, FieldError> {
    required(&s.namespace, "namespace")?;
    required(&s.name, "name")?;
    let service_type = match proto::ServiceType::try_from(s.r#type) {
        Ok(proto::ServiceType::ClusterIp) => ServiceType::ClusterIP,
        Ok(proto::ServiceType::NodePort) => ServiceType::NodePort,
        Ok(proto::ServiceType::LoadBalancer) => ServiceType::LoadBalancer,
        Ok(proto::ServiceType::ExternalName) => ServiceType::ExternalName,
        Err(_) => {
            return Err(FieldError::new(
                "type",
                format!("unknown service type {}", s.r#type),
            ))
        }
    };
    let port_count = s.ports.len();
    let mut ports: Vec<ServicePort> = s
        .ports
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let target_port = match p.target_port {
                Some(proto::service_port::TargetPort::TargetPortNumber(n)) => {
                    TargetPort::Number(port(n, || format!("ports[{i}].targetPort"))?)
                }
                Some(proto::service_port::TargetPort::TargetPortName(n)) if !n.is_empty() => {
                    TargetPort::Name(n)
                }
                _ => return Err(FieldError::new(format!("ports[{i}].targetPort"), "missing")),
            };
            Ok(ServicePort {
                port: port(p.port, || format!("ports[{i}].port"))?,
                protocol: protocol_from_proto(p.protocol, || format!("ports[{i}].protocol"))?,
                node_port: optional_port(p.node_port, || format!("ports[{i}].nodePort"))?,
                target_port,
                name: p.name,
            })
        })
        .collect::<Result<_, FieldError>>()?;
    // Collected in place, as the endpoints below: without this the vector
    // keeps the room the decoder grew (four ports for one).
    ports.shrink_to_fit();
    let mut endpoints = s
        .endpoints
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            if e.ports.len() != port_count {
                return Err(FieldError::new(
                    format!("endpoints[{i}].ports"),
                    format!(
                        "has {} entries for {port_count} service ports",
                        e.ports.len()
                    ),
                ));
            }
            let ports = e
                .ports
                .iter()
                .enumerate()
                .map(|(j, p)| optional_port(*p, || format!("endpoints[{i}].ports[{j}]")))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Endpoint {
                address: ip_from_bytes(&e.address, || format!("endpoints[{i}].address"))?,
                // A workload's key: a store may share it with the
                // workload's own (see `ferry_core::state`).
                workload: non_empty(e.workload).map(Name::from),
                ready: e.ready,
                serving: e.serving,
                terminating: e.terminating,
                placement: interner.placement(Placement {
                    node: non_empty(e.node).map(Name::from),
                    ports: Arc::from(ports),
                    hostname: non_empty(e.hostname).map(Name::from),
                    zone: non_empty(e.zone).map(Name::from),
                    zone_hints: e
                        .zone_hints
                        .iter()
                        .map(|z| Name::from(z.as_str()))
                        .collect(),
                    node_hints: e
                        .node_hints
                        .iter()
                        .map(|n| Name::from(n.as_str()))
                        .collect(),
                }),
            })
        })
        .collect::<Result<Vec<_>, FieldError>>()?;
    // Collected in place: the vector would keep the decoded messages'
    // room (a proto endpoint is larger than the model's).
    endpoints.shrink_to_fit();
    Ok(Service {
        // Shared with the store's telemetry labels.
        hostname: s.hostname.into(),
        service_type,
        cluster_ips: ips_from_bytes(&s.cluster_ips, "clusterIPs")?,
        headless: s.headless,
        ports,
        load_balancer_ips: ips_from_bytes(&s.load_balancer_ips, "loadBalancerIPs")?,
        external_ips: ips_from_bytes(&s.external_ips, "externalIPs")?,
        external_name: non_empty(s.external_name),
        client_ip_affinity: s.client_ip_affinity.map(|a| a.timeout_seconds),
        internal_traffic_policy: traffic_policy_from_proto(
            s.internal_traffic_policy,
            "internalTrafficPolicy",
        )?,
        external_traffic_policy: traffic_policy_from_proto(
            s.external_traffic_policy,
            "externalTrafficPolicy",
        )?,
        endpoints,
        selector: s.selector,
        traffic_distribution: non_empty(s.traffic_distribution),
        namespace: interner.name(&s.namespace),
        name: interner.name(&s.name),
    })
}

// ---- node ----

fn node_to_proto(n: &Node) -> proto::Node {
    proto::Node {
        name: n.name.clone(),
        addresses: n
            .addresses
            .iter()
            .map(|a| proto::NodeAddress {
                r#type: a.kind.clone(),
                address: a.address.clone(),
            })
            .collect(),
        hbone_address: n.hbone.map(|a| ip_bytes(&a.ip())).unwrap_or_default(),
        hbone_port: n.hbone.map_or(0, |a| u32::from(a.port())),
        zone: n.zone.clone().unwrap_or_default(),
    }
}

fn node_from_proto(n: proto::Node) -> Result<Node, FieldError> {
    required(&n.name, "name")?;
    let hbone = if n.hbone_address.is_empty() {
        None
    } else {
        let ip = ip_from_bytes(&n.hbone_address, || "hboneAddress".into())?;
        Some(SocketAddr::new(
            ip,
            port(n.hbone_port, || "hbonePort".into())?,
        ))
    };
    Ok(Node {
        name: n.name,
        addresses: n
            .addresses
            .into_iter()
            .map(|a| NodeAddress {
                kind: a.r#type,
                address: a.address,
            })
            .collect(),
        hbone,
        zone: non_empty(n.zone),
    })
}

// ---- policy ----

fn rules_to_proto(rules: &[PolicyRule]) -> Vec<proto::PolicyRule> {
    rules
        .iter()
        .map(|r| proto::PolicyRule {
            peers: r
                .peers
                .iter()
                .map(|p| proto::PolicyPeer {
                    workloads: p.workloads.clone(),
                    group: p.group.clone().unwrap_or_default(),
                    ip_block: p.ip_block.as_ref().map(|b| proto::IpBlock {
                        cidr: b.cidr.clone(),
                        except: b.except.clone(),
                    }),
                })
                .collect(),
            ports: r
                .ports
                .iter()
                .map(|p| proto::PolicyPort {
                    protocol: protocol_to_proto(p.protocol),
                    port: p.port.as_ref().map(|t| match t {
                        TargetPort::Number(n) => proto::policy_port::Port::Number(u32::from(*n)),
                        TargetPort::Name(n) => proto::policy_port::Port::Name(n.clone()),
                    }),
                    end_port: p.end_port.map_or(0, u32::from),
                })
                .collect(),
        })
        .collect()
}

fn rules_from_proto(
    rules: Vec<proto::PolicyRule>,
    field: &str,
) -> Result<Vec<PolicyRule>, FieldError> {
    rules
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let ports = r
                .ports
                .into_iter()
                .enumerate()
                .map(|(j, p)| {
                    let at = || format!("{field}[{i}].ports[{j}]");
                    Ok(PolicyPort {
                        protocol: protocol_from_proto(p.protocol, || format!("{}.protocol", at()))?,
                        port: match p.port {
                            None => None,
                            Some(proto::policy_port::Port::Number(n)) => {
                                Some(TargetPort::Number(port(n, || format!("{}.port", at()))?))
                            }
                            Some(proto::policy_port::Port::Name(n)) => Some(TargetPort::Name(n)),
                        },
                        end_port: optional_port(p.end_port, || format!("{}.endPort", at()))?,
                    })
                })
                .collect::<Result<_, FieldError>>()?;
            Ok(PolicyRule {
                peers: r
                    .peers
                    .into_iter()
                    .enumerate()
                    .map(|(j, p)| {
                        if p.group.contains('/') {
                            return Err(FieldError::new(
                                format!("{field}[{i}].peers[{j}].group"),
                                format!("{:?} is not a group name (it has a '/')", p.group),
                            ));
                        }
                        Ok(PolicyPeer {
                            workloads: p.workloads,
                            group: non_empty(p.group),
                            ip_block: p.ip_block.map(|b| IpBlock {
                                cidr: b.cidr,
                                except: b.except,
                            }),
                        })
                    })
                    .collect::<Result<_, FieldError>>()?,
                ports,
            })
        })
        .collect()
}

fn policy_to_proto(p: &Policy) -> proto::Policy {
    proto::Policy {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        selected: p.selected.clone(),
        ingress: p.ingress,
        egress: p.egress,
        ingress_rules: rules_to_proto(&p.ingress_rules),
        egress_rules: rules_to_proto(&p.egress_rules),
    }
}

fn policy_from_proto(p: proto::Policy) -> Result<Policy, FieldError> {
    required(&p.namespace, "namespace")?;
    required(&p.name, "name")?;
    Ok(Policy {
        ingress_rules: rules_from_proto(p.ingress_rules, "ingress")?,
        egress_rules: rules_from_proto(p.egress_rules, "egress")?,
        namespace: p.namespace,
        name: p.name,
        selected: p.selected,
        ingress: p.ingress,
        egress: p.egress,
    })
}

// ---- peer group ----

fn peer_group_to_proto(g: &PeerGroup) -> proto::PeerGroup {
    proto::PeerGroup {
        namespace: g.namespace.clone(),
        group: g.group.clone(),
        pods: g.pods.clone(),
        selector: g.selector.clone(),
    }
}

fn peer_group_from_proto(g: proto::PeerGroup) -> Result<PeerGroup, FieldError> {
    required(&g.namespace, "namespace")?;
    required(&g.group, "group")?;
    if g.group.contains('/') {
        return Err(FieldError::new(
            "group",
            format!("{:?} is not a group name (it has a '/')", g.group),
        ));
    }
    if let Some(i) = g.pods.iter().position(|p| p.is_empty() || p.contains('/')) {
        return Err(FieldError::new(
            format!("pods[{i}]"),
            format!("{:?} is not a pod name", g.pods[i]),
        ));
    }
    // Proxies look members up by binary search.
    if let Some(i) = g.pods.windows(2).position(|w| w[0] >= w[1]) {
        return Err(FieldError::new(
            format!("pods[{}]", i + 1),
            format!(
                "{:?} after {:?}: pods must be sorted and distinct",
                g.pods[i + 1],
                g.pods[i]
            ),
        ));
    }
    Ok(PeerGroup {
        namespace: g.namespace,
        group: g.group,
        pods: g.pods,
        selector: g.selector,
    })
}

#[cfg(test)]
mod key_view_tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn a_borrowed_key_finds_the_owned_one() {
        let mut map = HashMap::new();
        map.insert(ResourceKey::new(Kind::Workload, "shop/web"), 1);
        map.insert(ResourceKey::new(Kind::Node, "shop/web"), 2);
        let view: &dyn KeyView = &(Kind::Workload, "shop/web");
        assert_eq!(map.get(view), Some(&1));
        let view: &dyn KeyView = &(Kind::Node, "shop/web");
        assert_eq!(map.get(view), Some(&2));
        let view: &dyn KeyView = &(Kind::Service, "shop/web");
        assert_eq!(map.get(view), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn service() -> Service {
        Service {
            namespace: "default".into(),
            name: "web".into(),
            hostname: "web.default.svc.cluster.local".into(),
            service_type: ServiceType::NodePort,
            cluster_ips: vec!["10.96.0.10".parse().unwrap(), "fd00::10".parse().unwrap()],
            headless: false,
            ports: vec![ServicePort {
                name: "http".into(),
                port: 80,
                protocol: Protocol::Tcp,
                target_port: TargetPort::Name("web".into()),
                node_port: Some(30080),
            }],
            load_balancer_ips: vec![],
            external_ips: vec![],
            external_name: None,
            client_ip_affinity: Some(DEFAULT_AFFINITY_TIMEOUT_SECONDS),
            internal_traffic_policy: TrafficPolicy::Cluster,
            external_traffic_policy: TrafficPolicy::Local,
            endpoints: vec![Endpoint {
                workload: Some("default/web-1".into()),
                address: "10.0.1.5".parse().unwrap(),
                ready: true,
                serving: true,
                terminating: false,
                placement: Arc::new(Placement {
                    node: Some("node-a".into()),
                    ports: vec![Some(8080)].into(),
                    hostname: None,
                    node_hints: Vec::new().into(),
                    zone: None,
                    zone_hints: Vec::new().into(),
                }),
            }],
            selector: true,
            traffic_distribution: None,
        }
    }

    fn workload() -> Workload {
        Workload {
            key: "default/web-1".into(),
            node: Some("node-a".into()),
            addresses: vec!["10.0.1.5".parse().unwrap()].into(),
            ready: true,
            terminating: false,
            profile: Arc::new(Profile {
                namespace: "default".into(),
                service_account: "web".into(),
                labels: Labels::from(BTreeMap::from([("app".into(), "web".into())])),
                ports: vec![NamedPort {
                    name: "web".into(),
                    port: 8080,
                    protocol: Protocol::Tcp,
                }]
                .into(),
                mesh: true,
                controller: None,
            }),
        }
    }

    #[test]
    fn every_kind_round_trips_through_the_wire() {
        let bodies = [
            ResourceBody::Service(Box::new(service())),
            ResourceBody::Workload(workload()),
            ResourceBody::Node(Box::new(Node {
                name: "node-a".into(),
                addresses: vec![NodeAddress {
                    kind: "InternalIP".into(),
                    address: "192.168.0.2".into(),
                }],
                hbone: Some("192.168.0.2:15008".parse().unwrap()),
                zone: None,
            })),
            ResourceBody::Policy(Box::new(Policy {
                namespace: "default".into(),
                name: "deny".into(),
                selected: vec!["default/web-1".into()],
                ingress: true,
                egress: false,
                ingress_rules: vec![PolicyRule {
                    peers: vec![
                        PolicyPeer {
                            group: Some("3f9a0c1d2e4b5a69".into()),
                            ..PolicyPeer::default()
                        },
                        PolicyPeer {
                            workloads: vec!["other/client".into()],
                            ..PolicyPeer::default()
                        },
                        PolicyPeer {
                            workloads: vec![],
                            group: None,
                            ip_block: Some(IpBlock {
                                cidr: "10.0.0.0/8".into(),
                                except: vec!["10.1.0.0/16".into()],
                            }),
                        },
                    ],
                    ports: vec![PolicyPort {
                        protocol: Protocol::Tcp,
                        port: Some(TargetPort::Number(80)),
                        end_port: Some(90),
                    }],
                }],
                egress_rules: vec![],
            })),
            ResourceBody::PeerGroup(Box::new(PeerGroup {
                namespace: "other".into(),
                group: "3f9a0c1d2e4b5a69".into(),
                pods: vec!["client".into(), "client-2".into()],
                selector: "namespaces {team=a} pods {role=client}".into(),
            })),
        ];
        for body in bodies {
            let wire = VersionedResource::encode(&body);
            let decoded = VersionedResource::decode(wire.clone()).unwrap();
            assert_eq!(decoded.body, body);
            assert_eq!(decoded.key, body.key());
            assert_eq!(decoded.version, wire.version);
            // What a proxy saves is what it was sent.
            assert_eq!(decoded.to_proto(), wire);
        }
    }

    #[test]
    fn version_depends_on_content_only() {
        let a = VersionedResource::encode(&ResourceBody::Workload(workload()));
        let b = VersionedResource::encode(&ResourceBody::Workload(workload()));
        assert_eq!(a.version, b.version);
        let mut changed = workload();
        changed.ready = false;
        let c = VersionedResource::encode(&ResourceBody::Workload(changed));
        assert_ne!(a.version, c.version);
    }

    #[test]
    fn bad_address_is_rejected_with_resource_and_field() {
        let mut wire = VersionedResource::encode(&ResourceBody::Service(Box::new(service())));
        if let Some(proto::resource::Body::Service(s)) = wire.body.as_mut() {
            s.endpoints[0].address = vec![1, 2, 3];
        }
        let err = VersionedResource::decode(wire).unwrap_err();
        assert_eq!(
            err.to_string(),
            "service default/web: endpoints[0].address: an IP address has 4 or 16 bytes, not 3"
        );
    }

    #[test]
    fn out_of_range_port_is_rejected() {
        let mut wire = VersionedResource::encode(&ResourceBody::Service(Box::new(service())));
        if let Some(proto::resource::Body::Service(s)) = wire.body.as_mut() {
            s.ports[0].port = 70_000;
        }
        let err = VersionedResource::decode(wire).unwrap_err();
        assert_eq!(err.message, "ports[0].port: port 70000 is outside 1-65535");
    }

    #[test]
    fn endpoint_port_list_must_match_service_ports() {
        let mut wire = VersionedResource::encode(&ResourceBody::Service(Box::new(service())));
        if let Some(proto::resource::Body::Service(s)) = wire.body.as_mut() {
            s.endpoints[0].ports.push(81);
        }
        let err = VersionedResource::decode(wire).unwrap_err();
        assert_eq!(
            err.message,
            "endpoints[0].ports: has 2 entries for 1 service ports"
        );
    }

    #[test]
    fn the_encoded_response_is_a_delta_response_on_the_wire() {
        use prost::Message;
        let resources = vec![
            VersionedResource::encode(&ResourceBody::Service(Box::new(service()))),
            VersionedResource::encode(&ResourceBody::Workload(workload())),
        ];
        let removed = vec![ResourceKey::new(Kind::Node, "gone").to_proto()];
        let encoded = proto::DeltaResponseEncoded {
            nonce: "7".into(),
            revision: 42,
            resources: resources
                .iter()
                .map(|r| prost::bytes::Bytes::from(r.encode_to_vec()))
                .collect(),
            removed: removed.clone(),
        }
        .encode_to_vec();
        let expected = proto::DeltaResponse {
            nonce: "7".into(),
            revision: 42,
            resources,
            removed,
        };
        assert_eq!(encoded, expected.encode_to_vec());
        assert_eq!(
            proto::DeltaResponse::decode(encoded.as_slice()).unwrap(),
            expected
        );
    }

    #[test]
    fn a_peer_group_names_its_namespace_group_and_pods() {
        let group = |namespace: &str, group: &str, pod: &str| {
            VersionedResource::encode(&ResourceBody::PeerGroup(Box::new(PeerGroup {
                namespace: namespace.into(),
                group: group.into(),
                pods: vec![pod.into()],
                selector: String::new(),
            })))
        };
        let decoded = VersionedResource::decode(group("shop", "g1", "web")).unwrap();
        assert_eq!(decoded.key, ResourceKey::new(Kind::PeerGroup, "shop/g1"));
        let err = VersionedResource::decode(group("shop", "g/1", "web")).unwrap_err();
        assert_eq!(
            err.message,
            r#"group: "g/1" is not a group name (it has a '/')"#
        );
        let err = VersionedResource::decode(group("shop", "g1", "")).unwrap_err();
        assert_eq!(err.message, r#"pods[0]: "" is not a pod name"#);
        let err = VersionedResource::decode(group("", "g1", "web")).unwrap_err();
        assert_eq!(err.message, "namespace: must not be empty");
        let mut unsorted = group("shop", "g1", "web");
        if let Some(proto::resource::Body::PeerGroup(g)) = unsorted.body.as_mut() {
            g.pods.push("api".into());
        }
        let err = VersionedResource::decode(unsorted).unwrap_err();
        assert_eq!(
            err.message,
            r#"pods[1]: "api" after "web": pods must be sorted and distinct"#
        );
    }

    #[test]
    fn body_must_match_its_key() {
        let mut wire = VersionedResource::encode(&ResourceBody::Workload(workload()));
        wire.key = Some(ResourceKey::new(Kind::Workload, "default/other").to_proto());
        let err = VersionedResource::decode(wire).unwrap_err();
        assert!(
            err.message.contains("describes workload default/web-1"),
            "{err}"
        );
        let mut wire = VersionedResource::encode(&ResourceBody::Workload(workload()));
        wire.key = None;
        assert!(VersionedResource::decode(wire)
            .unwrap_err()
            .message
            .starts_with("key:"));
    }
}
