//! The proxy's configuration store: one writer (the config client), many
//! readers (every connection).
//!
//! The current [`ProxyState`] sits behind an [`ArcSwap`]: a reader takes a
//! snapshot with one atomic load and no lock, and keeps a consistent view for
//! as long as it holds it. The writer builds the next state from the current
//! one (persistent maps: cloning is O(1), an update O(log n)) and publishes
//! it with one atomic store, so a delta is applied all at once or not at all.

use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use ferry_api::model::{Interner, Name, Node, Policy, Service, ServiceType, Workload};
use ferry_api::proto::{DeltaResponse, ResourceVersion};
use ferry_api::{KeyView, Kind, ResourceBody, ResourceError, ResourceKey, VersionedResource};
use serde::Serialize;

use crate::policy::{Check, CompiledPolicy, Denied, Party, PolicyIndex};
use crate::table::{Keyed, Table};

type Entry = Arc<VersionedResource>;

/// A resource is stored under its own key: the table holds a pointer per
/// resource, not a second copy of every key.
impl Keyed for Entry {
    type Key = ResourceKey;
    fn key(&self) -> &ResourceKey {
        &self.key
    }
}

/// An immutable view of the configuration.
#[derive(Debug, Clone, Default)]
pub struct ProxyState {
    revision: u64,
    /// Persistent tables (see [`crate::table`]): a snapshot clones in O(1)
    /// and a delta copies only the shards it writes.
    resources: Table<Entry>,
    /// Pod addresses, with the workload's telemetry labels (one map entry
    /// serves both lookups a new connection makes).
    workloads_by_ip: Table<(IpAddr, WorkloadAt)>,
    services_by_ip: Table<(IpAddr, Entry)>,
    /// InternalIP and ExternalIP addresses of nodes.
    nodes_by_ip: Table<(IpAddr, Entry)>,
    /// The workloads of each node, sorted by key: what runs here is found
    /// without scanning the cluster. A pointer per pod: a delta copies a
    /// node's list the first time it changes it (a snapshot may hold it)
    /// and edits its own copy in place after that.
    workloads_by_node: Table<(Name, Arc<Vec<Entry>>)>,
    /// Node ports of NodePort and LoadBalancer services.
    services_by_node_port: Table<(u16, Entry)>,
    /// Policies ready for evaluation, by policy name, and the policies
    /// selecting each workload.
    policies: Table<(Name, Arc<CompiledPolicy>)>,
    policies_by_workload: Table<(Name, imbl::OrdSet<Name>)>,
    /// Peer groups by group, then namespace: each entry's pods are sorted,
    /// so membership is a binary search in the resource itself.
    peer_groups: Table<(String, imbl::OrdMap<String, Entry>)>,
    /// Telemetry labels, built once per resource version so that a
    /// connection's metrics take reference counts, not allocations.
    /// One shared `PeerLabels` per distinct (namespace, app, identity):
    /// pods of one app share it, so labels cost a map entry per pod.
    peer_sets: Table<Arc<PeerLabels>>,
    /// By host name.
    service_hosts: Table<Arc<ServiceLabels>>,
    trust_domain: Arc<str>,
    /// When the last delta was applied.
    updated_at: Option<std::time::SystemTime>,
}

/// A workload at one of its addresses.
#[derive(Debug, Clone)]
struct WorkloadAt {
    entry: Entry,
    labels: Arc<PeerLabels>,
}

/// An index value that names the resource it points at.
trait Owned {
    fn owner(&self) -> &ResourceKey;
}

impl Owned for Entry {
    fn owner(&self) -> &ResourceKey {
        &self.key
    }
}

impl Owned for WorkloadAt {
    fn owner(&self) -> &ResourceKey {
        &self.entry.key
    }
}

/// How telemetry names a workload (see docs/observability.md). The pods
/// of one app share one, found by its contents.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerLabels {
    /// `app.kubernetes.io/name`, else `app`, else the pod's name.
    pub workload: Arc<str>,
    pub namespace: Arc<str>,
    /// The SPIFFE identity, or empty outside the mesh.
    pub principal: Arc<str>,
    /// The names Istio's standard metrics give it.
    pub istio: IstioPeer,
}

/// A workload as Istio's standard metrics name it (its `source_*` and
/// `destination_*` labels).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IstioPeer {
    /// The pod's controller (Deployment, StatefulSet...), else the pod.
    pub workload: Arc<str>,
    /// `service.istio.io/canonical-name`, else `app.kubernetes.io/name`,
    /// else `app`, else the workload.
    pub canonical_service: Arc<str>,
    /// `service.istio.io/canonical-revision`, else
    /// `app.kubernetes.io/version`, else `version`, else `latest`.
    pub canonical_revision: Arc<str>,
    /// `app` (else `app.kubernetes.io/name`), else `unknown`.
    pub app: Arc<str>,
    /// `version` (else `app.kubernetes.io/version`), else `unknown`.
    pub version: Arc<str>,
}

/// The values telemetry gives a label a workload lacks.
static LATEST: std::sync::LazyLock<Name> = std::sync::LazyLock::new(|| Name::from("latest"));
static UNKNOWN: std::sync::LazyLock<Name> = std::sync::LazyLock::new(|| Name::from("unknown"));
/// The principal of a workload outside the mesh.
static EMPTY: std::sync::LazyLock<Name> = std::sync::LazyLock::new(|| Name::from(""));

