//! The versioned configuration and the per-node delta streams.
//!
//! [`ConfigCache`] holds every published resource and a log of which keys
//! changed at which revision. Each proxy stream ([`ConfigDiscoveryService`])
//! remembers what its proxy holds (the versions it ACKed) and, on every new
//! revision, looks only at the keys changed since the revision it last
//! handled. One response is in flight per stream: changes that arrive while
//! the proxy is applying one are folded into the next.
//!
//! A NACKed resource stays at the proxy's last good version; the stream will
//! not send that same version again, only a newer one.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use ferry_api::proto::config_discovery_server::ConfigDiscovery;
use ferry_api::proto::{DeltaRequest, DeltaResponse};
use ferry_api::ResourceKey;
use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::translate::{Change, Published};

pub use ferry_api::proto::config_discovery_server::ConfigDiscoveryServer;

/// How many changed keys the log keeps; a stream further behind than this
/// compares everything once instead.
/// Default entries of the change log (`--change-log-entries`).
pub const LOG_CAPACITY: usize = 262_144;

#[derive(Debug, Default)]
struct CacheInner {
    revision: u64,
    resources: HashMap<ResourceKey, Published>,
    /// (revision, key changed at that revision), oldest first.
    log: VecDeque<(u64, ResourceKey)>,
    /// Changes at or before this revision may be missing from the log.
    log_floor: u64,
    /// When the current revision was committed (push latency).
    committed_at: Option<std::time::Instant>,
}

/// The published configuration, shared by all streams.
#[derive(Debug)]
pub struct ConfigCache {
    inner: RwLock<CacheInner>,
    revision: watch::Sender<u64>,
    /// Entries the change log keeps; a proxy further behind gets a full
    /// comparison instead of a walk of the log.
    log_capacity: usize,
}

impl Default for ConfigCache {
    fn default() -> Self {
        Self {
            inner: RwLock::default(),
            revision: watch::Sender::new(0),
            log_capacity: LOG_CAPACITY,
        }
    }
}

/// What one response sends.
#[derive(Debug, Default, PartialEq)]
pub struct Delta {
    pub upserts: Vec<Arc<ferry_api::proto::Resource>>,
    pub removals: Vec<ResourceKey>,
}

