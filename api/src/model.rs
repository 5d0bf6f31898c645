//! The configuration model: what a node proxy knows about the cluster.
//!
//! Label selectors are already resolved by the control plane: a service lists
//! its endpoints, a policy lists the workloads it selects. The proxy matches
//! keys and addresses, never selectors.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::Serialize;

/// Default port of the HBONE (mTLS tunnel) listener of every node proxy.
pub const HBONE_PORT: u16 = 15008;

/// Default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10_800;

/// Transport protocol of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Parses the Kubernetes spelling (`TCP`, `UDP`, `SCTP`).
    pub fn from_k8s(value: &str) -> Option<Self> {
        match value {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }
}

/// A shared, immutable string: cloning it takes a reference count. Names
/// that repeat across a cluster (namespaces, nodes, service accounts,
/// label keys and values) are stored once per store through an
/// [`Interner`].
pub type Name = Arc<str>;

/// A named container port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct NamedPort {
    pub name: Name,
    pub port: u16,
    pub protocol: Protocol,
}

/// A pod's labels: sorted by key, each key once. Immutable and shared: the
/// pods of one template hold one copy (see [`Interner::labels`]), where a
/// map per pod cost hundreds of bytes for two or three labels. Kept for
/// every pod by the control plane and every proxy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Labels(Arc<[(Name, Name)]>);

impl Default for Labels {
    fn default() -> Self {
        Self(Arc::from([]))
    }
}

impl Labels {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.value(key).map(|v| &**v)
    }

    /// A label's value, shared (a clone is a reference count).
    pub fn value(&self, key: &str) -> Option<&Name> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets a label (a copy of the set with it); returns its previous
    /// value.
    pub fn insert(&mut self, key: impl Into<Name>, value: impl Into<Name>) -> Option<Name> {
        let (key, value) = (key.into(), value.into());
        let mut pairs = self.0.to_vec();
        let previous = match pairs.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(i) => Some(std::mem::replace(&mut pairs[i].1, value)),
            Err(i) => {
                pairs.insert(i, (key, value));
                None
            }
        };
        self.0 = Arc::from(pairs);
        previous
    }

    /// In key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether two values are the same shared set (interned together).
    pub fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Labels read by key: a pod's ([`Labels`]) or a namespace's (a map).
pub trait LabelLookup {
    fn label(&self, key: &str) -> Option<&str>;
}

impl LabelLookup for Labels {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key)
    }
}

impl LabelLookup for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// Sorted pairs, the last value of a repeated key winning, as in a map.
fn sorted_pairs<K: Into<Name>, V: Into<Name>>(
    pairs: impl IntoIterator<Item = (K, V)>,
) -> Vec<(Name, Name)> {
    let mut pairs: Vec<(Name, Name)> = pairs
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    // Stable: of equal keys, the last stays last.
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: Vec<(Name, Name)> = Vec::with_capacity(pairs.len());
    for (k, v) in pairs {
        match out.last_mut() {
            Some(last) if last.0 == k => last.1 = v,
            _ => out.push((k, v)),
        }
    }
    out
}