impl IstioPeer {
    /// Shared with the workload's names (its labels, its controller), so
    /// that a label set costs its pointers, not copies of its strings.
    /// `None` stands for the pod's own name.
    fn of(w: &Workload) -> [Option<&Name>; 5] {
        let label = |names: &[&str]| names.iter().find_map(|n| w.labels.value(n));
        let workload = w.controller.as_ref();
        [
            workload,
            label(&[
                "service.istio.io/canonical-name",
                "app.kubernetes.io/name",
                "app",
            ])
            .or(workload),
            Some(
                label(&[
                    "service.istio.io/canonical-revision",
                    "app.kubernetes.io/version",
                    "version",
                ])
                .unwrap_or(&LATEST),
            ),
            Some(label(&["app", "app.kubernetes.io/name"]).unwrap_or(&UNKNOWN)),
            Some(label(&["version", "app.kubernetes.io/version"]).unwrap_or(&UNKNOWN)),
        ]
    }
}

/// How telemetry names a service: its host name, name and namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceLabels {
    /// `name.namespace.svc.<cluster domain>`.
    pub host: Arc<str>,
    pub name: Arc<str>,
    pub namespace: Arc<str>,
}

impl PeerLabels {
    /// The name telemetry gives a workload; `None`: the pod's own name.
    fn app(w: &Workload) -> Option<&Name> {
        w.labels
            .value("app.kubernetes.io/name")
            .or_else(|| w.labels.value("app"))
    }

    fn of(w: &Workload, trust_domain: &str) -> Self {
        // The pod's name is copied only where it stands in for a label.
        let mut pod: Option<Name> = None;
        let mut or_pod = |name: Option<&Name>| match name {
            Some(name) => name.clone(),
            None => pod.get_or_insert_with(|| Name::from(w.name())).clone(),
        };
        let [workload, canonical_service, canonical_revision, app, version] =
            IstioPeer::of(w).map(&mut or_pod);
        Self {
            workload: or_pod(Self::app(w)),
            namespace: w.namespace.clone(),
            principal: if w.mesh {
                Arc::from(
                    ferry_api::identity::Identity::new(
                        trust_domain,
                        &*w.namespace,
                        &*w.service_account,
                    )
                    .to_string(),
                )
            } else {
                EMPTY.clone()
            },
            istio: IstioPeer {
                workload,
                canonical_service,
                canonical_revision,
                app,
                version,
            },
        }
    }
}

impl Keyed for Arc<PeerLabels> {
    type Key = PeerLabels;
    fn key(&self) -> &PeerLabels {
        self
    }
}

impl Keyed for Arc<ServiceLabels> {
    type Key = str;
    fn key(&self) -> &str {
        &self.host
    }
}

impl ProxyState {
    /// Control plane revision this state reflects.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn len(&self) -> usize {
        self.resources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// A resource by kind and name, without building a key.
    fn lookup(&self, kind: Kind, name: &str) -> Option<&VersionedResource> {
        let view: &dyn KeyView = &(kind, name);
        self.resources.get(view).map(|e| e.as_ref())
    }

    pub fn get(&self, key: &ResourceKey) -> Option<&VersionedResource> {
        self.resources.get(key).map(|e| e.as_ref())
    }

    /// Every resource (unordered).
    pub fn iter(&self) -> impl Iterator<Item = &VersionedResource> {
        self.resources.iter().map(|e| e.as_ref())
    }

    /// The workload that owns a pod IP.
    pub fn workload_by_ip(&self, ip: &IpAddr) -> Option<&Workload> {
        self.workload_entry_by_ip(ip).map(|(_, w)| w)
    }

    /// The service with this cluster, load-balancer or external IP.
    pub fn service_by_ip(&self, ip: &IpAddr) -> Option<&Service> {
        match &self.services_by_ip.value(ip)?.body {
            ResourceBody::Service(s) => Some(s),
            _ => None,
        }
    }

    /// The node with this InternalIP or ExternalIP address.
    pub fn node_by_ip(&self, ip: &IpAddr) -> Option<&Node> {
        match &self.nodes_by_ip.value(ip)?.body {
            ResourceBody::Node(n) => Some(n),
            _ => None,
        }
    }

    /// The NodePort or LoadBalancer service that owns this node port (any
    /// protocol: the caller checks the port's protocol).
    pub fn service_by_node_port(&self, port: u16) -> Option<&Service> {
        match &self.services_by_node_port.value(&port)?.body {
            ResourceBody::Service(s) => Some(s),
            _ => None,
        }
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        match &self.lookup(Kind::Node, name)?.body {
            ResourceBody::Node(n) => Some(n),
            _ => None,
        }
    }

    pub fn service(&self, namespace_name: &str) -> Option<&Service> {
        match &self.lookup(Kind::Service, namespace_name)?.body {
            ResourceBody::Service(s) => Some(s),
            _ => None,
        }
    }

    pub fn workload(&self, namespace_name: &str) -> Option<&Workload> {
        self.workload_entry(namespace_name).map(|(_, w)| w)
    }

    pub fn policy(&self, namespace_name: &str) -> Option<&Policy> {
        match &self.lookup(Kind::Policy, namespace_name)?.body {
            ResourceBody::Policy(p) => Some(p),
            _ => None,
        }
    }

    /// What this state holds, for resuming a stream.
    pub fn versions(&self) -> Vec<ResourceVersion> {
        self.resources
            .iter()
            .map(|e| ResourceVersion {
                key: Some(e.key.to_proto()),
                version: e.version,
            })
            .collect()
    }