impl ConfigCache {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A cache whose change log keeps `entries` (at least one).
    pub fn with_log_capacity(entries: usize) -> Arc<Self> {
        Arc::new(Self {
            log_capacity: entries.max(1),
            ..Self::default()
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, CacheInner> {
        // A panic while holding the lock leaves consistent data (every
        // mutation is a single insert/remove), so poisoning is ignored.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Current revision.
    pub fn revision(&self) -> u64 {
        self.read().revision
    }

    /// When `revision` was committed, if it is the current one.
    pub fn committed_at(&self, revision: u64) -> Option<std::time::Instant> {
        let inner = self.read();
        (inner.revision == revision)
            .then_some(inner.committed_at)
            .flatten()
    }

    /// Number of published resources.
    pub fn len(&self) -> usize {
        self.read().resources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Publishes a batch of changes as one new revision.
    pub fn commit(&self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let revision = {
            let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
            inner.revision += 1;
            inner.committed_at = Some(std::time::Instant::now());
            let revision = inner.revision;
            for change in changes {
                let key = match change {
                    Change::Upsert(key, published) => {
                        inner.resources.insert(key.clone(), published);
                        key
                    }
                    Change::Remove(key) => {
                        inner.resources.remove(&key);
                        key
                    }
                };
                inner.log.push_back((revision, key));
            }
            while inner.log.len() > self.log_capacity {
                if let Some((rev, _)) = inner.log.pop_front() {
                    inner.log_floor = rev;
                }
            }
            revision
        };
        self.revision.send_replace(revision);
    }

    /// Subscribes to revision changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// What a proxy on `node` holding `client` (minus `rejected` versions it
    /// refused) needs to reach the current revision. `since`: the revision
    /// the client state corresponds to, or `None` to compare everything.
    pub fn delta(
        &self,
        node: &str,
        since: Option<u64>,
        client: &HashMap<ResourceKey, u64>,
        rejected: &HashMap<ResourceKey, u64>,
    ) -> (u64, Delta) {
        let inner = self.read();
        let mut delta = Delta::default();
        let consider = |key: &ResourceKey, delta: &mut Delta| {
            let desired = inner.resources.get(key).filter(|p| p.scope.includes(node));
            match desired {
                Some(p) => {
                    let v = p.version();
                    if client.get(key) != Some(&v) && rejected.get(key) != Some(&v) {
                        delta.upserts.push(p.resource.clone());
                    }
                }
                None => {
                    if client.contains_key(key) {
                        delta.removals.push(key.clone());
                    }
                }
            }
        };
        match since {
            Some(since) if since >= inner.log_floor => {
                let start = inner.log.partition_point(|(rev, _)| *rev <= since);
                let keys: BTreeSet<&ResourceKey> =
                    inner.log.range(start..).map(|(_, k)| k).collect();
                for key in keys {
                    consider(key, &mut delta);
                }
            }
            _ => {
                for key in inner.resources.keys() {
                    consider(key, &mut delta);
                }
                for key in client.keys() {
                    if !inner.resources.contains_key(key) {
                        delta.removals.push(key.clone());
                    }
                }
            }
        }
        (inner.revision, delta)
    }
}

/// The gRPC service: one delta stream per proxy.
#[derive(Debug, Clone)]
pub struct ConfigDiscoveryService {
    cache: Arc<ConfigCache>,
    /// How a proxy proves its node.
    auth: Arc<crate::authn::Authenticator>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Largest request message accepted from a proxy.
    max_request_bytes: usize,
    /// Becomes true when the control plane stops: every stream ends.
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl ConfigDiscoveryService {
    pub fn new(cache: Arc<ConfigCache>) -> Self {
        Self {
            cache,
            auth: Arc::new(crate::authn::Authenticator::None),
            metrics: Arc::default(),
            max_request_bytes: 64 << 20,
            stopping: tokio::sync::watch::channel(false).1,
        }
    }

    /// Accepts request messages up to `bytes` (a proxy's first request
    /// lists every resource it holds).
    pub fn with_max_request_bytes(mut self, bytes: usize) -> Self {
        self.max_request_bytes = bytes;
        self
    }

    /// Ends every proxy stream (with `UNAVAILABLE`, so proxies reconnect,
    /// to another replica if there is one) once `stopping` becomes true.
    pub fn with_shutdown(mut self, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stopping = stopping;
        self
    }

    /// Counts streams, pushes and NACKs in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Requires every proxy to prove its node with `auth`, and to
    /// subscribe for that node only.
    pub fn with_authenticator(mut self, auth: Arc<crate::authn::Authenticator>) -> Self {
        self.auth = auth;
        self
    }

    pub fn into_server(self) -> ConfigDiscoveryServer<Self> {
        let max = self.max_request_bytes;
        ConfigDiscoveryServer::new(self).max_decoding_message_size(max)
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DeltaResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigDiscovery for ConfigDiscoveryService {
    type DeltaConfigStream = ResponseStream;

    async fn delta_config(
        &self,
        request: Request<Streaming<DeltaRequest>>,
    ) -> Result<Response<Self::DeltaConfigStream>, Status> {
        let peer = request.remote_addr();
        let authenticated = self.auth.node(&request).await?;
        let mut requests = request.into_inner();
        let first = match requests.next().await {
            Some(Ok(first)) => first,
            Some(Err(status)) => return Err(status),
            None => return Err(Status::invalid_argument("stream closed before subscribing")),
        };
        if first.node.is_empty() {
            return Err(Status::invalid_argument(
                "the first request must name the node",
            ));
        }
        if let Some(node) = authenticated.filter(|n| *n != first.node) {
            tracing::warn!(credential = %node, requested = %first.node, "proxy subscribed for another node: refused");
            return Err(Status::permission_denied(format!(
                "the proxy's credential is for node {node}, not {}",
                first.node
            )));
        }
        let (tx, rx) = mpsc::channel(4);
        let session = NodeSession::new(first, self.cache.clone(), self.metrics.clone());
        tracing::info!(node = %session.node, ?peer, held = session.client.len(), "proxy subscribed");
        tokio::spawn(session.run(requests, tx, self.stopping.clone()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[derive(Debug)]
struct Pending {
    nonce: String,
    upserts: Vec<(ResourceKey, u64)>,
    removals: Vec<ResourceKey>,
}

/// State of one proxy's stream.
#[derive(Debug)]
struct NodeSession {
    node: String,
    cache: Arc<ConfigCache>,
    /// What the proxy holds (ACKed).
    client: HashMap<ResourceKey, u64>,
    /// Versions the proxy refused: not sent again.
    rejected: HashMap<ResourceKey, u64>,
    /// Revision the client state reflects; `None` until the first full compare.
    seen: Option<u64>,
    next_nonce: u64,
    pending: Option<Pending>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl NodeSession {
    fn new(
        first: DeltaRequest,
        cache: Arc<ConfigCache>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        let client = first
            .initial_versions
            .iter()
            .filter_map(|rv| Some((ResourceKey::from_proto(rv.key.as_ref()?)?, rv.version)))
            .collect();
        Self {
            node: first.node,
            cache,
            client,
            rejected: HashMap::new(),
            seen: None,
            next_nonce: 1,
            pending: None,
            metrics,
        }
    }

    async fn run(
        mut self,
        mut requests: Streaming<DeltaRequest>,
        tx: mpsc::Sender<Result<DeltaResponse, Status>>,
        mut stopping: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut revisions = self.cache.subscribe();
        self.metrics.connected_proxies.inc();
        let metrics = self.metrics.clone();
        let _connected = scopeguard(move || {
            metrics.connected_proxies.dec();
        });
        loop {
            if self.pending.is_none() {
                let current = *revisions.borrow_and_update();
                if self.seen.is_none_or(|seen| current > seen) {
                    let first = self.seen.is_none();
                    let (revision, delta) =
                        self.cache
                            .delta(&self.node, self.seen, &self.client, &self.rejected);
                    self.seen = Some(revision);
                    // The first response is sent even when empty: it tells
                    // the proxy it is in sync.
                    if first || !delta.upserts.is_empty() || !delta.removals.is_empty() {
                        let response = self.prepare(revision, delta);
                        if tx.send(Ok(response)).await.is_err() {
                            break;
                        }
                    }
                }
            }
            tokio::select! {
                message = requests.next() => match message {
                    Some(Ok(request)) => self.on_request(request),
                    Some(Err(status)) => {
                        tracing::info!(node = %self.node, %status, "proxy stream ended");
                        break;
                    }
                    None => {
                        tracing::info!(node = %self.node, "proxy disconnected");
                        break;
                    }
                },
                changed = revisions.changed(), if self.pending.is_none() => {
                    if changed.is_err() {
                        break;
                    }
                }
                () = async {
                    // No sender (no shutdown wired): never stops.
                    if stopping.wait_for(|stop| *stop).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                } => {
                    tracing::info!(node = %self.node, "control plane stopping: closing the proxy's stream");
                    let _ = tx
                        .send(Err(Status::unavailable("the control plane is shutting down")))
                        .await;
                    break;
                }
            }
        }
    }

    fn prepare(&mut self, revision: u64, delta: Delta) -> DeltaResponse {
        let nonce = self.next_nonce.to_string();
        self.next_nonce += 1;
        let mut upserts = Vec::with_capacity(delta.upserts.len());
        let mut resources = Vec::with_capacity(delta.upserts.len());
        for r in delta.upserts {
            if let Some(key) = r.key.as_ref().and_then(ResourceKey::from_proto) {
                upserts.push((key, r.version));
            }
            resources.push((*r).clone());
        }
        tracing::debug!(node = %self.node, revision, nonce, upserts = upserts.len(), removals = delta.removals.len(), "sending delta");
        self.metrics.pushes.inc();
        self.metrics
            .push_resources
            .inc_by((upserts.len() + delta.removals.len()) as u64);
        if let Some(at) = self.cache.committed_at(revision) {
            self.metrics
                .push_latency
                .observe(at.elapsed().as_secs_f64());
        }
        let response = DeltaResponse {
            nonce: nonce.clone(),
            revision,
            resources,
            removed: delta.removals.iter().map(ResourceKey::to_proto).collect(),
        };
        self.pending = Some(Pending {
            nonce,
            upserts,
            removals: delta.removals,
        });
        response
    }

    fn on_request(&mut self, request: DeltaRequest) {
        let Some(pending) = self.pending.take_if(|p| p.nonce == request.response_nonce) else {
            tracing::debug!(node = %self.node, nonce = %request.response_nonce, "ignoring a stale or unsolicited request");
            return;
        };
        let errors: HashMap<ResourceKey, String> = request
            .errors
            .into_iter()
            .filter_map(|e| Some((ResourceKey::from_proto(e.key.as_ref()?)?, e.message)))
            .collect();
        for (key, version) in pending.upserts {
            if let Some(message) = errors.get(&key) {
                self.metrics.nacks.inc();
                tracing::warn!(node = %self.node, resource = %key, %message, "proxy rejected a resource (NACK); it keeps its last good version");
                self.rejected.insert(key, version);
            } else {
                self.rejected.remove(&key);
                self.client.insert(key, version);
            }
        }
        for key in pending.removals {
            self.client.remove(&key);
            self.rejected.remove(&key);
        }
    }
}

/// Runs `f` when dropped (however the stream ends).
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::Scope;
    use ferry_api::model::{Node, NodeAddress};
    use ferry_api::{Kind, ResourceBody, VersionedResource};

    fn node(name: &str, ip: &str) -> (ResourceKey, Published) {
        let body = ResourceBody::Node(Node {
            name: name.into(),
            addresses: vec![NodeAddress {
                kind: "InternalIP".into(),
                address: ip.into(),
            }],
            hbone: None,
            zone: None,
        });
        (
            body.key(),
            Published {
                resource: Arc::new(VersionedResource::encode(&body)),
                scope: Scope::AllNodes,
            },
        )
    }

    fn names(delta: &Delta) -> (Vec<String>, Vec<String>) {
        let mut up: Vec<String> = delta
            .upserts
            .iter()
            .map(|r| r.key.as_ref().unwrap().name.clone())
            .collect();
        up.sort();
        (up, delta.removals.iter().map(|k| k.name.clone()).collect())
    }

    #[test]
    fn delta_since_a_revision_sends_only_changed_keys() {
        let cache = ConfigCache::default();
        let (ka, a) = node("a", "10.0.0.1");
        let (kb, b) = node("b", "10.0.0.2");
        cache.commit(vec![
            Change::Upsert(ka.clone(), a.clone()),
            Change::Upsert(kb.clone(), b.clone()),
        ]);
        let (rev, full) = cache.delta("x", None, &HashMap::new(), &HashMap::new());
        assert_eq!(rev, 1);
        assert_eq!(names(&full).0, ["a", "b"]);

        let client: HashMap<_, _> = [(ka.clone(), a.version()), (kb.clone(), b.version())].into();
        let (_, a2) = node("a", "10.0.0.9");
        cache.commit(vec![Change::Upsert(ka.clone(), a2)]);
        cache.commit(vec![Change::Remove(kb.clone())]);
        let (rev, delta) = cache.delta("x", Some(1), &client, &HashMap::new());
        assert_eq!(rev, 3);
        assert_eq!(
            names(&delta),
            (vec!["a".to_string()], vec!["b".to_string()])
        );
    }

    #[test]
    fn reconnect_with_current_versions_needs_nothing() {
        let cache = ConfigCache::default();
        let (ka, a) = node("a", "10.0.0.1");
        cache.commit(vec![Change::Upsert(ka.clone(), a.clone())]);
        let stale = ResourceKey::new(Kind::Node, "gone");
        let client: HashMap<_, _> = [(ka, a.version()), (stale, 7)].into();
        let (_, delta) = cache.delta("x", None, &client, &HashMap::new());
        assert_eq!(names(&delta), (vec![], vec!["gone".to_string()]));
    }

    #[test]
    fn rejected_versions_are_not_resent_and_scope_is_honoured() {
        let cache = ConfigCache::default();
        let (ka, mut a) = node("a", "10.0.0.1");
        a.scope = Scope::Nodes(["node-1".to_string()].into());
        cache.commit(vec![Change::Upsert(ka.clone(), a.clone())]);
        let (_, other) = cache.delta("node-2", None, &HashMap::new(), &HashMap::new());
        assert!(other.upserts.is_empty());
        let (_, mine) = cache.delta("node-1", None, &HashMap::new(), &HashMap::new());
        assert_eq!(mine.upserts.len(), 1);
        let rejected: HashMap<_, _> = [(ka.clone(), a.version())].into();
        let (_, again) = cache.delta("node-1", None, &HashMap::new(), &rejected);
        assert!(again.upserts.is_empty());
        // Moving out of scope removes it from a proxy that held it.
        let client: HashMap<_, _> = [(ka, a.version())].into();
        let (_, gone) = cache.delta("node-2", Some(0), &client, &HashMap::new());
        assert_eq!(gone.removals.len(), 1);
    }
}
