//! Enforcement over time: every open connection is tracked with the
//! policy halves its proxy enforces ([`Check`]), re-checked after each
//! config change, and closed when the new policies no longer allow it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use ferry_core::policy::Check;
use ferry_core::state::{ConfigStore, ProxyState};
use tokio::sync::Notify;

#[derive(Debug)]
struct Tracked {
    check: Check,
    closed: Arc<Notify>,
    /// Told to close: counted once, whatever the updates until it does.
    revoked: std::sync::atomic::AtomicBool,
}

impl Tracked {
    /// Tells the connection to close, once; whether this call did.
    fn revoke(&self) -> bool {
        if self.revoked.swap(true, Ordering::AcqRel) {
            return false;
        }
        // A stored permit when nobody waits yet: the relay's `revoked()`
        // then resolves at once.
        self.closed.notify_one();
        true
    }
}

/// Open connections, re-checked whenever the config changes.
#[derive(Debug, Default)]
pub struct ConnectionTracker {
    next: AtomicU64,
    open: DashMap<u64, Tracked>,
    /// Connections refused or closed by policy.
    pub denied: AtomicU64,
    pub closed_by_update: AtomicU64,
}

/// Keeps a connection tracked until dropped.
#[derive(Debug)]
pub struct TrackedConnection {
    id: u64,
    tracker: Arc<ConnectionTracker>,
    closed: Arc<Notify>,
}

impl TrackedConnection {
    /// Resolves when a policy update no longer allows the connection. The
    /// future owns what it waits on: a relay holds it beside the tracking.
    pub fn revoked(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let closed = self.closed.clone();
        async move { closed.notified().await }
    }
}

impl Drop for TrackedConnection {
    fn drop(&mut self) {
        self.tracker.open.remove(&self.id);
    }
}

impl ConnectionTracker {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Tracks a connection admitted on `check`. A configuration that
    /// arrived after the decision (during a DNS lookup, a SOCKS5 reply, the
    /// wait for the task to run) may have been rechecked before the
    /// connection was tracked: it is judged against the current one here,
    /// once it is tracked, so no update can pass between the two unseen.
    pub fn track(self: &Arc<Self>, check: Check, store: &ConfigStore) -> TrackedConnection {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let closed = Arc::new(Notify::new());
        self.open.insert(
            id,
            Tracked {
                check,
                closed: closed.clone(),
                revoked: Default::default(),
            },
        );
        let current = store.snapshot();
        if current.revision() != check.decided_at {
            if let Err(reason) = current.enforce(&check) {
                if self.open.get(&id).is_some_and(|t| t.revoke()) {
                    tracing::info!(source = %check.source, destination = %check.destination, port = check.port, %reason, "closing a connection a configuration that arrived meanwhile no longer allows");
                    self.closed_by_update.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        TrackedConnection {
            id,
            tracker: self.clone(),
            closed,
        }
    }

    /// Counts a connection refused by policy.
    pub fn count_denied(&self) {
        self.denied.fetch_add(1, Ordering::Relaxed);
    }

    pub fn open_connections(&self) -> usize {
        self.open.len()
    }

    /// Closes the tracked connections `state` no longer allows; returns how many.
    pub fn recheck(&self, state: &ProxyState) -> usize {
        let mut closed = 0;
        for entry in self.open.iter() {
            if entry.revoked.load(Ordering::Acquire) {
                continue;
            }
            if let Err(reason) = state.enforce(&entry.check) {
                if entry.revoke() {
                    tracing::info!(source = %entry.check.source, destination = %entry.check.destination, port = entry.check.port, %reason, "closing a connection the updated policy no longer allows");
                    closed += 1;
                }
            }
        }
        self.closed_by_update
            .fetch_add(closed as u64, Ordering::Relaxed);
        closed
    }

    /// Re-checks open connections after every config change, until dropped.
    pub async fn run(self: Arc<Self>, store: Arc<ConfigStore>) {
        let mut changes = store.subscribe();
        while changes.changed().await.is_ok() {
            self.recheck(&store.snapshot());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::model::{Policy, Profile, Workload};
    use ferry_api::proto::DeltaResponse;
    use ferry_api::{ResourceBody, VersionedResource};

    fn workload(name: &str, ip: &str) -> ResourceBody {
        ResourceBody::Workload(Workload {
            key: Workload::key_of("shop", name),
            node: Some("n1".into()),
            addresses: vec![ip.parse().unwrap()].into(),
            ready: true,
            terminating: false,
            profile: Arc::new(Profile {
                namespace: "shop".into(),
                service_account: name.into(),
                labels: Default::default(),
                ports: vec![].into(),
                mesh: true,
                controller: None,
            }),
        })
    }

    /// Isolates `shop/b`'s ingress: nothing may reach it.
    fn isolate_b() -> ResourceBody {
        ResourceBody::Policy(Box::new(Policy {
            namespace: "shop".into(),
            name: "deny-b".into(),
            selected: vec!["shop/b".into()],
            ingress: true,
            egress: false,
            ingress_rules: vec![],
            egress_rules: vec![],
        }))
    }

    fn check(decided_at: u64) -> Check {
        Check {
            source: "10.0.0.1".parse().unwrap(),
            destination: "10.0.0.2".parse().unwrap(),
            port: 80,
            egress: false,
            ingress: true,
            decided_at,
        }
    }

    #[tokio::test]
    async fn a_policy_that_arrived_before_tracking_closes_the_connection() {
        let store = ConfigStore::holding(&[workload("a", "10.0.0.1"), workload("b", "10.0.0.2")]);
        let tracker = ConnectionTracker::new();
        // Allowed at revision 1, and tracked at revision 1: it stays open.
        let kept = tracker.track(check(1), &store);
        // The policy arrives (and is rechecked: nothing tracked yet)...
        store.apply(DeltaResponse {
            nonce: "2".into(),
            revision: 2,
            resources: vec![VersionedResource::encode(&isolate_b())],
            removed: vec![],
        });
        assert_eq!(tracker.recheck(&store.snapshot()), 1);
        drop(kept);
        // ...before a connection admitted at revision 1 is tracked: it is
        // judged against revision 2 there, and closed.
        let late = tracker.track(check(1), &store);
        tokio::time::timeout(std::time::Duration::from_secs(5), late.revoked())
            .await
            .unwrap();
        assert_eq!(tracker.closed_by_update.load(Ordering::Relaxed), 2);
        // Another update before its relay ends: it is not counted again.
        assert_eq!(tracker.recheck(&store.snapshot()), 0);
        assert_eq!(tracker.closed_by_update.load(Ordering::Relaxed), 2);
        drop(late);
        // One admitted at revision 2 was judged on it already.
        let current = tracker.track(check(2), &store);
        assert_eq!(tracker.closed_by_update.load(Ordering::Relaxed), 2);
        drop(current);
    }
}