    /// Drops shared label sets no workload uses any more, once they are
    /// many (an O(sets) sweep, amortised over as many inserts).
    fn forget_unused_peer_sets(&mut self) {
        if self.peer_sets.len() > 1024 && self.peer_sets.len() > self.workloads_by_ip.len() {
            // Held only by the set map: no pod has them.
            self.peer_sets
                .retain(|labels| Arc::strong_count(labels) > 1);
        }
    }

    /// Points a service's endpoints at the keys of the workloads this
    /// state holds, so that a pod's key is stored once however many
    /// services it backs (a workload that comes later is not looked for:
    /// the endpoint keeps its own copy until its service changes).
    fn share_workload_keys(&self, resource: &mut VersionedResource) {
        let ResourceBody::Service(service) = &mut resource.body else {
            return;
        };
        for endpoint in &mut service.endpoints {
            if let Some(name) = &endpoint.workload {
                if let Some(held) = self.lookup(Kind::Workload, name) {
                    endpoint.workload = Some(held.key.name.clone());
                }
            }
        }
    }

    /// Returns the room the tables grew into while a delta was applied.
    fn shrink_to_fit(&mut self) {
        self.resources.shrink_to_fit();
        self.workloads_by_ip.shrink_to_fit();
        self.services_by_ip.shrink_to_fit();
        self.nodes_by_ip.shrink_to_fit();
        self.workloads_by_node.shrink_to_fit();
        self.services_by_node_port.shrink_to_fit();
        self.policies.shrink_to_fit();
        self.policies_by_workload.shrink_to_fit();
        self.peer_groups.shrink_to_fit();
        self.peer_sets.shrink_to_fit();
        self.service_hosts.shrink_to_fit();
    }

    /// The telemetry labels of the workload at `ip`.
    pub fn peer_labels(&self, ip: &IpAddr) -> Option<&Arc<PeerLabels>> {
        self.workload_at(ip).map(|at| &at.labels)
    }

    /// The workload index entry of a pod address. A node's own address is
    /// never a workload, although host-network pods share it: who sends
    /// from a node address cannot be told apart, so policy judges it by
    /// address (ipBlocks) only.
    fn workload_at(&self, ip: &IpAddr) -> Option<&WorkloadAt> {
        if self.nodes_by_ip.contains_key(ip) {
            return None;
        }
        self.workloads_by_ip.value(ip)
    }

    /// The telemetry labels of a service, shared.
    pub fn service_label(&self, service: &Service) -> Option<&Arc<ServiceLabels>> {
        self.service_hosts.get(&*service.hostname)
    }

    /// When the last delta was applied (`None` before the first).
    pub fn updated_at(&self) -> Option<std::time::SystemTime> {
        self.updated_at
    }

    /// Whether a configuration has been applied. Before that the proxy
    /// knows nothing of the mesh, and fails closed: every connection is
    /// refused ([`crate::request::Refusal::NotConfigured`]).
    pub fn is_configured(&self) -> bool {
        self.updated_at.is_some()
    }

    /// How many resources of each kind the state holds.
    pub fn counts(&self) -> [(Kind, usize); 5] {
        let mut counts = [
            (Kind::Workload, 0),
            (Kind::Service, 0),
            (Kind::Node, 0),
            (Kind::Policy, 0),
            (Kind::PeerGroup, 0),
        ];
        for entry in self.resources.iter() {
            if let Some(c) = counts.iter_mut().find(|(k, _)| *k == entry.key.kind) {
                c.1 += 1;
            }
        }
        counts
    }

