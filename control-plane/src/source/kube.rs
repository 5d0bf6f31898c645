//! The Kubernetes API as a source: one kube-rs watcher per kind (Services,
//! EndpointSlices, Pods, Namespaces, Nodes, NetworkPolicies), feeding the
//! same [`SourceEvent`]s as the manifest folder.
//!
//! List/watch is kube-rs's `watcher`: an initial list, a watch from its
//! resourceVersion, bookmarks, a relist after `410 Gone`, and reconnects
//! with backoff. On top of it this source keeps, per object, only its
//! resourceVersion, so that
//!
//! - a relist re-announces nothing that did not change (no duplicated
//!   update), and reports as deleted whatever the relist no longer holds
//!   (no lost delete, even when the delete happened while disconnected);
//! - the first batch is sent once every kind has been listed, so the
//!   control plane never serves a partial cluster.
//!
//! Objects are trimmed as they arrive ([`trim`]): only the fields the
//! translation reads are kept, which is what keeps memory low on large
//! clusters (managed fields, annotations, container specs beyond ports,
//! node images and conditions are dropped before anything is stored).
//! Objects failing validation are logged and skipped; the last good
//! version stays in force.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Namespace, Node, NodeStatus, Pod, PodSpec, PodStatus, Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::{K8sObject, ObjectKind, ObjectRef, SourceEvent};

/// How long to gather changes into one batch after the first.
const BATCH_WINDOW: Duration = Duration::from_millis(50);
/// At most this many changes in one batch.
const BATCH_MAX: usize = 2_000;

/// The Kubernetes API source.
#[derive(Clone)]
pub struct KubeSource {
    client: Client,
    batching: Batching,
}

/// How watch events are gathered into batches for translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Events arriving within this window go into one batch...
    pub window: Duration,
    /// ...of at most this many.
    pub max: usize,
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            window: BATCH_WINDOW,
            max: BATCH_MAX,
        }
    }
}

impl Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource").finish_non_exhaustive()
    }
}

/// One watcher's output, typed as the source's objects.
type Observed = (ObjectKind, Result<Event<K8sObject>, watcher::Error>);

fn watch_kind<K>(client: &Client, kind: ObjectKind) -> impl Stream<Item = Observed> + Send
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + 'static,
    K8sObject: From<K>,
{
    let api: Api<K> = Api::all(client.clone());
    watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .map(move |event| {
            let event = event.map(|e| match e {
                Event::Apply(o) => Event::Apply(trimmed(o)),
                Event::Delete(o) => Event::Delete(trimmed(o)),
                Event::Init => Event::Init,
                Event::InitApply(o) => Event::InitApply(trimmed(o)),
                Event::InitDone => Event::InitDone,
            });
            (kind, event)
        })
}

fn trimmed<K>(object: K) -> K8sObject
where
    K8sObject: From<K>,
{
    let mut object = K8sObject::from(object);
    trim(&mut object);
    object
}

const KINDS: [ObjectKind; 6] = [
    ObjectKind::Namespace,
    ObjectKind::Node,
    ObjectKind::Pod,
    ObjectKind::Service,
    ObjectKind::EndpointSlice,
    ObjectKind::NetworkPolicy,
];

impl KubeSource {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            batching: Batching::default(),
        }
    }

    /// Gathers events into batches as `batching` says.
    pub fn with_batching(mut self, batching: Batching) -> Self {
        self.batching = Batching {
            max: batching.max.max(1),
            ..batching
        };
        self
    }

    /// Watches until `events` is closed. The first batch (sent even when
    /// empty) holds the whole cluster; later batches hold changes.
    pub async fn watch(self, events: mpsc::Sender<Vec<SourceEvent>>) {
        let c = &self.client;
        let mut streams = futures::stream::select_all([
            watch_kind::<Namespace>(c, ObjectKind::Namespace).boxed(),
            watch_kind::<Node>(c, ObjectKind::Node).boxed(),
            watch_kind::<Pod>(c, ObjectKind::Pod).boxed(),
            watch_kind::<Service>(c, ObjectKind::Service).boxed(),
            watch_kind::<EndpointSlice>(c, ObjectKind::EndpointSlice).boxed(),
            watch_kind::<NetworkPolicy>(c, ObjectKind::NetworkPolicy).boxed(),
        ]);
        let mut state = Tracker::default();
        let mut batch = Vec::new();
        // The initial load: every kind listed once.
        while state.listed.len() < KINDS.len() {
            tokio::select! {
                next = streams.next() => match next {
                    Some(observed) => state.observe(observed, &mut batch),
                    None => return,
                },
                _ = events.closed() => return,
            }
        }
        tracing::info!(objects = state.known.len(), "cluster listed");
        if events.send(std::mem::take(&mut batch)).await.is_err() {
            return;
        }
        loop {
            // Wait for a change, then gather what follows it closely.
            let first = tokio::select! {
                next = streams.next() => next,
                _ = events.closed() => return,
            };
            let Some(observed) = first else { return };
            state.observe(observed, &mut batch);
            let deadline = tokio::time::sleep(self.batching.window);
            tokio::pin!(deadline);
            while batch.len() < self.batching.max {
                tokio::select! {
                    next = streams.next() => match next {
                        Some(observed) => state.observe(observed, &mut batch),
                        None => break,
                    },
                    _ = &mut deadline => break,
                }
            }
            if !batch.is_empty() && events.send(std::mem::take(&mut batch)).await.is_err() {
                return;
            }
        }
    }
}

