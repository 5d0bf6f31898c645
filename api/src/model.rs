//! The configuration model: what a node proxy knows about the cluster.
//!
//! Label selectors are already resolved by the control plane: a service lists
//! its endpoints, a policy lists the workloads it selects. The proxy matches
//! keys and addresses, never selectors.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

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

/// A named container port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// A pod's labels: sorted by key, each key once. A sorted vector rather
/// than a `BTreeMap`: a pod has a handful of labels, and a map's first node
/// reserves room for eleven (about 540 bytes) where this takes what the
/// labels need. Kept for every pod by the control plane and every proxy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct Labels(Vec<(String, String)>);

impl Labels {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, key: &str) -> Option<&String> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets a label; returns its previous value.
    pub fn insert(&mut self, key: String, value: String) -> Option<String> {
        match self.0.binary_search_by(|(k, _)| k.as_str().cmp(&key)) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    /// In key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Labels read by key: a pod's ([`Labels`]) or a namespace's (a map).
pub trait LabelLookup {
    fn label(&self, key: &str) -> Option<&str>;
}

impl LabelLookup for Labels {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl LabelLookup for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl FromIterator<(String, String)> for Labels {
    /// The last value of a repeated key wins, as in a map.
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        let mut labels = Self::default();
        for (k, v) in iter {
            labels.insert(k, v);
        }
        labels.0.shrink_to_fit();
        labels
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(map: BTreeMap<String, String>) -> Self {
        // Already sorted and unique.
        Self(map.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = (&'a String, &'a String);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, String)>,
        fn(&'a (String, String)) -> (&'a String, &'a String),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl Serialize for Labels {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

/// A pod as the data path needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Workload {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// Node the pod runs on; `None` while it is not scheduled.
    pub node: Option<String>,
    pub service_account: String,
    pub addresses: Vec<IpAddr>,
    pub labels: Labels,
    pub ports: Vec<NamedPort>,
    pub ready: bool,
    pub terminating: bool,
    /// Its traffic is carried by the mesh (HBONE capable).
    pub mesh: bool,
    /// The workload the pod belongs to (its Deployment, StatefulSet,
    /// DaemonSet, CronJob or Job), for telemetry; `None`: the pod alone.
    pub controller: Option<String>,
}

impl Workload {
    /// The workload's resource name, `namespace/name`.
    pub fn key_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The container port with this name and protocol, for a named targetPort.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
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

/// One backend of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// `namespace/name` of the backing workload; `None` for a bare address.
    pub workload: Option<String>,
    pub address: IpAddr,
    pub node: Option<String>,
    /// Resolved target port for each entry of [`Service::ports`], same order;
    /// `None` where this endpoint does not serve that port.
    pub ports: Vec<Option<u16>>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub hostname: Option<String>,
    /// The zone of the endpoint's node (`topology.kubernetes.io/zone`).
    pub zone: Option<String>,
    /// Topology hints: the zones (`hints.forZones`) and the nodes
    /// (`hints.forNodes`) that should use this endpoint. Empty: no hint.
    pub zone_hints: Vec<String>,
    pub node_hints: Vec<String>,
}

/// A Kubernetes Service with its endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// `name.namespace.svc.<cluster domain>`.
    pub hostname: String,
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
        assert_eq!(labels.get("app").map(String::as_str), Some("api"));
        assert_eq!(labels.get("zone"), None);
        assert_eq!(labels.insert("tier".into(), "1".into()), None);
        assert_eq!(labels.insert("tier".into(), "2".into()), Some("1".into()));
        let keys: Vec<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
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
}
