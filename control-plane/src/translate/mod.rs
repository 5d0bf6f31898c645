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

pub mod objects;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use ferry_api::proto;
use ferry_api::{Kind, ResourceBody, ResourceKey, VersionedResource};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;

pub use objects::{TranslateOptions, MESH_LABEL};

use crate::source::{K8sObject, ObjectKind, ObjectRef, SourceEvent};
use crate::validate::SERVICE_NAME_LABEL;

/// Which proxies receive a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every proxy (services, workloads and nodes are needed for outbound).
    AllNodes,
    /// Only the proxies of these nodes.
    Nodes(BTreeSet<String>),
}

impl Scope {
    pub fn includes(&self, node: &str) -> bool {
        match self {
            Scope::AllNodes => true,
            Scope::Nodes(nodes) => nodes.contains(node),
        }
    }
}

/// A translated resource, encoded for the wire.
#[derive(Debug, Clone)]
pub struct Published {
    pub resource: Arc<proto::Resource>,
    pub scope: Scope,
}

impl Published {
    pub fn version(&self) -> u64 {
        self.resource.version
    }
}

/// A change to the published configuration.
#[derive(Debug, Clone)]
pub enum Change {
    Upsert(ResourceKey, Published),
    Remove(ResourceKey),
}

type NsName = (String, String);

fn ns_name(r: &ObjectRef) -> NsName {
    (r.namespace.clone(), r.name.clone())
}

/// Incremental Kubernetes-to-model translator.
#[derive(Debug, Default)]
pub struct Translator {
    options: TranslateOptions,
    namespace_labels: HashMap<String, BTreeMap<String, String>>,
    /// Pods, already translated (the only pod fields translation needs).
    workloads: HashMap<NsName, model_workload::Entry>,
    pods_by_namespace: HashMap<String, BTreeSet<String>>,
    services: HashMap<NsName, core::Service>,
    services_by_namespace: HashMap<String, BTreeSet<String>>,
    /// Pods selected by each selector-based service.
    members: HashMap<NsName, BTreeSet<String>>,
    slices: HashMap<NsName, EndpointSlice>,
    slices_by_service: HashMap<NsName, BTreeSet<String>>,
    nodes: HashMap<String, core::Node>,
    policies: HashMap<NsName, NetworkPolicy>,
    output: HashMap<ResourceKey, Published>,
}

mod model_workload {
    /// A translated pod. `None` when the pod has finished: it is kept for its
    /// labels' sake but is nobody's backend.
    pub type Entry = Option<ferry_api::model::Workload>;
}