impl<K: Into<Name>, V: Into<Name>> FromIterator<(K, V)> for Labels {
    /// The last value of a repeated key wins, as in a map.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(Arc::from(sorted_pairs(iter)))
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(map: BTreeMap<String, String>) -> Self {
        map.into_iter().collect()
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = (&'a str, &'a str);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (Name, Name)>,
        fn(&'a (Name, Name)) -> (&'a str, &'a str),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }
}

impl Serialize for Labels {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

/// Stores each distinct name, label set and port list once, so that the
/// pods of one template, the endpoints of one service and everything on
/// one node share them: a proxy holding a whole cluster keeps each
/// namespace, node, service account and label once, and a reference count
/// per use. One per store (the proxy's configuration, the control plane's
/// translator); not shared between threads.
#[derive(Debug, Default)]
pub struct Interner {
    names: HashSet<Name>,
    labels: HashSet<Labels>,
    named_ports: HashSet<Arc<[NamedPort]>>,
    endpoint_ports: HashSet<Arc<[Option<u16>]>>,
    lists: HashSet<Arc<[Name]>>,
    profiles: HashSet<Arc<Profile>>,
    placements: HashSet<Arc<Placement>>,
    /// How many values were kept after the last sweep.
    swept_at: usize,
}

impl Interner {
    pub fn new() -> Self {
        Self::default()
    }

    /// The shared copy of a name.
    pub fn name(&mut self, value: &str) -> Name {
        if let Some(name) = self.names.get(value) {
            return name.clone();
        }
        let name = Name::from(value);
        self.names.insert(name.clone());
        name
    }

    /// The shared copy of an optional name; empty is none.
    pub fn optional(&mut self, value: &str) -> Option<Name> {
        (!value.is_empty()).then(|| self.name(value))
    }

    fn shared<T: ?Sized + Eq + std::hash::Hash>(
        set: &mut HashSet<Arc<T>>,
        value: Arc<T>,
    ) -> Arc<T> {
        if let Some(shared) = set.get(&value) {
            return shared.clone();
        }
        set.insert(value.clone());
        value
    }

    /// The shared copy of a label set (its keys and values shared too).
    pub fn labels<K: AsRef<str>, V: AsRef<str>>(
        &mut self,
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Labels {
        let pairs: Vec<(Name, Name)> = pairs
            .into_iter()
            .map(|(k, v)| (self.name(k.as_ref()), self.name(v.as_ref())))
            .collect();
        let labels = Labels(Arc::from(sorted_pairs(pairs)));
        if let Some(shared) = self.labels.get(&labels) {
            return shared.clone();
        }
        self.labels.insert(labels.clone());
        labels
    }

    /// The shared copy of a pod's named ports.
    pub fn named_ports(&mut self, ports: Vec<NamedPort>) -> Arc<[NamedPort]> {
        let ports = ports
            .into_iter()
            .map(|p| NamedPort {
                name: self.name(&p.name),
                ..p
            })
            .collect::<Vec<_>>();
        Self::shared(&mut self.named_ports, Arc::from(ports))
    }

    /// The shared copy of a list of names (topology hints).
    pub fn names<S: AsRef<str>>(&mut self, list: impl IntoIterator<Item = S>) -> Arc<[Name]> {
        let list: Vec<Name> = list.into_iter().map(|n| self.name(n.as_ref())).collect();
        Self::shared(&mut self.lists, Arc::from(list))
    }

    /// The shared copy of a workload profile (its names, labels and ports
    /// shared too).
    pub fn profile(&mut self, profile: Profile) -> Arc<Profile> {
        // Most pods have a sibling already here: one lookup, by content.
        if let Some(shared) = self.profiles.get(&profile) {
            return shared.clone();
        }
        let profile = Profile {
            namespace: self.name(&profile.namespace),
            service_account: self.name(&profile.service_account),
            labels: self.labels(profile.labels.iter()),
            ports: self.named_ports(profile.ports.to_vec()),
            mesh: profile.mesh,
            controller: profile.controller.as_deref().map(|c| self.name(c)),
        };
        Self::shared(&mut self.profiles, Arc::new(profile))
    }

    /// The shared copy of an endpoint's placement.
    pub fn placement(&mut self, placement: Placement) -> Arc<Placement> {
        if let Some(shared) = self.placements.get(&placement) {
            return shared.clone();
        }
        let placement = Placement {
            node: placement.node.as_deref().map(|n| self.name(n)),
            ports: Self::shared(&mut self.endpoint_ports, placement.ports),
            hostname: placement.hostname,
            zone: placement.zone.as_deref().map(|z| self.name(z)),
            zone_hints: self.names(placement.zone_hints.iter()),
            node_hints: self.names(placement.node_hints.iter()),
        };
        Self::shared(&mut self.placements, Arc::new(placement))
    }

    /// Values held.
    pub fn len(&self) -> usize {
        self.profiles.len()
            + self.placements.len()
            + self.names.len()
            + self.labels.len()
            + self.named_ports.len()
            + self.endpoint_ports.len()
            + self.lists.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets the values nothing but the interner holds any more, once
    /// it holds twice as many as after the last sweep (so a sweep, a pass
    /// over every value, is paid for by as many insertions).
    pub fn sweep(&mut self) {
        if self.len() < 1024 || self.len() < 2 * self.swept_at {
            return;
        }
        // Profiles first: they hold the rest, and sets hold names.
        self.profiles.retain(|p| Arc::strong_count(p) > 1);
        self.placements.retain(|p| Arc::strong_count(p) > 1);
        self.labels.retain(|l| Arc::strong_count(&l.0) > 1);
        self.named_ports.retain(|p| Arc::strong_count(p) > 1);
        self.endpoint_ports.retain(|p| Arc::strong_count(p) > 1);
        self.lists.retain(|l| Arc::strong_count(l) > 1);
        self.names.retain(|n| Arc::strong_count(n) > 1);
        self.swept_at = self.len();
    }
}

/// What the pods of one template have in common (the replicas of a
/// Deployment, the pods of a DaemonSet): namespace, service account,
/// labels, named ports, controller and enrolment. Shared through an
/// [`Interner`], so a pod costs its name, node and addresses and a pointer
/// to its profile.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Profile {
    pub namespace: Name,
    pub service_account: Name,
    pub labels: Labels,
    pub ports: Arc<[NamedPort]>,
    /// Its traffic is carried by the mesh (HBONE capable).
    pub mesh: bool,
    /// The workload the pod belongs to (its Deployment, StatefulSet,
    /// DaemonSet, CronJob or Job), for telemetry; `None`: the pod alone.
    pub controller: Option<Name>,
}

/// A pod as the data path needs it. Its shared part ([`Profile`]) reads as
/// its own fields (`w.namespace`, `w.labels`...) through `Deref`; writing
/// one (tests, fixtures) copies the profile first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Workload {
    /// `namespace/name`, the name of the pod's resource key; its name is
    /// what follows the slash ([`Workload::name`]). The key a store files
    /// the pod under shares it: a pod's name is stored once. Its namespace
    /// is the profile's (checked when a pod is decoded).
    #[serde(rename = "name", serialize_with = "serialize_pod_name")]
    pub key: Name,
    /// Node the pod runs on; `None` while it is not scheduled.
    pub node: Option<Name>,
    pub addresses: Addresses,
    pub ready: bool,
    pub terminating: bool,
    #[serde(flatten)]
    pub profile: Arc<Profile>,
}

/// A pod's addresses, read as a slice. Most pods have one (two when dual
/// stack): one is kept in place, more in one allocation.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Addresses(AddressList);

#[derive(Clone, PartialEq, Eq, Hash)]
enum AddressList {
    One(IpAddr),
    /// None or several (an empty box does not allocate).
    Many(Box<[IpAddr]>),
}

impl std::ops::Deref for Addresses {
    type Target = [IpAddr];
    fn deref(&self) -> &[IpAddr] {
        match &self.0 {
            AddressList::One(ip) => std::slice::from_ref(ip),
            AddressList::Many(ips) => ips,
        }
    }
}

impl<'a> IntoIterator for &'a Addresses {
    type Item = &'a IpAddr;
    type IntoIter = std::slice::Iter<'a, IpAddr>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl Default for Addresses {
    fn default() -> Self {
        Self(AddressList::Many(Box::default()))
    }
}

impl From<Vec<IpAddr>> for Addresses {
    fn from(ips: Vec<IpAddr>) -> Self {
        match *ips {
            [one] => Self(AddressList::One(one)),
            _ => Self(AddressList::Many(ips.into_boxed_slice())),
        }
    }
}

impl FromIterator<IpAddr> for Addresses {
    fn from_iter<I: IntoIterator<Item = IpAddr>>(iter: I) -> Self {
        let mut iter = iter.into_iter();
        let Some(first) = iter.next() else {
            return Self::default();
        };
        match iter.next() {
            None => Self(AddressList::One(first)),
            Some(second) => {
                let mut all = vec![first, second];
                all.extend(iter);
                all.into()
            }
        }
    }
}

impl std::fmt::Debug for Addresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for Addresses {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl std::ops::Deref for Workload {
    type Target = Profile;
    fn deref(&self) -> &Profile {
        &self.profile
    }
}

impl std::ops::DerefMut for Workload {
    fn deref_mut(&mut self) -> &mut Profile {
        Arc::make_mut(&mut self.profile)
    }
}

fn serialize_pod_name<S: serde::Serializer>(key: &Name, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(pod_name(key))
}

/// The name part of a `namespace/name` key.
fn pod_name(key: &str) -> &str {
    key.split_once('/').map_or(key, |(_, name)| name)
}

impl Workload {
    /// The name of a pod in `namespace`: its key, `namespace/name`.
    pub fn key_of(namespace: &str, name: &str) -> Name {
        Name::from(format!("{namespace}/{name}"))
    }

    /// The pod's name (without its namespace).
    pub fn name(&self) -> &str {
        pod_name(&self.key)
    }

    /// The container port with this name and protocol, for a named targetPort.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| &*p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }
}

/// Kubernetes Service type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
    ExternalName,
}

/// `internalTrafficPolicy` / `externalTrafficPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

/// `targetPort` as written in the Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    pub target_port: TargetPort,
    pub node_port: Option<u16>,
}

/// Where an endpoint runs, what it serves there and who should use it:
/// its node, its resolved ports, its hostname, its node's zone and its
/// topology hints. The endpoints of one service on one node share one
/// (through an [`Interner`]): most have no hostname and the same ports,
/// zone and hints, so an endpoint costs its workload, address and flags
/// and a pointer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Default)]
pub struct Placement {
    pub node: Option<Name>,
    /// Resolved target port for each entry of [`Service::ports`], same order;
    /// `None` where this endpoint does not serve that port.
    pub ports: Arc<[Option<u16>]>,
    pub hostname: Option<Name>,
    /// The zone of the endpoint's node (`topology.kubernetes.io/zone`).
    pub zone: Option<Name>,
    /// Topology hints: the zones (`hints.forZones`) and the nodes
    /// (`hints.forNodes`) that should use this endpoint. Empty: no hint.
    pub zone_hints: Arc<[Name]>,
    pub node_hints: Arc<[Name]>,
}

/// One backend of a Service. Its placement reads as its own fields
/// (`e.node`, `e.ports`, `e.zone`...) through `Deref`; writing one copies
/// it first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// `namespace/name` of the backing workload; `None` for a bare address.
    pub workload: Option<Name>,
    pub address: IpAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    #[serde(flatten)]
    pub placement: Arc<Placement>,
}

impl std::ops::Deref for Endpoint {
    type Target = Placement;
    fn deref(&self) -> &Placement {
        &self.placement
    }
}

impl std::ops::DerefMut for Endpoint {
    fn deref_mut(&mut self) -> &mut Placement {
        Arc::make_mut(&mut self.placement)
    }
}

/// A Kubernetes Service with its endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    pub namespace: Name,
    pub name: Name,
    /// `name.namespace.svc.<cluster domain>`.
    pub hostname: Name,
    pub service_type: ServiceType,
    pub cluster_ips: Vec<IpAddr>,
    pub headless: bool,
    pub ports: Vec<ServicePort>,
    pub load_balancer_ips: Vec<IpAddr>,
    pub external_ips: Vec<IpAddr>,
    pub external_name: Option<String>,
    /// `sessionAffinity: ClientIP` timeout in seconds; `None` without affinity.
    pub client_ip_affinity: Option<u32>,
    pub internal_traffic_policy: TrafficPolicy,
    pub external_traffic_policy: TrafficPolicy,
    pub endpoints: Vec<Endpoint>,
    /// Endpoints come from a label selector (not hand-written slices).
    pub selector: bool,
    /// `spec.trafficDistribution` as written (`PreferClose`,
    /// `PreferSameZone`, `PreferSameNode`); routing reads the endpoints'
    /// hints, this says where they came from.
    pub traffic_distribution: Option<String>,
}