/// What the source has announced: each object's resourceVersion.
#[derive(Debug, Default)]
struct Tracker {
    known: HashMap<ObjectRef, String>,
    /// Objects seen by a relist in progress, per kind.
    relisting: HashMap<ObjectKind, HashSet<ObjectRef>>,
    /// Kinds listed at least once.
    listed: HashSet<ObjectKind>,
}

impl Tracker {
    fn observe(&mut self, (kind, event): Observed, out: &mut Vec<SourceEvent>) {
        match event {
            Err(e) => {
                tracing::warn!(kind = kind.as_str(), error = %e, "watch failed; retrying with backoff");
            }
            Ok(Event::Init) => {
                self.relisting.insert(kind, HashSet::new());
            }
            Ok(Event::InitApply(object)) => {
                let r = object.object_ref();
                if let Some(seen) = self.relisting.get_mut(&kind) {
                    seen.insert(r);
                }
                self.apply(object, out);
            }
            Ok(Event::InitDone) => {
                let seen = self.relisting.remove(&kind).unwrap_or_default();
                let gone: Vec<ObjectRef> = self
                    .known
                    .keys()
                    .filter(|r| r.kind == kind && !seen.contains(r))
                    .cloned()
                    .collect();
                for r in gone {
                    self.known.remove(&r);
                    out.push(SourceEvent::Delete(r));
                }
                if self.listed.insert(kind) {
                    tracing::debug!(kind = kind.as_str(), "listed");
                } else {
                    tracing::info!(kind = kind.as_str(), "relisted");
                }
            }
            Ok(Event::Apply(object)) => self.apply(object, out),
            Ok(Event::Delete(object)) => {
                let r = object.object_ref();
                if self.known.remove(&r).is_some() {
                    out.push(SourceEvent::Delete(r));
                }
            }
        }
    }

    fn apply(&mut self, object: K8sObject, out: &mut Vec<SourceEvent>) {
        let r = object.object_ref();
        let version = meta(&object).resource_version.clone().unwrap_or_default();
        if !version.is_empty() && self.known.get(&r) == Some(&version) {
            return;
        }
        let problems = super::validate::validate(&object);
        if !problems.is_empty() {
            for p in &problems {
                tracing::warn!(object = %r, field = %p.field, message = %p.message, "object rejected; the last good version is kept");
            }
            return;
        }
        self.known.insert(r, version);
        out.push(SourceEvent::Apply(object));
    }
}

fn meta(object: &K8sObject) -> &ObjectMeta {
    match object {
        K8sObject::Namespace(o) => &o.metadata,
        K8sObject::Node(o) => &o.metadata,
        K8sObject::Pod(o) => &o.metadata,
        K8sObject::Service(o) => &o.metadata,
        K8sObject::EndpointSlice(o) => &o.metadata,
        K8sObject::NetworkPolicy(o) => &o.metadata,
    }
}

/// Keeps only the metadata the translation and the tracker read.
fn trim_meta(meta: &mut ObjectMeta) {
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        uid: meta.uid.take(),
        resource_version: meta.resource_version.take(),
        labels: meta.labels.take(),
        deletion_timestamp: meta.deletion_timestamp.take(),
        // The controlling owner names a pod's workload in telemetry.
        owner_references: meta
            .owner_references
            .take()
            .map(|owners| {
                owners
                    .into_iter()
                    .filter(|o| o.controller == Some(true))
                    .collect::<Vec<_>>()
            })
            .filter(|owners| !owners.is_empty()),
        ..ObjectMeta::default()
    };
}