    /// The workloads scheduled on `node` (in key order).
    pub fn workloads_on<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Workload> + 'a {
        self.workloads_by_node
            .value(node)
            .into_iter()
            .flat_map(|entries| entries.iter())
            .filter_map(|entry| match &entry.body {
                ResourceBody::Workload(w) => Some(w),
                _ => None,
            })
    }

    /// Every service address (cluster, load-balancer and external IPs) with
    /// its service (unordered).
    pub fn service_addresses(&self) -> impl Iterator<Item = (IpAddr, &Service)> {
        self.services_by_ip
            .iter()
            .filter_map(|(ip, e)| match &e.body {
                ResourceBody::Service(s) => Some((*ip, &**s)),
                _ => None,
            })
    }

    /// Every node port in use with the service that owns it (unordered).
    pub fn node_ports(&self) -> impl Iterator<Item = (u16, &Service)> + '_ {
        self.services_by_node_port
            .iter()
            .filter_map(|(port, e)| match &e.body {
                ResourceBody::Service(s) => Some((*port, &**s)),
                _ => None,
            })
    }

    /// Whether any endpoint of `service` is a workload enrolled in the mesh.
    pub fn has_mesh_endpoint(&self, service: &Service) -> bool {
        service.endpoints.iter().any(|e| {
            e.workload
                .as_deref()
                .and_then(|key| self.workload(key))
                .is_some_and(|w| w.mesh)
        })
    }

    /// Cluster, load-balancer and external IPs of a service.
    fn service_ips(s: &Service) -> impl Iterator<Item = IpAddr> + '_ {
        s.cluster_ips
            .iter()
            .chain(&s.load_balancer_ips)
            .chain(&s.external_ips)
            .copied()
    }

    /// Node ports of a NodePort or LoadBalancer service.
    fn service_node_ports(s: &Service) -> impl Iterator<Item = u16> + '_ {
        let has_node_ports = matches!(
            s.service_type,
            ServiceType::NodePort | ServiceType::LoadBalancer
        );
        s.ports
            .iter()
            .filter(move |_| has_node_ports)
            .filter_map(|p| p.node_port)
    }

    /// The workload that owns a pod IP, with its key.
    pub fn workload_entry_by_ip(&self, ip: &IpAddr) -> Option<(&str, &Workload)> {
        let entry = &self.workload_at(ip)?.entry;
        match &entry.body {
            ResourceBody::Workload(w) => Some((&*entry.key.name, w)),
            _ => None,
        }
    }

    /// A workload by key (`namespace/name`), with the key as stored.
    pub fn workload_entry(&self, key: &str) -> Option<(&str, &Workload)> {
        let entry = self.lookup(Kind::Workload, key)?;
        match &entry.body {
            ResourceBody::Workload(w) => Some((&*entry.key.name, w)),
            _ => None,
        }
    }

    /// The party at `ip`, with its workload if the config knows one.
    pub fn party_at(&self, ip: IpAddr) -> Party<'_> {
        let found = self.workload_entry_by_ip(&ip);
        Party {
            workload: found.map(|(_, w)| w),
            key: found.map(|(key, _)| key),
            ip,
        }
    }

    /// A workload by key, as a party at its first address (unspecified when
    /// it has none).
    pub fn workload_party(&self, key: &str) -> Option<Party<'_>> {
        let (key, w) = self.workload_entry(key)?;
        Some(Party {
            workload: Some(w),
            key: Some(key),
            ip: w
                .addresses
                .first()
                .copied()
                .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
        })
    }

    /// Whether the halves `check` enforces allow its connection.
    pub fn enforce(&self, check: &Check) -> Result<(), Denied> {
        check.judge(
            self,
            &self.party_at(check.source),
            &self.party_at(check.destination),
        )
    }

    /// Parseable InternalIP and ExternalIP addresses of a node.
    fn node_ips(n: &Node) -> impl Iterator<Item = IpAddr> + '_ {
        n.addresses
            .iter()
            .filter(|a| a.kind == "InternalIP" || a.kind == "ExternalIP")
            .filter_map(|a| a.address.trim().parse().ok())
    }

    /// Removes the index entries that still point at `owner`.
    fn unindex_keys<K: Hash + Eq + Clone, V: Owned + Clone>(
        index: &mut Table<(K, V)>,
        keys: impl IntoIterator<Item = K>,
        owner: &ResourceKey,
    ) {
        for k in keys {
            // Another resource may have taken the key since.
            if index.value(&k).is_some_and(|e| e.owner() == owner) {
                index.remove(&k);
            }
        }
    }

    fn index_keys<K: Hash + Eq + Clone>(
        index: &mut Table<(K, Entry)>,
        keys: impl IntoIterator<Item = K>,
        entry: &Entry,
    ) {
        for k in keys {
            index.insert((k, entry.clone()));
        }
    }

    /// Where the workload `key` is (or would go) in a node's list.
    fn node_position(entries: &[Entry], key: &str) -> Result<usize, usize> {
        entries.binary_search_by(|e| (*e.key.name).cmp(key))
    }

    fn unindex(&mut self, old: &Entry) {
        let key = &old.key;
        match &old.body {
            ResourceBody::Workload(w) => {
                Self::unindex_keys(&mut self.workloads_by_ip, w.addresses.iter().copied(), key);
                if let Some(node) = &w.node {
                    if let Some((_, entries)) = self.workloads_by_node.get_mut(&**node) {
                        if let Ok(at) = Self::node_position(entries, &key.name) {
                            if entries.len() == 1 {
                                self.workloads_by_node.remove(&**node);
                            } else {
                                Arc::make_mut(entries).remove(at);
                            }
                        }
                    }
                }
            }
            ResourceBody::Service(s) => {
                self.service_hosts.remove(&*s.hostname);
                Self::unindex_keys(&mut self.services_by_ip, Self::service_ips(s), key);
                Self::unindex_keys(
                    &mut self.services_by_node_port,
                    Self::service_node_ports(s),
                    key,
                );
            }
            ResourceBody::Node(n) => {
                Self::unindex_keys(&mut self.nodes_by_ip, Self::node_ips(n), key);
            }
            ResourceBody::PeerGroup(g) => {
                if let Some((_, namespaces)) = self.peer_groups.get_mut(g.group.as_str()) {
                    namespaces.remove(&g.namespace);
                    if namespaces.is_empty() {
                        self.peer_groups.remove(g.group.as_str());
                    }
                }
            }
            ResourceBody::Policy(p) => {
                self.policies.remove(&*key.name);
                for w in &p.selected {
                    if let Some((_, set)) = self.policies_by_workload.get_mut(w.as_str()) {
                        set.remove(&key.name);
                        if set.is_empty() {
                            self.policies_by_workload.remove(w.as_str());
                        }
                    }
                }
            }
        }
    }

    fn insert(&mut self, entry: Entry) {
        if let Some(old) = self.resources.insert(entry.clone()) {
            self.unindex(&old);
        }
        match &entry.body {
            ResourceBody::Workload(w) => {
                if let Some(node) = &w.node {
                    let entries = &mut self
                        .workloads_by_node
                        .get_or_insert_with(&**node, || (node.clone(), Default::default()))
                        .1;
                    match Self::node_position(entries, &entry.key.name) {
                        Ok(at) => Arc::make_mut(entries)[at] = entry.clone(),
                        Err(at) => Arc::make_mut(entries).insert(at, entry.clone()),
                    }
                }
                let labels = PeerLabels::of(w, &self.trust_domain);
                let labels = match self.peer_sets.get(&labels) {
                    Some(shared) => shared.clone(),
                    None => {
                        let labels = Arc::new(labels);
                        self.peer_sets.insert(labels.clone());
                        labels
                    }
                };
                for ip in &w.addresses {
                    self.workloads_by_ip.insert((
                        *ip,
                        WorkloadAt {
                            entry: entry.clone(),
                            labels: labels.clone(),
                        },
                    ));
                }
            }
            ResourceBody::Service(s) => {
                self.service_hosts.insert(Arc::new(ServiceLabels {
                    host: s.hostname.clone(),
                    name: s.name.clone(),
                    namespace: s.namespace.clone(),
                }));
                Self::index_keys(&mut self.services_by_ip, Self::service_ips(s), &entry);
                Self::index_keys(
                    &mut self.services_by_node_port,
                    Self::service_node_ports(s),
                    &entry,
                );
            }
            ResourceBody::Node(n) => {
                Self::index_keys(&mut self.nodes_by_ip, Self::node_ips(n), &entry);
            }
            ResourceBody::PeerGroup(g) => {
                self.peer_groups
                    .get_or_insert_with(g.group.as_str(), || (g.group.clone(), Default::default()))
                    .1
                    .insert(g.namespace.clone(), entry.clone());
            }
            ResourceBody::Policy(p) => {
                self.policies
                    .insert((entry.key.name.clone(), Arc::new(CompiledPolicy::compile(p))));
                for w in &p.selected {
                    self.policies_by_workload
                        .get_or_insert_with(w.as_str(), || {
                            (Name::from(w.as_str()), Default::default())
                        })
                        .1
                        .insert(entry.key.name.clone());
                }
            }
        }
    }

    fn remove(&mut self, key: &ResourceKey) -> bool {
        match self.resources.remove(key) {
            Some(old) => {
                self.unindex(&old);
                true
            }
            None => false,
        }
    }
}