impl Service {
    /// The service's resource name, `namespace/name`.
    pub fn key_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// One address of a node as Kubernetes reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeAddress {
    #[serde(rename = "type")]
    pub kind: String,
    pub address: String,
}

/// A node and where its proxy listens for HBONE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    pub name: String,
    pub addresses: Vec<NodeAddress>,
    pub hbone: Option<SocketAddr>,
    /// The node's `topology.kubernetes.io/zone` label.
    pub zone: Option<String>,
}

/// An `ipBlock` peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IpBlock {
    pub cidr: String,
    pub except: Vec<String>,
}

/// A policy peer with its selectors resolved: the workloads of a peer
/// group, workloads listed inline, or an address block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct PolicyPeer {
    /// Workload keys listed inline (control planes before peer groups).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<String>,
    /// The peer group whose members match (see [`PeerGroup`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub ip_block: Option<IpBlock>,
}

/// The members in one namespace of a policy peer (a pod selector and a
/// namespace selector, resolved). Policies name the peer by `group`; the
/// peer's members are the union of its groups' pods over namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerGroup {
    pub namespace: String,
    pub group: String,
    /// Pod names in `namespace`, sorted.
    pub pods: Vec<String>,
    /// The selectors, for people.
    pub selector: String,
}

impl PeerGroup {
    /// The group's resource name, `namespace/group`.
    pub fn key_name(&self) -> String {
        format!("{}/{}", self.namespace, self.group)
    }
}

