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

    pub fn track(self: &Arc<Self>, check: Check) -> TrackedConnection {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let closed = Arc::new(Notify::new());
        self.open.insert(
            id,
            Tracked {
                check,
                closed: closed.clone(),
            },
        );
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
            if let Err(reason) = state.enforce(&entry.check) {
                tracing::info!(source = %entry.check.source, destination = %entry.check.destination, port = entry.check.port, %reason, "closing a connection the updated policy no longer allows");
                entry.closed.notify_one();
                closed += 1;
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