impl PolicyIndex for ProxyState {
    fn policies_selecting<'a>(
        &'a self,
        workload: &'a str,
    ) -> impl Iterator<Item = &'a CompiledPolicy> + 'a {
        self.policies_by_workload
            .value(workload)
            .into_iter()
            .flatten()
            .filter_map(|name| self.policies.value(&**name).map(|p| p.as_ref()))
    }

    fn in_peer_group(&self, group: &str, workload: &str) -> bool {
        let Some((namespace, pod)) = workload.split_once('/') else {
            return false;
        };
        let entry = self
            .peer_groups
            .value(group)
            .and_then(|namespaces| namespaces.get(namespace));
        match entry.map(|e| &e.body) {
            // Sorted: checked when the resource was decoded.
            Some(ResourceBody::PeerGroup(g)) => {
                g.pods.binary_search_by(|p| p.as_str().cmp(pod)).is_ok()
            }
            _ => false,
        }
    }
}

/// The outcome of applying one response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    pub applied: usize,
    pub removed: usize,
    /// Resources refused (the last good version is kept); sent back as a NACK.
    #[serde(skip)]
    pub rejected: Vec<ResourceError>,
}

/// The shared store: lock-free snapshots for readers, one writer.
#[derive(Debug)]
pub struct ConfigStore {
    current: ArcSwap<ProxyState>,
    /// Names, label sets and port lists, each stored once across every
    /// resource (the writer's alone: taken once per applied delta).
    interner: std::sync::Mutex<Interner>,
    ready: AtomicBool,
    /// Bumped after every applied delta, for tasks that follow the config.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Default for ConfigStore {
    fn default() -> Self {
        Self::for_trust_domain(ferry_api::identity::DEFAULT_TRUST_DOMAIN)
    }
}

impl ConfigStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A store whose telemetry names identities in `trust_domain`.
    pub fn for_trust_domain(trust_domain: &str) -> Self {
        let state = ProxyState {
            trust_domain: Arc::from(trust_domain),
            ..ProxyState::default()
        };
        Self {
            current: ArcSwap::from_pointee(state),
            interner: std::sync::Mutex::default(),
            ready: AtomicBool::new(false),
            changes: tokio::sync::watch::Sender::new(0),
        }
    }

    /// A consistent view of the configuration; lock-free.
    pub fn snapshot(&self) -> Arc<ProxyState> {
        self.current.load_full()
    }

    /// Notified after every applied delta.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// True once a first complete configuration has been applied; stays true
    /// when the control plane goes away (the proxy serves its last good config).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Applies one delta atomically. Resources that fail validation are
    /// rejected individually and keep their last good version; the rest of
    /// the delta is applied. Must be called by a single writer.
    pub fn apply(&self, response: DeltaResponse) -> ApplyReport {
        let mut next = ProxyState::clone(&self.current.load());
        let mut report = ApplyReport::default();
        // Only the writer takes it; a panic elsewhere cannot leave it
        // half-updated in a way that matters (it is a cache of values).
        let mut interner = self
            .interner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        next.revision = response.revision;
        next.updated_at = Some(std::time::SystemTime::now());
        // Workloads first: the services after them share their keys.
        let (workloads, others): (Vec<_>, Vec<_>) = response
            .resources
            .into_iter()
            .partition(|r| matches!(r.body, Some(ferry_api::proto::resource::Body::Workload(_))));
        for resource in workloads.into_iter().chain(others) {
            match VersionedResource::decode_with(resource, &mut interner) {
                Ok(mut decoded) => {
                    next.share_workload_keys(&mut decoded);
                    next.insert(Arc::new(decoded));
                    report.applied += 1;
                }
                Err(e) => report.rejected.push(e),
            }
        }
        for key in &response.removed {
            match ResourceKey::from_proto(key) {
                Some(key) => {
                    if next.remove(&key) {
                        report.removed += 1;
                    }
                }
                None => report.rejected.push(ResourceError {
                    key: ResourceKey::new(
                        Kind::Workload,
                        format!("<kind {}>/{}", key.kind, key.name),
                    ),
                    message: "removed: unknown resource kind or empty name".into(),
                }),
            }
        }
        next.forget_unused_peer_sets();
        next.shrink_to_fit();
        self.current.store(Arc::new(next));
        interner.sweep();
        self.ready.store(true, Ordering::Release);
        self.changes.send_modify(|n| *n += 1);
        report
    }
}