/// A port (or port range) of a policy rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyPort {
    pub protocol: Protocol,
    /// `None` matches every port of the protocol.
    pub port: Option<TargetPort>,
    pub end_port: Option<u16>,
}

/// One ingress or egress rule; empty lists mean "all".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct PolicyRule {
    pub peers: Vec<PolicyPeer>,
    pub ports: Vec<PolicyPort>,
}

/// A NetworkPolicy compiled for evaluation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    /// Keys of the workloads the policy applies to.
    pub selected: Vec<String>,
    pub ingress: bool,
    pub egress: bool,
    pub ingress_rules: Vec<PolicyRule>,
    pub egress_rules: Vec<PolicyRule>,
}

impl Policy {
    /// The policy's resource name, `namespace/name`.
    pub fn key_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_stay_sorted_and_unique_and_read_as_a_map() {
        let mut labels: Labels = [
            ("version".to_string(), "v1".to_string()),
            ("app".to_string(), "web".to_string()),
            ("app".to_string(), "api".to_string()),
        ]
        .into_iter()
        .collect();
        assert_eq!(labels.len(), 2);
        assert_eq!(labels.get("app"), Some("api"));
        assert_eq!(labels.get("zone"), None);
        assert_eq!(labels.insert("tier", "1"), None);
        assert_eq!(labels.insert("tier", "2"), Some("1".into()));
        let keys: Vec<&str> = labels.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["app", "tier", "version"]);
        let map = BTreeMap::from([
            ("app".to_string(), "api".to_string()),
            ("tier".to_string(), "2".to_string()),
            ("version".to_string(), "v1".to_string()),
        ]);
        assert_eq!(Labels::from(map.clone()), labels);
        // Serialized as the map it stands for.
        assert_eq!(
            serde_json::to_string(&labels).unwrap(),
            serde_json::to_string(&map).unwrap()
        );
    }

    #[test]
    fn addresses_read_as_the_list_they_were_made_from() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for list in [
            vec![],
            vec![ip("10.0.0.1")],
            vec![ip("10.0.0.1"), ip("fd00::1")],
            vec![ip("10.0.0.1"), ip("10.0.0.2"), ip("fd00::1")],
        ] {
            let from_vec = Addresses::from(list.clone());
            let collected: Addresses = list.iter().copied().collect();
            assert_eq!(&*from_vec, &list[..]);
            assert_eq!(from_vec, collected);
            assert_eq!(
                serde_json::to_string(&from_vec).unwrap(),
                serde_json::to_string(&list).unwrap()
            );
        }
        // One address is kept in place: a pod's resource is no larger for it.
        assert!(std::mem::size_of::<Addresses>() <= 24);
    }

    #[test]
    fn the_interner_shares_equal_values_and_forgets_unused_ones() {
        let mut interner = Interner::new();
        let a = interner.labels([("app", "web"), ("tier", "1")]);
        let b = interner.labels([("tier", "1"), ("app", "web")]);
        assert!(a.ptr_eq(&b), "one label set");
        let c = interner.labels([("app", "db")]);
        assert!(!a.ptr_eq(&c));
        let n1 = interner.name("ns-1/pod");
        let n2 = interner.name("ns-1/pod");
        assert!(Arc::ptr_eq(&n1, &n2));
        // The endpoints of one node share a placement, and placements
        // that differ share what they have in common.
        let on = |node: &str, ports: &[Option<u16>]| Placement {
            node: Some(node.into()),
            ports: Arc::from(ports),
            ..Placement::default()
        };
        let p1 = interner.placement(on("node-1", &[Some(80), None]));
        let p2 = interner.placement(on("node-1", &[Some(80), None]));
        assert!(Arc::ptr_eq(&p1, &p2));
        let p3 = interner.placement(on("node-2", &[Some(80), None]));
        assert!(!Arc::ptr_eq(&p1, &p3));
        assert!(Arc::ptr_eq(&p1.ports, &p3.ports));
        let p4 = interner.placement(on("node-1", &[Some(81)]));
        assert!(Arc::ptr_eq(
            p1.node.as_ref().unwrap(),
            p4.node.as_ref().unwrap()
        ));
        let ports = interner.named_ports(vec![NamedPort {
            name: "http".into(),
            port: 8080,
            protocol: Protocol::Tcp,
        }]);
        // Interned names inside sets are the same shared strings.
        assert!(Arc::ptr_eq(&ports[0].name, &interner.name("http")));
        // The pods of one template share one profile, whose parts are the
        // interned ones.
        let profile = Profile {
            namespace: "shop".into(),
            service_account: "web".into(),
            labels: [("app", "web")].into_iter().collect(),
            ports: Arc::from([]),
            mesh: true,
            controller: Some("web".into()),
        };
        let first = interner.profile(profile.clone());
        let second = interner.profile(profile);
        assert!(Arc::ptr_eq(&first, &second));
        assert!(Arc::ptr_eq(&first.namespace, &interner.name("shop")));
        drop((first, second));
        // Held: kept by a sweep. Dropped: forgotten once the interner is
        // large enough to sweep.
        drop((b, c, n2, p2));
        for i in 0..2_000 {
            interner.name(&format!("temporary-{i}"));
        }
        interner.sweep();
        assert!(interner.len() < 100, "{} values kept", interner.len());
        let again = interner.labels([("app", "web"), ("tier", "1")]);
        assert!(again.ptr_eq(&a), "a held set survives the sweep");
        assert!(Arc::ptr_eq(&interner.name("ns-1/pod"), &n1));
    }
}
