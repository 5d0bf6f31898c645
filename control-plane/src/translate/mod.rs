//! Incremental translation: source events in, changed model resources out.
//!
//! The [`Translator`] keeps only what translation needs (pods as workloads,
//! services, slices, namespace labels) plus indexes that bound the cost of a
//! change to the objects it touches:
//!
//! - a pod change re-translates that workload and the services whose
//!   selector matches its old or new labels (a check per service of its
//!   namespace, not a scan of every pod);
//! - a service change re-derives its membership from the pods of its
//!   namespace;
//! - an EndpointSlice change re-translates the service it belongs to.
//!
//! Each batch of events marks resources dirty; each dirty resource is
//! translated once, encoded, and reported only if its content version changed.

mod groups;
pub mod objects;
pub mod policy;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;

use ferry_api::model::Workload;
use ferry_api::proto;
use ferry_api::{Kind, ResourceBody, ResourceKey, VersionedResource};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;

pub use objects::{TranslateOptions, MESH_LABEL};

use crate::source::validate::SERVICE_NAME_LABEL;
use crate::source::{K8sObject, ObjectKind, ObjectRef, SourceEvent};

/// Which proxies receive a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every proxy (services, workloads and nodes are needed for outbound).
    AllNodes,
    /// Only the proxies of these nodes (shared: the change log keeps the
    /// scope a resource had before each change).
    Nodes(Arc<BTreeSet<String>>),
}

impl Scope {
    pub fn includes(&self, node: &str) -> bool {
        match self {
            Scope::AllNodes => true,
            Scope::Nodes(nodes) => nodes.contains(node),
        }
    }
}

/// A translated resource, encoded for the wire once: every stream sends
/// these bytes as they are (`proto::DeltaResponseEncoded`), and the
/// control plane keeps no other copy of the translated resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// A `proto::Resource`, encoded.
    pub encoded: Bytes,
    pub version: u64,
    pub scope: Scope,
}