#[cfg(any(test, feature = "test-util"))]
impl ConfigStore {
    /// A store holding `bodies`, every one of which must be accepted
    /// (panics otherwise: fixtures for tests).
    #[allow(clippy::unwrap_used, clippy::expect_used)]
    pub fn holding(bodies: &[ResourceBody]) -> Arc<Self> {
        let store = Self::new();
        let report = store.apply(DeltaResponse {
            nonce: "1".into(),
            revision: 1,
            resources: bodies.iter().map(VersionedResource::encode).collect(),
            removed: vec![],
        });
        assert!(report.rejected.is_empty(), "{:?}", report.rejected);
        store
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::model::NodeAddress;
    use ferry_api::proto;

    #[test]
    fn endpoints_share_their_workloads_keys() {
        // The service first: the store applies workloads before it.
        let mut bodies = vec![ResourceBody::Service(Box::new(crate::route::tests::web()))];
        bodies.extend(crate::route::tests::cluster());
        let state = ConfigStore::holding(&bodies).snapshot();
        let service = state.service("shop/web").unwrap();
        let mut shared = 0;
        for e in &service.endpoints {
            let Some(name) = &e.workload else { continue };
            let held = state
                .get(&ResourceKey::new(Kind::Workload, name.clone()))
                .unwrap();
            assert!(Arc::ptr_eq(name, &held.key.name), "{name}");
            shared += 1;
        }
        assert!(shared >= 2, "{shared} endpoints with workloads");
    }

    fn workload(name: &str, ip: &str) -> ResourceBody {
        ResourceBody::Workload(Workload {
            key: Workload::key_of("default", name),
            node: Some("n1".into()),
            addresses: vec![ip.parse().unwrap()].into(),
            ready: true,
            terminating: false,
            profile: Arc::new(ferry_api::model::Profile {
                namespace: "default".into(),
                service_account: "default".into(),
                labels: Default::default(),
                ports: vec![].into(),
                mesh: true,
                controller: None,
            }),
        })
    }

    fn response(revision: u64, bodies: &[ResourceBody], removed: &[ResourceKey]) -> DeltaResponse {
        DeltaResponse {
            nonce: revision.to_string(),
            revision,
            resources: bodies.iter().map(VersionedResource::encode).collect(),
            removed: removed.iter().map(ResourceKey::to_proto).collect(),
        }
    }

    #[test]
    fn snapshots_are_consistent_while_deltas_apply() {
        let store = ConfigStore::default();
        assert!(!store.is_ready());
        store.apply(response(1, &[workload("a", "10.0.0.1")], &[]));
        assert!(store.is_ready());
        let before = store.snapshot();
        store.apply(response(
            2,
            &[workload("b", "10.0.0.2")],
            &[ResourceKey::new(Kind::Workload, "default/a")],
        ));
        // The old snapshot is untouched.
        assert_eq!(
            before
                .workload_by_ip(&"10.0.0.1".parse().unwrap())
                .unwrap()
                .name(),
            "a"
        );
        assert!(before.workload("default/b").is_none());
        let after = store.snapshot();
        assert_eq!(after.revision(), 2);
        assert!(after.workload_by_ip(&"10.0.0.1".parse().unwrap()).is_none());
        assert_eq!(
            after
                .workload_by_ip(&"10.0.0.2".parse().unwrap())
                .unwrap()
                .name(),
            "b"
        );
    }

    #[test]
    fn a_node_address_is_never_a_workload() {
        // A host-network pod shares its node's address: a connection from
        // that address is the node's, judged by address only.
        let store = ConfigStore::default();
        store.apply(response(
            1,
            &[
                node("n1", &[("InternalIP", "10.0.0.1")]),
                workload("node-exporter", "10.0.0.1"),
                workload("web", "10.0.0.2"),
            ],
            &[],
        ));
        let s = store.snapshot();
        assert!(s.workload_by_ip(&"10.0.0.1".parse().unwrap()).is_none());
        assert!(s.peer_labels(&"10.0.0.1".parse().unwrap()).is_none());
        assert!(s.workload_by_ip(&"10.0.0.2".parse().unwrap()).is_some());
    }

    #[test]
    fn the_workloads_of_a_node_follow_moves_and_deletes() {
        let store = ConfigStore::default();
        let on = |name: &str, ip: &str, node: &str| {
            let mut body = workload(name, ip);
            if let ResourceBody::Workload(w) = &mut body {
                w.node = Some(node.into());
            }
            body
        };
        store.apply(response(
            1,
            &[
                on("a", "10.0.0.1", "n1"),
                on("b", "10.0.0.2", "n1"),
                on("c", "10.0.0.3", "n2"),
            ],
            &[],
        ));
        let names = |s: &ProxyState, node: &str| -> Vec<String> {
            s.workloads_on(node).map(|w| w.name().to_string()).collect()
        };
        let s = store.snapshot();
        assert_eq!(names(&s, "n1"), ["a", "b"]);
        assert_eq!(names(&s, "n2"), ["c"]);
        store.apply(response(
            2,
            &[on("b", "10.0.0.2", "n2")],
            &[ResourceKey::new(Kind::Workload, "default/a")],
        ));
        let s = store.snapshot();
        assert!(names(&s, "n1").is_empty());
        assert_eq!(names(&s, "n2"), ["b", "c"]);
    }

    #[test]
    fn telemetry_labels_are_shared_by_the_pods_of_an_app() {
        let store = ConfigStore::default();
        // Pods of one Deployment (their controller).
        let labelled = |name: &str, ip: &str, app: &str| {
            let mut body = workload(name, ip);
            if let ResourceBody::Workload(w) = &mut body {
                w.labels.insert("app", app);
                w.controller = Some(app.into());
            }
            body
        };
        store.apply(response(
            1,
            &[
                labelled("a", "10.0.0.1", "web"),
                labelled("b", "10.0.0.2", "web"),
                labelled("c", "10.0.0.3", "db"),
            ],
            &[],
        ));
        let s = store.snapshot();
        let a = s.peer_labels(&"10.0.0.1".parse().unwrap()).unwrap();
        let b = s.peer_labels(&"10.0.0.2".parse().unwrap()).unwrap();
        let c = s.peer_labels(&"10.0.0.3".parse().unwrap()).unwrap();
        assert!(Arc::ptr_eq(a, b), "one allocation for the pods of an app");
        assert_eq!(&*a.workload, "web");
        assert_eq!(
            &*a.principal,
            "spiffe://cluster.local/ns/default/sa/default"
        );
        assert_eq!(&*c.workload, "db");
        // Istio's names: the controller, the app as canonical service, no
        // revision or version labels.
        assert_eq!(
            [
                &*a.istio.workload,
                &*a.istio.canonical_service,
                &*a.istio.canonical_revision,
                &*a.istio.app,
                &*a.istio.version
            ],
            ["web", "web", "latest", "web", "unknown"]
        );
        // A version label is part of the set: v2 pods do not share v1's.
        let mut v2 = labelled("d", "10.0.0.4", "web");
        if let ResourceBody::Workload(w) = &mut v2 {
            w.labels.insert("version", "v2");
            w.labels
                .insert("service.istio.io/canonical-name", "storefront");
        }
        store.apply(response(2, &[v2], &[]));
        let s = store.snapshot();
        let d = s.peer_labels(&"10.0.0.4".parse().unwrap()).unwrap();
        assert_eq!(
            [
                &*d.istio.canonical_service,
                &*d.istio.canonical_revision,
                &*d.istio.version
            ],
            ["storefront", "v2", "v2"]
        );
        assert_eq!(&*d.workload, "web");
        // A pod's address moves, another pod goes: the index follows.
        store.apply(response(
            3,
            &[labelled("a", "10.0.0.9", "web")],
            &[ResourceKey::new(Kind::Workload, "default/c")],
        ));
        let s = store.snapshot();
        assert!(s.peer_labels(&"10.0.0.1".parse().unwrap()).is_none());
        assert!(s.peer_labels(&"10.0.0.3".parse().unwrap()).is_none());
        assert_eq!(
            &*s.peer_labels(&"10.0.0.9".parse().unwrap())
                .unwrap()
                .workload,
            "web"
        );
    }

    #[test]
    fn an_address_change_moves_the_index() {
        let store = ConfigStore::default();
        store.apply(response(1, &[workload("a", "10.0.0.1")], &[]));
        store.apply(response(2, &[workload("a", "10.0.0.7")], &[]));
        let s = store.snapshot();
        assert!(s.workload_by_ip(&"10.0.0.1".parse().unwrap()).is_none());
        assert!(s.workload_by_ip(&"10.0.0.7".parse().unwrap()).is_some());
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_bad_resource_is_rejected_and_the_last_good_version_kept() {
        let store = ConfigStore::default();
        store.apply(response(1, &[workload("a", "10.0.0.1")], &[]));
        let mut bad = response(
            2,
            &[workload("a", "10.0.0.9"), workload("b", "10.0.0.2")],
            &[],
        );
        if let Some(proto::resource::Body::Workload(w)) = bad.resources[0].body.as_mut() {
            w.addresses = vec![vec![1, 2]];
        }
        let report = store.apply(bad);
        assert_eq!(report.applied, 1);
        assert_eq!(report.rejected.len(), 1);
        assert_eq!(
            report.rejected[0].to_string(),
            "workload default/a: addresses[0]: an IP address has 4 or 16 bytes, not 2"
        );
        let s = store.snapshot();
        assert_eq!(
            s.workload("default/a").unwrap().addresses[0].to_string(),
            "10.0.0.1"
        );
        assert!(s.workload("default/b").is_some());
    }

    fn node(name: &str, addresses: &[(&str, &str)]) -> ResourceBody {
        ResourceBody::Node(Box::new(Node {
            name: name.into(),
            addresses: addresses
                .iter()
                .map(|(kind, address)| NodeAddress {
                    kind: (*kind).into(),
                    address: (*address).into(),
                })
                .collect(),
            hbone: None,
            zone: None,
        }))
    }

    fn service(name: &str, service_type: ServiceType, node_ports: &[Option<u16>]) -> ResourceBody {
        use ferry_api::model::{Protocol, ServicePort, TargetPort, TrafficPolicy};
        ResourceBody::Service(Box::new(Service {
            namespace: "default".into(),
            name: name.into(),
            hostname: format!("{name}.default.svc.cluster.local").into(),
            service_type,
            cluster_ips: vec![],
            headless: false,
            ports: node_ports
                .iter()
                .enumerate()
                .map(|(i, node_port)| ServicePort {
                    name: format!("p{i}"),
                    port: 80 + i as u16,
                    protocol: Protocol::Tcp,
                    target_port: TargetPort::Number(8080),
                    node_port: *node_port,
                })
                .collect(),
            load_balancer_ips: vec![],
            external_ips: vec![],
            external_name: None,
            client_ip_affinity: None,
            internal_traffic_policy: TrafficPolicy::Cluster,
            external_traffic_policy: TrafficPolicy::Cluster,
            endpoints: vec![],
            selector: false,
            traffic_distribution: None,
        }))
    }

    #[test]
    fn nodes_are_indexed_by_internal_and_external_ips() {
        let store = ConfigStore::default();
        store.apply(response(
            1,
            &[node(
                "n1",
                &[
                    ("InternalIP", "10.1.0.1"),
                    ("ExternalIP", "203.0.113.1"),
                    ("InternalIP", "fd00::1"),
                    ("Hostname", "10.1.0.99"),
                    ("InternalDNS", "n1.internal"),
                    ("InternalIP", "not-an-ip"),
                ],
            )],
            &[],
        ));
        let s = store.snapshot();
        for ip in ["10.1.0.1", "203.0.113.1", "fd00::1"] {
            assert_eq!(
                s.node_by_ip(&ip.parse().unwrap()).map(|n| n.name.as_str()),
                Some("n1"),
                "{ip}"
            );
        }
        // Only InternalIP and ExternalIP addresses count.
        assert!(s.node_by_ip(&"10.1.0.99".parse().unwrap()).is_none());

        // An address change moves the index; removal clears it.
        store.apply(response(
            2,
            &[node("n1", &[("InternalIP", "10.1.0.2")])],
            &[],
        ));
        let s = store.snapshot();
        assert!(s.node_by_ip(&"10.1.0.1".parse().unwrap()).is_none());
        assert!(s.node_by_ip(&"203.0.113.1".parse().unwrap()).is_none());
        assert!(s.node_by_ip(&"10.1.0.2".parse().unwrap()).is_some());
        store.apply(response(3, &[], &[ResourceKey::new(Kind::Node, "n1")]));
        assert!(store
            .snapshot()
            .node_by_ip(&"10.1.0.2".parse().unwrap())
            .is_none());
    }

    #[test]
    fn node_ports_of_node_port_and_load_balancer_services_are_indexed() {
        let store = ConfigStore::default();
        store.apply(response(
            1,
            &[
                service("np", ServiceType::NodePort, &[Some(30080), None]),
                service("lb", ServiceType::LoadBalancer, &[Some(30443)]),
                // A ClusterIP service's stale nodePort is not served.
                service("cip", ServiceType::ClusterIP, &[Some(30099)]),
            ],
            &[],
        ));
        let s = store.snapshot();
        let owner = |port| s.service_by_node_port(port).map(|svc| svc.name.clone());
        assert_eq!(owner(30080).as_deref(), Some("np"));
        assert_eq!(owner(30443).as_deref(), Some("lb"));
        assert_eq!(owner(30099), None);
        assert_eq!(owner(80), None);

        // The port moves to another service, which is applied first: the old
        // owner's update, applied after, does not take it back.
        store.apply(response(
            2,
            &[
                service("lb", ServiceType::LoadBalancer, &[Some(30443), Some(30080)]),
                service("np", ServiceType::NodePort, &[Some(30081), None]),
            ],
            &[],
        ));
        let s = store.snapshot();
        let owner = |port| s.service_by_node_port(port).map(|svc| svc.name.clone());
        assert_eq!(owner(30080).as_deref(), Some("lb"));
        assert_eq!(owner(30081).as_deref(), Some("np"));

        // Removing the old owner leaves the new owner's entry alone.
        store.apply(response(
            3,
            &[],
            &[ResourceKey::new(Kind::Service, "default/np")],
        ));
        let s = store.snapshot();
        assert!(s.service_by_node_port(30081).is_none());
        assert_eq!(
            s.service_by_node_port(30080).map(|svc| &*svc.name),
            Some("lb")
        );

        // A type change to ClusterIP drops its node ports.
        store.apply(response(
            4,
            &[service(
                "lb",
                ServiceType::ClusterIP,
                &[Some(30443), Some(30080)],
            )],
            &[],
        ));
        let s = store.snapshot();
        assert!(s.service_by_node_port(30080).is_none());
        assert!(s.service_by_node_port(30443).is_none());
    }

    #[test]
    fn versions_report_what_is_held() {
        let store = ConfigStore::default();
        let node = ResourceBody::Node(Box::new(Node {
            name: "n1".into(),
            addresses: vec![NodeAddress {
                kind: "InternalIP".into(),
                address: "10.1.0.1".into(),
            }],
            hbone: Some("10.1.0.1:15008".parse().unwrap()),
            zone: None,
        }));
        let wire = VersionedResource::encode(&node);
        store.apply(response(1, &[node], &[]));
        let versions = store.snapshot().versions();
        assert_eq!(versions.len(), 1);
        assert_eq!(versions[0].version, wire.version);
        assert_eq!(
            store.snapshot().node("n1").unwrap().hbone.unwrap().port(),
            15008
        );
    }
}