#[derive(Default)]
struct Dirty {
    workloads: BTreeSet<NsName>,
    services: BTreeSet<NsName>,
    nodes: BTreeSet<String>,
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
        self.policies.len()
    }

    /// Applies a batch of source events; returns the resources whose content
    /// changed, each once.
    pub fn apply(&mut self, events: impl IntoIterator<Item = SourceEvent>) -> Vec<Change> {
        let mut dirty = Dirty::default();
        for event in events {
            match event {
                SourceEvent::Apply(object) => self.upsert(object, &mut dirty),
                SourceEvent::Delete(r) => self.delete(&r, &mut dirty),
            }
        }
        self.flush(dirty)
    }

    fn upsert(&mut self, object: K8sObject, dirty: &mut Dirty) {
        let r = object.object_ref();
        match object {
            K8sObject::Namespace(ns) => {
                let labels = ns.metadata.labels.unwrap_or_default();
                let old = self.namespace_labels.insert(r.name.clone(), labels.clone());
                self.namespace_changed(&r.name, old.as_ref(), Some(&labels), dirty);
            }
            K8sObject::Node(node) => {
                self.nodes.insert(r.name.clone(), node);
                dirty.nodes.insert(r.name);
            }
            K8sObject::Pod(pod) => {
                let ns_labels = self.namespace_labels.get(&r.namespace);
                let workload = objects::workload(&pod, ns_labels, &self.options);
                self.set_pod(ns_name(&r), Some(workload), dirty);
            }
            K8sObject::Service(svc) => self.set_service(ns_name(&r), Some(svc), dirty),
            K8sObject::EndpointSlice(slice) => self.set_slice(ns_name(&r), Some(slice), dirty),
            K8sObject::NetworkPolicy(policy) => {
                self.policies.insert(ns_name(&r), policy);
            }
        }
    }

    fn delete(&mut self, r: &ObjectRef, dirty: &mut Dirty) {
        match r.kind {
            ObjectKind::Namespace => {
                let old = self.namespace_labels.remove(&r.name);
                self.namespace_changed(&r.name, old.as_ref(), None, dirty);
            }
            ObjectKind::Node => {
                self.nodes.remove(&r.name);
                dirty.nodes.insert(r.name.clone());
            }
            ObjectKind::Pod => self.set_pod(ns_name(r), None, dirty),
            ObjectKind::Service => self.set_service(ns_name(r), None, dirty),
            ObjectKind::EndpointSlice => self.set_slice(ns_name(r), None, dirty),
            ObjectKind::NetworkPolicy => {
                self.policies.remove(&ns_name(r));
            }
        }
    }

    /// A namespace's labels decide mesh membership of its pods.
    fn namespace_changed(
        &mut self,
        namespace: &str,
        old: Option<&BTreeMap<String, String>>,
        new: Option<&BTreeMap<String, String>>,
        dirty: &mut Dirty,
    ) {
        let mesh_of = |l: Option<&BTreeMap<String, String>>| l.and_then(|l| l.get(MESH_LABEL)).cloned();
        if mesh_of(old) == mesh_of(new) {
            return;
        }
        let pods = self.pods_by_namespace.get(namespace).cloned().unwrap_or_default();
        for pod in pods {
            let key = (namespace.to_string(), pod);
            if let Some(Some(w)) = self.workloads.get_mut(&key) {
                w.mesh = objects::in_mesh(&w.labels, new, &self.options);
                dirty.workloads.insert(key.clone());
                // Endpoints do not carry the mesh flag: services are unaffected.
            }
        }
    }

    /// `pod`: `None` for a deletion, `Some(None)` for a finished pod.
    fn set_pod(&mut self, key: NsName, pod: Option<model_workload::Entry>, dirty: &mut Dirty) {
        let old = match pod {
            Some(entry) => {
                self.pods_by_namespace.entry(key.0.clone()).or_default().insert(key.1.clone());
                self.workloads.insert(key.clone(), entry)
            }
            None => {
                if let Some(pods) = self.pods_by_namespace.get_mut(&key.0) {
                    pods.remove(&key.1);
                }
                self.workloads.remove(&key)
            }
        };
        let new = self.workloads.get(&key);
        let changed = old.as_ref() != new;
        if !changed {
            return;
        }
        dirty.workloads.insert(key.clone());
        let new_labels = new.and_then(|w| w.as_ref()).map(|w| &w.labels);
        let services = self.services_by_namespace.get(&key.0).cloned().unwrap_or_default();
        for service in services {
            let skey = (key.0.clone(), service);
            let Some(selector) = self.services.get(&skey).and_then(objects::service_selector) else {
                continue;
            };
            // A finished pod keeps its labels but is no backend.
            let selects = new_labels.is_some_and(|l| objects::selector_matches(selector, l));
            let members = self.members.entry(skey.clone()).or_default();
            let was_member = if selects {
                !members.insert(key.1.clone())
            } else {
                members.remove(&key.1)
            };
            if selects || was_member {
                dirty.services.insert(skey);
            }
        }
    }

    fn set_service(&mut self, key: NsName, svc: Option<core::Service>, dirty: &mut Dirty) {
        dirty.services.insert(key.clone());
        let Some(svc) = svc else {
            self.services.remove(&key);
            self.members.remove(&key);
            if let Some(names) = self.services_by_namespace.get_mut(&key.0) {
                names.remove(&key.1);
            }
            return;
        };
        let old_selector = self.services.get(&key).and_then(objects::service_selector).cloned();
        let new_selector = objects::service_selector(&svc).cloned();
        self.services_by_namespace.entry(key.0.clone()).or_default().insert(key.1.clone());
        if old_selector != new_selector || !self.members.contains_key(&key) {
            let members: BTreeSet<String> = match &new_selector {
                None => BTreeSet::new(),
                Some(selector) => self
                    .pods_by_namespace
                    .get(&key.0)
                    .into_iter()
                    .flatten()
                    .filter(|pod| {
                        self.workloads
                            .get(&(key.0.clone(), (*pod).clone()))
                            .and_then(|w| w.as_ref())
                            .is_some_and(|w| objects::selector_matches(selector, &w.labels))
                    })
                    .cloned()
                    .collect(),
            };
            self.members.insert(key.clone(), members);
        }
        self.services.insert(key, svc);
    }

    fn slice_service(slice: &EndpointSlice) -> Option<String> {
        slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL).cloned()
    }

    fn set_slice(&mut self, key: NsName, slice: Option<EndpointSlice>, dirty: &mut Dirty) {
        let old = match slice {
            Some(s) => self.slices.insert(key.clone(), s),
            None => self.slices.remove(&key),
        };
        let old_service = old.as_ref().and_then(Self::slice_service);
        let new_service = self.slices.get(&key).and_then(Self::slice_service);
        if let Some(service) = old_service {
            let skey = (key.0.clone(), service);
            if let Some(slices) = self.slices_by_service.get_mut(&skey) {
                slices.remove(&key.1);
                if slices.is_empty() {
                    self.slices_by_service.remove(&skey);
                }
            }
            dirty.services.insert(skey);
        }
        if let Some(service) = new_service {
            let skey = (key.0.clone(), service);
            self.slices_by_service.entry(skey.clone()).or_default().insert(key.1.clone());
            dirty.services.insert(skey);
        }
    }

    fn translate_service(&self, key: &NsName) -> Option<ferry_api::model::Service> {
        let svc = self.services.get(key)?;
        let slices: Vec<&EndpointSlice> = self
            .slices_by_service
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|name| self.slices.get(&(key.0.clone(), name.clone())))
            .collect();
        let backends = if !slices.is_empty() {
            objects::Backends::Slices(slices)
        } else if let Some(members) = self.members.get(key).filter(|m| !m.is_empty()) {
            objects::Backends::Workloads(
                members
                    .iter()
                    .filter_map(|pod| self.workloads.get(&(key.0.clone(), pod.clone()))?.as_ref())
                    .collect(),
            )
        } else {
            objects::Backends::None
        };
        Some(objects::service(svc, backends, &self.options))
    }

    fn flush(&mut self, dirty: Dirty) -> Vec<Change> {
        let mut changes = Vec::new();
        for key in dirty.nodes {
            let body = self
                .nodes
                .get(&key)
                .map(|n| ResourceBody::Node(objects::node(n, &self.options)));
            self.publish(ResourceKey::new(Kind::Node, key), body, &mut changes);
        }
        for key in dirty.workloads {
            let body = self
                .workloads
                .get(&key)
                .and_then(|w| w.clone())
                .map(ResourceBody::Workload);
            self.publish(ResourceKey::new(Kind::Workload, format!("{}/{}", key.0, key.1)), body, &mut changes);
        }
        for key in dirty.services {
            let body = self.translate_service(&key).map(ResourceBody::Service);
            self.publish(ResourceKey::new(Kind::Service, format!("{}/{}", key.0, key.1)), body, &mut changes);
        }
        changes
    }

    fn publish(&mut self, key: ResourceKey, body: Option<ResourceBody>, changes: &mut Vec<Change>) {
        match body {
            Some(body) => {
                let resource = VersionedResource::encode(&body);
                if self.output.get(&key).map(Published::version) == Some(resource.version) {
                    return;
                }
                let published = Published {
                    resource: Arc::new(resource),
                    scope: Scope::AllNodes,
                };
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
