//! The proxy's configuration store: one writer (the config client), many
//! readers (every connection).
//!
//! The current [`ProxyState`] sits behind an [`ArcSwap`]: a reader takes a
//! snapshot with one atomic load and no lock, and keeps a consistent view for
//! as long as it holds it. The writer builds the next state from the current
//! one (persistent maps: cloning is O(1), an update O(log n)) and publishes
//! it with one atomic store, so a delta is applied all at once or not at all.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use ferry_api::model::{Node, Policy, Service, Workload};
use ferry_api::proto::{DeltaResponse, ResourceVersion};
use ferry_api::{Kind, ResourceBody, ResourceError, ResourceKey, VersionedResource};
use serde::Serialize;

type Entry = Arc<VersionedResource>;

/// An immutable view of the configuration.
#[derive(Debug, Clone, Default)]
pub struct ProxyState {
    revision: u64,
    resources: imbl::HashMap<ResourceKey, Entry>,
    workloads_by_ip: imbl::HashMap<IpAddr, Entry>,
    services_by_ip: imbl::HashMap<IpAddr, Entry>,
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

    pub fn get(&self, key: &ResourceKey) -> Option<&VersionedResource> {
        self.resources.get(key).map(|e| e.as_ref())
    }

    /// Every resource (unordered).
    pub fn iter(&self) -> impl Iterator<Item = &VersionedResource> {
        self.resources.values().map(|e| e.as_ref())
    }

    /// The workload that owns a pod IP.
    pub fn workload_by_ip(&self, ip: &IpAddr) -> Option<&Workload> {
        match &self.workloads_by_ip.get(ip)?.body {
            ResourceBody::Workload(w) => Some(w),
            _ => None,
        }
    }

    /// The service with this cluster, load-balancer or external IP.
    pub fn service_by_ip(&self, ip: &IpAddr) -> Option<&Service> {
        match &self.services_by_ip.get(ip)?.body {
            ResourceBody::Service(s) => Some(s),
            _ => None,
        }
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        match &self.get(&ResourceKey::new(Kind::Node, name))?.body {
            ResourceBody::Node(n) => Some(n),
            _ => None,
        }
    }

    pub fn service(&self, namespace_name: &str) -> Option<&Service> {
        match &self
            .get(&ResourceKey::new(Kind::Service, namespace_name))?
            .body
        {
            ResourceBody::Service(s) => Some(s),
            _ => None,
        }
    }

    pub fn workload(&self, namespace_name: &str) -> Option<&Workload> {
        match &self
            .get(&ResourceKey::new(Kind::Workload, namespace_name))?
            .body
        {
            ResourceBody::Workload(w) => Some(w),
            _ => None,
        }
    }

    pub fn policy(&self, namespace_name: &str) -> Option<&Policy> {
        match &self
            .get(&ResourceKey::new(Kind::Policy, namespace_name))?
            .body
        {
            ResourceBody::Policy(p) => Some(p),
            _ => None,
        }
    }

    /// What this state holds, for resuming a stream.
    pub fn versions(&self) -> Vec<ResourceVersion> {
        self.resources
            .values()
            .map(|e| ResourceVersion {
                key: Some(e.key.to_proto()),
                version: e.version,
            })
            .collect()
    }

    fn index_ips(body: &ResourceBody) -> (bool, Vec<IpAddr>) {
        match body {
            ResourceBody::Workload(w) => (true, w.addresses.clone()),
            ResourceBody::Service(s) => (
                false,
                s.cluster_ips
                    .iter()
                    .chain(&s.load_balancer_ips)
                    .chain(&s.external_ips)
                    .copied()
                    .collect(),
            ),
            ResourceBody::Node(_) | ResourceBody::Policy(_) => (false, Vec::new()),
        }
    }

    fn unindex(&mut self, old: &Entry) {
        let (workload, ips) = Self::index_ips(&old.body);
        let index = if workload {
            &mut self.workloads_by_ip
        } else {
            &mut self.services_by_ip
        };
        for ip in ips {
            // Another resource may have taken the address since.
            if index.get(&ip).is_some_and(|e| e.key == old.key) {
                index.remove(&ip);
            }
        }
    }

    fn insert(&mut self, entry: Entry) {
        if let Some(old) = self.resources.insert(entry.key.clone(), entry.clone()) {
            self.unindex(&old);
        }
        let (workload, ips) = Self::index_ips(&entry.body);
        if ips.is_empty() {
            return;
        }
        let index = if workload {
            &mut self.workloads_by_ip
        } else {
            &mut self.services_by_ip
        };
        for ip in ips {
            index.insert(ip, entry.clone());
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
#[derive(Debug, Default)]
pub struct ConfigStore {
    current: ArcSwap<ProxyState>,
    ready: AtomicBool,
}

impl ConfigStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A consistent view of the configuration; lock-free.
    pub fn snapshot(&self) -> Arc<ProxyState> {
        self.current.load_full()
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
        next.revision = response.revision;
        for resource in response.resources {
            match VersionedResource::decode(resource) {
                Ok(decoded) => {
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
        self.current.store(Arc::new(next));
        self.ready.store(true, Ordering::Release);
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::model::NodeAddress;
    use ferry_api::proto;
    use std::collections::BTreeMap;

    fn workload(name: &str, ip: &str) -> ResourceBody {
        ResourceBody::Workload(Workload {
            uid: String::new(),
            namespace: "default".into(),
            name: name.into(),
            node: Some("n1".into()),
            service_account: "default".into(),
            addresses: vec![ip.parse().unwrap()],
            labels: BTreeMap::new(),
            ports: vec![],
            ready: true,
            terminating: false,
            mesh: true,
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
                .name,
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
                .name,
            "b"
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

    #[test]
    fn versions_report_what_is_held() {
        let store = ConfigStore::default();
        let node = ResourceBody::Node(Node {
            name: "n1".into(),
            addresses: vec![NodeAddress {
                kind: "InternalIP".into(),
                address: "10.1.0.1".into(),
            }],
            hbone: Some("10.1.0.1:15008".parse().unwrap()),
        });
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