impl Published {
    /// Encodes a resource for publishing.
    pub fn new(resource: &proto::Resource, scope: Scope) -> Self {
        Self {
            encoded: Bytes::from(prost::Message::encode_to_vec(resource)),
            version: resource.version,
            scope,
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// The resource, decoded (for the few readers that need its fields).
    pub fn resource(&self) -> Result<proto::Resource, prost::DecodeError> {
        prost::Message::decode(self.encoded.clone())
    }
}

/// A change to the published configuration.
#[derive(Debug, Clone)]
pub enum Change {
    Upsert(ResourceKey, Published),
    Remove(ResourceKey),
}

type NsName = (String, String);

/// A pod's services: a small sorted set. A pod is selected by a service or
/// two, where a `BTreeSet`'s first node reserves room for eleven (about 280
/// bytes for every pod).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Names(Vec<String>);

impl Names {
    fn insert(&mut self, name: String) {
        if let Err(i) = self.0.binary_search(&name) {
            self.0.insert(i, name);
        }
    }

    fn remove(&mut self, name: &str) {
        if let Ok(i) = self.0.binary_search_by(|n| n.as_str().cmp(name)) {
            self.0.remove(i);
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn iter(&self) -> std::slice::Iter<'_, String> {
        self.0.iter()
    }
}

impl FromIterator<String> for Names {
    fn from_iter<I: IntoIterator<Item = String>>(iter: I) -> Self {
        let mut names: Vec<String> = iter.into_iter().collect();
        names.sort_unstable();
        names.dedup();
        names.shrink_to_fit();
        Self(names)
    }
}

impl<'a> IntoIterator for &'a Names {
    type Item = &'a String;
    type IntoIter = std::slice::Iter<'a, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Everything translation keeps about one namespace.
#[derive(Debug, Default)]
struct NamespaceState {
    /// The Namespace object's labels; `None` until it is seen.
    labels: Option<BTreeMap<String, String>>,
    /// Labels policies match against: the object's plus the implicit
    /// `kubernetes.io/metadata.name`.
    effective_labels: Option<BTreeMap<String, String>>,
    /// Pods, already translated (the only pod fields translation needs).
    /// Finished pods are not kept: they are nobody's backend.
    /// Boxed: a namespace's table has room for up to twice its pods, and
    /// a slot holding the workload itself cost twice the workload.
    pods: HashMap<String, Box<Workload>>,
    /// Pods on the host network: never in the mesh, whatever the labels say.
    host_network: HashSet<String>,
    services: HashMap<String, Box<core::Service>>,
    /// Selector-based services indexed by the first pair of their selector:
    /// a pod can only match services indexed under one of its own labels.
    selector_index: HashMap<(String, String), BTreeSet<String>>,
    /// Pods selected by each selector-based service.
    members: HashMap<String, BTreeSet<String>>,
    /// Services selecting each pod (the reverse of `members`).
    pod_services: HashMap<String, Names>,
    slices: HashMap<String, Box<EndpointSlice>>,
    slices_by_service: HashMap<String, BTreeSet<String>>,
    policies: HashMap<String, Box<NetworkPolicy>>,
}

impl NamespaceState {
    /// Nothing left to remember: no Namespace object, and nothing in it.
    fn is_empty(&self) -> bool {
        self.labels.is_none()
            && self.pods.is_empty()
            && self.host_network.is_empty()
            && self.services.is_empty()
            && self.selector_index.is_empty()
            && self.members.is_empty()
            && self.pod_services.is_empty()
            && self.slices.is_empty()
            && self.slices_by_service.is_empty()
            && self.policies.is_empty()
    }

    fn selector_pair(selector: &BTreeMap<String, String>) -> Option<(String, String)> {
        selector.iter().next().map(|(k, v)| (k.clone(), v.clone()))
    }

    /// Services whose selector matches these labels.
    fn selecting(&self, labels: &ferry_api::model::Labels) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for (k, v) in labels {
            let Some(candidates) = self.selector_index.get(&(k.to_string(), v.to_string())) else {
                continue;
            };
            for name in candidates {
                let selects = self
                    .services
                    .get(name)
                    .and_then(|s| objects::service_selector(s))
                    .is_some_and(|sel| objects::selector_matches(sel, labels));
                if selects {
                    out.insert(name.clone());
                }
            }
        }
        out
    }

    /// This namespace's pods as policy compilation sees them (`namespace`:
    /// its name); none until its labels are known.
    fn pod_views<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = policy::PodView<'a>> {
        let labels = self.effective_labels.as_ref();
        self.pods.iter().filter_map(move |(pod, w)| {
            Some(policy::PodView {
                namespace,
                name: pod,
                labels: &w.labels,
                namespace_labels: labels?,
            })
        })
    }

    fn unlink_service(&mut self, name: &str, selector: Option<&BTreeMap<String, String>>) {
        if let Some(pair) = selector.and_then(Self::selector_pair) {
            if let Some(set) = self.selector_index.get_mut(&pair) {
                set.remove(name);
                if set.is_empty() {
                    self.selector_index.remove(&pair);
                }
            }
        }
        for pod in self.members.remove(name).unwrap_or_default() {
            if let Some(services) = self.pod_services.get_mut(&pod) {
                services.remove(name);
                if services.is_empty() {
                    self.pod_services.remove(&pod);
                }
            }
        }
    }

    fn link_service(&mut self, name: &str, selector: &BTreeMap<String, String>) {
        if let Some(pair) = Self::selector_pair(selector) {
            self.selector_index
                .entry(pair)
                .or_default()
                .insert(name.to_string());
        }
        let members: BTreeSet<String> = self
            .pods
            .iter()
            .filter(|(_, w)| objects::selector_matches(selector, &w.labels))
            .map(|(pod, _)| pod.clone())
            .collect();
        for pod in &members {
            self.pod_services
                .entry(pod.clone())
                .or_default()
                .insert(name.to_string());
        }
        self.members.insert(name.to_string(), members);
    }
}

/// Incremental Kubernetes-to-model translator.
#[derive(Debug, Default)]
pub struct Translator {
    options: TranslateOptions,
    namespaces: HashMap<String, NamespaceState>,
    nodes: objects::Nodes,
    /// Compiled NetworkPolicies, and the peer groups they refer to.
    compiled: HashMap<NsName, policy::CompiledPolicy>,
    groups: groups::PeerGroups,
    output: HashMap<ResourceKey, Published>,
    /// Pods' names, label sets and ports, each kept once.
    interner: ferry_api::model::Interner,
}

#[derive(Default)]
struct Dirty {
    workloads: BTreeSet<NsName>,
    services: BTreeSet<NsName>,
    nodes: BTreeSet<String>,
    /// Nodes whose zone changed: their pods' services, found once per batch.
    zones: BTreeSet<String>,
    policies: BTreeSet<NsName>,
    /// Peer group shares whose members changed, or that go to other nodes.
    groups: BTreeSet<groups::Share>,
    /// Groups whose users changed or went to other nodes: where the group
    /// is sent is worked out again.
    group_nodes: BTreeSet<String>,
}

impl Translator {
    pub fn new(options: TranslateOptions) -> Self {
        Self {
            options,
            ..Self::default()
        }
    }

    /// Everything currently published.
    pub fn published(&self) -> &HashMap<ResourceKey, Published> {
        &self.output
    }

    /// NetworkPolicies received so far (compiled by the policy translation).
    pub fn policy_count(&self) -> usize {
        self.namespaces.values().map(|n| n.policies.len()).sum()
    }

    /// Distinct policy peers (groups) the policies refer to.
    pub fn peer_group_count(&self) -> usize {
        self.groups.len()
    }

    /// Applies a batch of source events; returns the resources whose content
    /// changed, each once.
    pub fn apply(&mut self, events: impl IntoIterator<Item = SourceEvent>) -> Vec<Change> {
        let mut dirty = Dirty::default();
        // Namespaces something was deleted from: forgotten below if that
        // left them empty (clusters that create and delete namespaces all
        // day would otherwise keep one entry each, and scan them).
        let mut emptied = BTreeSet::new();
        for event in events {
            match event {
                SourceEvent::Apply(object) => self.upsert(object, &mut dirty),
                SourceEvent::Delete(r) => {
                    self.delete(&r, &mut dirty);
                    emptied.insert(match r.kind {
                        ObjectKind::Namespace => r.name,
                        _ => r.namespace,
                    });
                }
            }
        }
        let changes = self.flush(dirty);
        for namespace in emptied {
            if self
                .namespaces
                .get(&namespace)
                .is_some_and(NamespaceState::is_empty)
            {
                self.namespaces.remove(&namespace);
            }
        }
        // Pods that went, or changed labels, leave profiles and names that
        // nothing holds: forgotten once the interner has doubled.
        self.interner.sweep();
        changes
    }

    fn namespace(&mut self, name: &str) -> &mut NamespaceState {
        self.namespaces
            .entry(name.to_string())
            .or_insert_with(|| NamespaceState {
                effective_labels: Some(policy::namespace_labels(name, None)),
                ..NamespaceState::default()
            })
    }

    fn upsert(&mut self, object: K8sObject, dirty: &mut Dirty) {
        let r = object.object_ref();
        match object {
            K8sObject::Namespace(ns) => {
                let labels = ns.metadata.labels.unwrap_or_default();
                self.set_namespace_labels(&r.name, Some(labels), dirty);
            }
            K8sObject::Node(node) => {
                let zone = objects::node_zone(&node).map(str::to_owned);
                let old = self.nodes.insert(r.name.clone(), node);
                if old.as_deref().and_then(objects::node_zone) != zone.as_deref() {
                    dirty.zones.insert(r.name.clone());
                }
                dirty.nodes.insert(r.name);
            }
            K8sObject::Pod(pod) => {
                let ns_labels = self
                    .namespaces
                    .get(&r.namespace)
                    .and_then(|n| n.labels.as_ref());
                let workload =
                    objects::workload(&pod, ns_labels, &self.options, &mut self.interner);
                let ns = self.namespace(&r.namespace);
                if objects::host_network(&pod) {
                    ns.host_network.insert(r.name.clone());
                } else {
                    ns.host_network.remove(&r.name);
                }
                self.set_pod(&r.namespace, &r.name, workload, dirty);
            }
            K8sObject::Service(svc) => self.set_service(&r.namespace, &r.name, Some(svc), dirty),
            K8sObject::EndpointSlice(slice) => {
                self.set_slice(&r.namespace, &r.name, Some(slice), dirty)
            }
            K8sObject::NetworkPolicy(policy) => {
                let key = (r.namespace.clone(), r.name.clone());
                let (compiled, specs) =
                    policy::CompiledPolicy::compile(&policy, self.pod_views_of(&r.namespace));
                // New groups first: a group both versions use is kept.
                for spec in specs {
                    dirty.group_nodes.insert(spec.id.clone());
                    self.groups
                        .acquire(spec, &key, &self.namespaces, &mut dirty.groups);
                }
                if let Some(old) = self.compiled.insert(key.clone(), compiled) {
                    self.release_groups(&key, &old, dirty);
                }
                self.namespace(&r.namespace).policies.insert(r.name, policy);
                dirty.policies.insert(key);
            }
        }
    }

    fn delete(&mut self, r: &ObjectRef, dirty: &mut Dirty) {
        match r.kind {
            ObjectKind::Namespace => self.set_namespace_labels(&r.name, None, dirty),
            ObjectKind::Node => {
                let old = self.nodes.remove(&r.name);
                if old.as_deref().and_then(objects::node_zone).is_some() {
                    dirty.zones.insert(r.name.clone());
                }
                dirty.nodes.insert(r.name.clone());
            }
            ObjectKind::Pod => {
                if let Some(ns) = self.namespaces.get_mut(&r.namespace) {
                    ns.host_network.remove(&r.name);
                }
                self.set_pod(&r.namespace, &r.name, None, dirty);
            }
            ObjectKind::Service => self.set_service(&r.namespace, &r.name, None, dirty),
            ObjectKind::EndpointSlice => self.set_slice(&r.namespace, &r.name, None, dirty),
            ObjectKind::NetworkPolicy => {
                if let Some(ns) = self.namespaces.get_mut(&r.namespace) {
                    ns.policies.remove(&r.name);
                }
                let key = (r.namespace.clone(), r.name.clone());
                if let Some(old) = self.compiled.remove(&key) {
                    self.release_groups(&key, &old, dirty);
                }
                dirty.policies.insert(key);
            }
        }
    }

    /// A node's zone is part of the endpoints derived from its pods: the
    /// selector-based services with a pod on those nodes are translated
    /// again. One scan of the selected pods per batch, whatever the number
    /// of nodes (a first list brings every node at once).
    fn zones_changed(&self, dirty: &mut Dirty) {
        if dirty.zones.is_empty() {
            return;
        }
        for (ns_name, ns) in &self.namespaces {
            for (pod, services) in &ns.pod_services {
                let on_changed = ns
                    .pods
                    .get(pod)
                    .and_then(|w| w.node.as_deref())
                    .is_some_and(|node| dirty.zones.contains(node));
                if on_changed {
                    for service in services {
                        dirty.services.insert((ns_name.clone(), service.clone()));
                    }
                }
            }
        }
    }

    /// A namespace's labels decide mesh membership of its pods.
    fn set_namespace_labels(
        &mut self,
        namespace: &str,
        labels: Option<BTreeMap<String, String>>,
        dirty: &mut Dirty,
    ) {
        let options = self.options.clone();
        let ns = self.namespace(namespace);
        let mesh_of =
            |l: Option<&BTreeMap<String, String>>| l.and_then(|l| l.get(MESH_LABEL)).cloned();
        let mesh_changed = mesh_of(ns.labels.as_ref()) != mesh_of(labels.as_ref());
        let effective = policy::namespace_labels(namespace, labels.as_ref());
        let labels_changed = ns.effective_labels.as_ref() != Some(&effective);
        ns.effective_labels = Some(effective);
        ns.labels = labels;
        if labels_changed {
            self.namespace_labels_changed_for_policies(namespace, dirty);
        }
        let ns = self.namespace(namespace);
        if !mesh_changed {
            return;
        }
        for (pod, w) in ns.pods.iter_mut() {
            let mesh = !ns.host_network.contains(pod)
                && objects::in_mesh(&w.labels, ns.labels.as_ref(), &options);
            if w.mesh != mesh {
                w.mesh = mesh;
                // Endpoints do not carry the mesh flag: services are unaffected.
                dirty.workloads.insert((namespace.to_string(), pod.clone()));
            }
        }
    }

    /// `workload`: `None` for a deletion or a finished pod.
    fn set_pod(
        &mut self,
        namespace: &str,
        name: &str,
        workload: Option<Workload>,
        dirty: &mut Dirty,
    ) {
        let ns = self.namespace(namespace);
        let unchanged = ns.pods.get(name).map(|w| &**w) == workload.as_ref();
        if unchanged {
            return;
        }
        dirty
            .workloads
            .insert((namespace.to_string(), name.to_string()));
        let old_services = ns.pod_services.remove(name).unwrap_or_default();
        let new_services = match &workload {
            Some(w) => ns.selecting(&w.labels),
            None => BTreeSet::new(),
        };
        match workload {
            Some(w) => {
                ns.pods.insert(name.to_string(), Box::new(w));
            }
            None => {
                ns.pods.remove(name);
            }
        }
        for service in old_services.iter().filter(|s| !new_services.contains(*s)) {
            if let Some(members) = ns.members.get_mut(service) {
                members.remove(name);
            }
        }
        for service in &new_services {
            ns.members
                .entry(service.clone())
                .or_default()
                .insert(name.to_string());
        }
        for service in old_services.iter().chain(&new_services) {
            dirty
                .services
                .insert((namespace.to_string(), service.clone()));
        }
        if !new_services.is_empty() {
            ns.pod_services
                .insert(name.to_string(), new_services.into_iter().collect());
        }
        self.pod_changed_for_policies(namespace, name, dirty);
    }

    /// The pods of one namespace, as policy compilation sees them.
    fn pod_views_of<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = policy::PodView<'a>> + 'a {
        self.namespaces
            .get_key_value(namespace)
            .into_iter()
            .flat_map(|(name, ns)| ns.pod_views(name))
    }

    /// A policy changed or went: the groups its old version referred to
    /// lose it as a user (unless the new version still refers to them).
    fn release_groups(&mut self, key: &NsName, old: &policy::CompiledPolicy, dirty: &mut Dirty) {
        let kept: BTreeSet<&str> = self
            .compiled
            .get(key)
            .map(|new| new.group_ids().collect())
            .unwrap_or_default();
        for id in old.group_ids() {
            dirty.group_nodes.insert(id.to_string());
            if !kept.contains(id) {
                self.groups.release(id, key, &mut dirty.groups);
            }
        }
    }

    /// Re-checks one pod against the policies of its namespace (their own
    /// selectors) and the peer groups that could admit it.
    fn pod_changed_for_policies(&mut self, namespace: &str, name: &str, dirty: &mut Dirty) {
        let key = format!("{namespace}/{name}");
        let ns = self.namespaces.get(namespace);
        let view = ns.and_then(|ns| {
            Some(policy::PodView {
                namespace,
                name,
                labels: &ns.pods.get(name)?.labels,
                namespace_labels: ns.effective_labels.as_ref()?,
            })
        });
        if let Some(ns) = ns {
            for policy_name in ns.policies.keys() {
                let policy_key = (namespace.to_string(), policy_name.clone());
                let Some(policy) = self.compiled.get_mut(&policy_key) else {
                    continue;
                };
                // A selected pod's node decides which proxies get the policy.
                let selects = policy.selected.contains(&key);
                if policy.update_pod(&key, view) || selects {
                    dirty.policies.insert(policy_key);
                }
            }
        }
        self.groups
            .update_pod(namespace, name, view, &mut dirty.groups);
    }

    /// Re-checks a namespace's pods against namespaceSelector peers.
    fn namespace_labels_changed_for_policies(&mut self, namespace: &str, dirty: &mut Dirty) {
        if let Some(ns) = self.namespaces.get(namespace) {
            self.groups
                .update_namespace(namespace, ns, &mut dirty.groups);
        }
    }

    fn set_service(
        &mut self,
        namespace: &str,
        name: &str,
        svc: Option<Box<core::Service>>,
        dirty: &mut Dirty,
    ) {
        dirty
            .services
            .insert((namespace.to_string(), name.to_string()));
        let ns = self.namespace(namespace);
        let old_selector = ns
            .services
            .get(name)
            .and_then(|s| objects::service_selector(s))
            .cloned();
        let new_selector = svc.as_deref().and_then(objects::service_selector).cloned();
        let relink = old_selector != new_selector || svc.is_none();
        if relink {
            ns.unlink_service(name, old_selector.as_ref());
        }
        match svc {
            Some(svc) => {
                ns.services.insert(name.to_string(), svc);
                if relink {
                    if let Some(selector) = &new_selector {
                        ns.link_service(name, selector);
                    }
                }
            }
            None => {
                ns.services.remove(name);
            }
        }
    }

    fn slice_service(slice: &EndpointSlice) -> Option<String> {
        slice
            .metadata
            .labels
            .as_ref()?
            .get(SERVICE_NAME_LABEL)
            .cloned()
    }

    fn set_slice(
        &mut self,
        namespace: &str,
        name: &str,
        slice: Option<Box<EndpointSlice>>,
        dirty: &mut Dirty,
    ) {
        let ns = self.namespace(namespace);
        let old = match slice {
            Some(s) => ns.slices.insert(name.to_string(), s),
            None => ns.slices.remove(name),
        };
        let old_service = old.as_deref().and_then(Self::slice_service);
        let new_service = ns.slices.get(name).and_then(|s| Self::slice_service(s));
        if let Some(service) = old_service {
            if let Some(slices) = ns.slices_by_service.get_mut(&service) {
                slices.remove(name);
                if slices.is_empty() {
                    ns.slices_by_service.remove(&service);
                }
            }
            dirty.services.insert((namespace.to_string(), service));
        }
        if let Some(service) = new_service {
            ns.slices_by_service
                .entry(service.clone())
                .or_default()
                .insert(name.to_string());
            dirty.services.insert((namespace.to_string(), service));
        }
    }

    fn translate_service(&self, namespace: &str, name: &str) -> Option<ferry_api::model::Service> {
        let ns = self.namespaces.get(namespace)?;
        let svc = ns.services.get(name)?;
        let slices: Vec<&EndpointSlice> = ns
            .slices_by_service
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|slice| ns.slices.get(slice).map(|s| &**s))
            .collect();
        let backends = if !slices.is_empty() {
            objects::Backends::Slices(slices)
        } else if let Some(members) = ns.members.get(name).filter(|m| !m.is_empty()) {
            objects::Backends::Workloads(
                members
                    .iter()
                    .filter_map(|pod| ns.pods.get(pod).map(|w| &**w))
                    .collect(),
                &self.nodes,
            )
        } else {
            objects::Backends::None
        };
        Some(objects::service(svc, backends, &self.options))
    }

    fn flush(&mut self, mut dirty: Dirty) -> Vec<Change> {
        self.zones_changed(&mut dirty);
        let mut changes = Vec::new();
        for key in dirty.nodes {
            let body = self
                .nodes
                .get(&key)
                .map(|n| ResourceBody::Node(Box::new(objects::node(n, &self.options))));
            self.publish(ResourceKey::new(Kind::Node, key), body, &mut changes);
        }
        for key in dirty.workloads {
            let body = self
                .namespaces
                .get(&key.0)
                .and_then(|ns| ns.pods.get(&key.1))
                .map(|w| ResourceBody::Workload(Workload::clone(w)));
            self.publish(
                ResourceKey::new(Kind::Workload, format!("{}/{}", key.0, key.1)),
                body,
                &mut changes,
            );
        }
        for key in dirty.services {
            let body = self
                .translate_service(&key.0, &key.1)
                .map(|s| ResourceBody::Service(Box::new(s)));
            self.publish(
                ResourceKey::new(Kind::Service, format!("{}/{}", key.0, key.1)),
                body,
                &mut changes,
            );
        }
        for key in std::mem::take(&mut dirty.policies) {
            let resource_key = ResourceKey::new(Kind::Policy, format!("{}/{}", key.0, key.1));
            let Some(compiled) = self.compiled.get_mut(&key) else {
                self.publish_scoped(resource_key, None, Scope::AllNodes, &mut changes);
                continue;
            };
            // Enforced where the selected pods run: ingress on the
            // destination's node, egress on the source's.
            let namespaces = &self.namespaces;
            let nodes: BTreeSet<String> = compiled
                .selected
                .iter()
                .filter_map(|w| {
                    let (ns, pod) = w.split_once('/')?;
                    Some(
                        namespaces
                            .get(ns)?
                            .pods
                            .get(pod)?
                            .node
                            .as_deref()?
                            .to_string(),
                    )
                })
                .collect();
            if nodes != compiled.nodes {
                // Its groups go where the policy goes.
                dirty
                    .group_nodes
                    .extend(compiled.group_ids().map(str::to_owned));
                compiled.nodes = nodes.clone();
            }
            let body = ResourceBody::Policy(Box::new(compiled.to_model()));
            self.publish_scoped(
                resource_key,
                Some(body),
                Scope::Nodes(Arc::new(nodes)),
                &mut changes,
            );
        }
        for id in std::mem::take(&mut dirty.group_nodes) {
            let nodes: BTreeSet<String> = self
                .groups
                .users(&id)
                .filter_map(|user| self.compiled.get(user))
                .flat_map(|policy| policy.nodes.iter().cloned())
                .collect();
            self.groups.set_nodes(&id, nodes, &mut dirty.groups);
        }
        for (namespace, id) in std::mem::take(&mut dirty.groups) {
            let key = ResourceKey::new(Kind::PeerGroup, format!("{namespace}/{id}"));
            match self.groups.share(&namespace, &id) {
                Some((group, nodes)) => {
                    let scope = Scope::Nodes(Arc::new(nodes.clone()));
                    let body = ResourceBody::PeerGroup(Box::new(group));
                    self.publish_scoped(key, Some(body), scope, &mut changes);
                }
                None => self.publish_scoped(key, None, Scope::AllNodes, &mut changes),
            }
        }
        changes
    }

    fn publish(&mut self, key: ResourceKey, body: Option<ResourceBody>, changes: &mut Vec<Change>) {
        self.publish_scoped(key, body, Scope::AllNodes, changes);
    }

    fn publish_scoped(
        &mut self,
        key: ResourceKey,
        body: Option<ResourceBody>,
        scope: Scope,
        changes: &mut Vec<Change>,
    ) {
        match body {
            Some(body) => {
                let resource = VersionedResource::encode(&body);
                let current = self.output.get(&key);
                if current.is_some_and(|p| p.version() == resource.version && p.scope == scope) {
                    return;
                }
                let published = Published::new(&resource, scope);
                self.output.insert(key.clone(), published.clone());
                changes.push(Change::Upsert(key, published));
            }
            None => {
                if self.output.remove(&key).is_some() {
                    changes.push(Change::Remove(key));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