/// Drops every field the translation does not read.
pub fn trim(object: &mut K8sObject) {
    match object {
        K8sObject::Pod(pod) => {
            trim_meta(&mut pod.metadata);
            if let Some(spec) = pod.spec.take() {
                pod.spec = Some(PodSpec {
                    node_name: spec.node_name,
                    service_account_name: spec.service_account_name,
                    host_network: spec.host_network,
                    hostname: spec.hostname,
                    subdomain: spec.subdomain,
                    containers: spec
                        .containers
                        .into_iter()
                        .filter(|c| c.ports.as_ref().is_some_and(|p| !p.is_empty()))
                        .map(|c| Container {
                            name: c.name,
                            ports: c.ports.map(|ports| {
                                ports
                                    .into_iter()
                                    .map(|p| ContainerPort {
                                        name: p.name,
                                        container_port: p.container_port,
                                        protocol: p.protocol,
                                        ..ContainerPort::default()
                                    })
                                    .collect()
                            }),
                            ..Container::default()
                        })
                        .collect(),
                    ..PodSpec::default()
                });
            }
            if let Some(status) = pod.status.take() {
                pod.status = Some(PodStatus {
                    phase: status.phase,
                    pod_ip: status.pod_ip,
                    pod_ips: status.pod_ips,
                    conditions: status
                        .conditions
                        .map(|c| c.into_iter().filter(|c| c.type_ == "Ready").collect()),
                    ..PodStatus::default()
                });
            }
        }
        K8sObject::Node(node) => {
            trim_meta(&mut node.metadata);
            node.spec = None;
            if let Some(status) = node.status.take() {
                node.status = Some(NodeStatus {
                    addresses: status.addresses,
                    ..NodeStatus::default()
                });
            }
        }
        K8sObject::Namespace(ns) => {
            trim_meta(&mut ns.metadata);
            ns.spec = None;
            ns.status = None;
        }
        K8sObject::Service(svc) => {
            trim_meta(&mut svc.metadata);
            if let Some(status) = svc.status.as_mut() {
                status.conditions = None;
            }
        }
        K8sObject::EndpointSlice(slice) => trim_meta(&mut slice.metadata),
        K8sObject::NetworkPolicy(policy) => trim_meta(&mut policy.metadata),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::{TranslateOptions, Translator};

    /// The example objects as written (the manifest source would trim them).
    fn examples() -> Vec<SourceEvent> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        files
            .iter()
            .flat_map(|path| {
                let parsed = crate::source::manifests::parse_manifest(
                    path,
                    &std::fs::read_to_string(path).unwrap(),
                );
                assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
                parsed.objects
            })
            .map(SourceEvent::Apply)
            .collect()
    }

    #[test]
    fn trimming_changes_nothing_the_translation_produces() {
        let mut full = examples();
        // Pods of a Deployment, as on a cluster: their workload is named
        // after it.
        for e in &mut full {
            if let SourceEvent::Apply(K8sObject::Pod(p)) = e {
                p.metadata.owner_references = Some(vec![
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                        api_version: "apps/v1".into(),
                        kind: "ReplicaSet".into(),
                        name: "shop-7d4b9c8f6d".into(),
                        uid: "u".into(),
                        controller: Some(true),
                        block_owner_deletion: Some(true),
                    },
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                        api_version: "v1".into(),
                        kind: "ConfigMap".into(),
                        name: "not-a-controller".into(),
                        uid: "c".into(),
                        controller: None,
                        block_owner_deletion: None,
                    },
                ]);
                p.metadata
                    .labels
                    .get_or_insert_with(Default::default)
                    .insert("pod-template-hash".into(), "7d4b9c8f6d".into());
            }
        }
        let mut trimmed = full.clone();
        for e in &mut trimmed {
            if let SourceEvent::Apply(o) = e {
                // Noise a real API server adds, which trimming must drop.
                if let K8sObject::Pod(p) = o {
                    p.metadata.annotations = Some(
                        [("kubectl.kubernetes.io/restartedAt".to_string(), "x".into())].into(),
                    );
                    if let Some(spec) = p.spec.as_mut() {
                        spec.containers.push(Container {
                            name: "sidecar-without-ports".into(),
                            image: Some("busybox".into()),
                            ..Container::default()
                        });
                    }
                }
                trim(o);
            }
        }
        let translate = |events: Vec<SourceEvent>| {
            let mut t = Translator::new(TranslateOptions::default());
            let mut out: Vec<String> = t
                .apply(events)
                .into_iter()
                .map(|c| format!("{c:?}"))
                .collect();
            out.sort();
            out
        };
        assert_eq!(translate(full), translate(trimmed));
    }

    #[test]
    fn trimming_drops_what_a_pod_does_not_need() {
        let mut pod = Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                annotations: Some([("a".to_string(), "b".to_string())].into()),
                managed_fields: Some(vec![Default::default()]),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    image: Some("nginx".into()),
                    command: Some(vec!["nginx".into()]),
                    ports: Some(vec![ContainerPort {
                        name: Some("http".into()),
                        container_port: 80,
                        host_ip: Some("0.0.0.0".into()),
                        ..ContainerPort::default()
                    }]),
                    ..Container::default()
                }],
                volumes: Some(vec![Default::default()]),
                ..PodSpec::default()
            }),
            ..Pod::default()
        };
        let mut object = K8sObject::from(pod.clone());
        trim(&mut object);
        let K8sObject::Pod(trimmed) = object else {
            unreachable!()
        };
        assert!(trimmed.metadata.annotations.is_none());
        assert!(trimmed.metadata.managed_fields.is_none());
        let spec = trimmed.spec.as_ref().unwrap();
        assert!(spec.volumes.is_none());
        assert_eq!(spec.containers[0].image, None);
        assert_eq!(spec.containers[0].command, None);
        let port = &spec.containers[0].ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.container_port),
            (Some("http"), 80)
        );
        assert_eq!(port.host_ip, None);
        // Smaller, as its JSON shows, even for this small pod.
        pod.metadata.name = Some("web".into());
        let before = serde_json::to_vec(&pod).unwrap().len();
        let after = serde_json::to_vec(&*trimmed).unwrap().len();
        assert!(after * 3 < before * 2, "{before} -> {after}");
    }

    fn pod(name: &str, version: &str) -> K8sObject {
        K8sObject::from(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        })
    }

    fn names(events: &[SourceEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                SourceEvent::Apply(o) => format!("apply {}", o.object_ref()),
                SourceEvent::Delete(r) => format!("delete {r}"),
            })
            .collect()
    }

    #[test]
    fn a_relist_announces_only_what_changed_and_what_is_gone() {
        let mut t = Tracker::default();
        let mut out = Vec::new();
        let kind = ObjectKind::Pod;
        for event in [
            Event::Init,
            Event::InitApply(pod("a", "1")),
            Event::InitApply(pod("b", "2")),
            Event::InitApply(pod("c", "3")),
            Event::InitDone,
        ] {
            t.observe((kind, Ok(event)), &mut out);
        }
        assert_eq!(out.len(), 3);
        assert!(t.listed.contains(&kind));
        out.clear();
        // A watch event, then a duplicate of it (the same resourceVersion).
        t.observe((kind, Ok(Event::Apply(pod("a", "4")))), &mut out);
        t.observe((kind, Ok(Event::Apply(pod("a", "4")))), &mut out);
        assert_eq!(names(&out), ["apply Pod shop/a"]);
        out.clear();
        // 410 Gone: relist. b changed, c was deleted while disconnected,
        // d is new, a is unchanged.
        for event in [
            Event::Init,
            Event::InitApply(pod("a", "4")),
            Event::InitApply(pod("b", "5")),
            Event::InitApply(pod("d", "6")),
            Event::InitDone,
        ] {
            t.observe((kind, Ok(event)), &mut out);
        }
        assert_eq!(
            names(&out),
            ["apply Pod shop/b", "apply Pod shop/d", "delete Pod shop/c"]
        );
        // A delete of something unknown is not reported.
        out.clear();
        t.observe((kind, Ok(Event::Delete(pod("zz", "9")))), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn an_invalid_object_keeps_the_last_good_version() {
        let mut t = Tracker::default();
        let mut out = Vec::new();
        t.observe((ObjectKind::Pod, Ok(Event::Apply(pod("a", "1")))), &mut out);
        let mut bad = pod("a", "2");
        if let K8sObject::Pod(p) = &mut bad {
            p.status = Some(PodStatus {
                pod_ip: Some("not-an-ip".into()),
                ..PodStatus::default()
            });
        }
        t.observe((ObjectKind::Pod, Ok(Event::Apply(bad))), &mut out);
        assert_eq!(out.len(), 1, "the bad version is not announced");
        assert_eq!(t.known[&pod("a", "1").object_ref()], "1");
    }
}
