//! The versioned configuration and the per-node delta streams.
//!
//! [`ConfigCache`] holds every published resource and a log of which keys
//! changed at which revision, each entry with what the key was before that
//! change. A proxy stream ([`ConfigDiscoveryService`]) compares the
//! versions the proxy reports when it subscribes with the cache once; from
//! then on it keeps no copy of what its proxy holds, only the revision it
//! is in sync at: what the proxy holds is what the cache held then for its
//! node, which the log's "before" entries give for every key changed
//! since. So a stream costs the same memory however large the
//! configuration, and on every new revision it looks only at the keys
//! changed since. One response is in flight per stream: changes that
//! arrive while the proxy is applying one are folded into the next. A
//! stream further behind than the log is ended, and its proxy resubscribes
//! reporting its versions.
//!
//! A NACKed resource stays at the proxy's last good version; the stream will
//! not send that same version again, only a newer one.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use ferry_api::proto::{DeltaRequest, DeltaResponseEncoded as DeltaResponse};
use ferry_api::proto_server::config_discovery_server::ConfigDiscovery;
use ferry_api::ResourceKey;
use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::translate::{Change, Published, Scope};

pub use ferry_api::proto_server::config_discovery_server::ConfigDiscoveryServer;

/// How many changed keys the log keeps; a stream further behind than this
/// compares everything once instead.
/// Default entries of the change log (`--change-log-entries`).
pub const LOG_CAPACITY: usize = 262_144;

/// A key changed at a revision, and what it was before: its version and
/// scope (`None`: absent). Not the resource itself: the log may hold many
/// changes of one large resource.
#[derive(Debug)]
struct LogEntry {
    revision: u64,
    key: ResourceKey,
    before: Option<(u64, crate::translate::Scope)>,
}

#[derive(Debug, Default)]
struct CacheInner {
    revision: u64,
    resources: HashMap<ResourceKey, Published>,
    /// Oldest first.
    log: VecDeque<LogEntry>,
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
    pub upserts: Vec<Upsert>,
    pub removals: Vec<ResourceKey>,
}

/// A resource to send: its key and version (to follow the proxy's ACK),
/// and its encoded form (sent as it is).
#[derive(Debug, Clone, PartialEq)]
pub struct Upsert {
    pub key: ResourceKey,
    pub version: u64,
    pub encoded: bytes::Bytes,
}

/// What a stream knows of what its proxy holds.
#[derive(Debug, Clone, Copy)]
pub enum Held<'a> {
    /// The versions the proxy reported when it subscribed: compared with
    /// every resource once.
    Reported(&'a HashMap<ResourceKey, u64>),
    /// The proxy holds what its node was sent up to this revision.
    InSyncAt(u64),
}

/// The revision a stream is in sync at is older than the change log: what
/// its proxy holds is no longer known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("in sync at revision {seen}, older than the change log (from revision {floor})")]
pub struct FellBehind {
    pub seen: u64,
    pub floor: u64,
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

    /// The current revision and every resource a proxy on `node` holds
    /// once in sync, for the status API.
    pub fn for_node(&self, node: &str) -> (u64, Vec<Published>) {
        let inner = self.read();
        let resources = inner
            .resources
            .values()
            .filter(|p| p.scope.includes(node))
            .cloned()
            .collect();
        (inner.revision, resources)
    }

    /// The current revision, the number of resources and the nodes of the
    /// configuration (sorted), for the status API.
    pub fn summary(&self) -> (u64, usize, Vec<String>) {
        let inner = self.read();
        let mut nodes: Vec<String> = inner
            .resources
            .keys()
            .filter(|k| k.kind == ferry_api::Kind::Node)
            .map(|k| k.name.to_string())
            .collect();
        nodes.sort_unstable();
        (inner.revision, inner.resources.len(), nodes)
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
            // The first configuration: a proxy behind it held nothing, and
            // gets everything by comparing what it reports; logging it
            // would keep an entry per resource (7 MiB at 111,000) for no
            // stream's use.
            let first = inner.resources.is_empty();
            for change in changes {
                let (key, before) = match change {
                    Change::Upsert(key, published) => {
                        let before = inner.resources.insert(key.clone(), published);
                        (key, before)
                    }
                    Change::Remove(key) => {
                        let before = inner.resources.remove(&key);
                        (key, before)
                    }
                };
                if !first {
                    inner.log.push_back(LogEntry {
                        revision,
                        key,
                        before: before.map(|p| (p.version, p.scope)),
                    });
                }
            }
            if first {
                // What came before the empty cache is no base for a delta
                // any more: a stream behind this revision gets everything.
                // Entries left from before would otherwise be trimmed
                // later and move the floor back below this revision.
                inner.log.clear();
                inner.log_floor = revision;
            }
            // Only revisions older than this one are trimmed: a commit
            // larger than the log (a relist, a mass relabel) stays whole,
            // so streams one revision behind still get a delta instead of
            // all being ended at once.
            while inner.log.len() > self.log_capacity
                && inner.log.front().is_some_and(|e| e.revision < revision)
            {
                if let Some(entry) = inner.log.pop_front() {
                    inner.log_floor = inner.log_floor.max(entry.revision);
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

    /// What a proxy on `node` needs to reach the current revision, given
    /// what it holds (`held`) and the versions it refused (`rejected`, not
    /// sent again).
    pub fn delta(
        &self,
        node: &str,
        held: Held<'_>,
        rejected: &HashMap<ResourceKey, u64>,
    ) -> Result<(u64, Delta), FellBehind> {
        let inner = self.read();
        let mut delta = Delta::default();
        // `had`: the version the proxy holds (`None`: it holds none).
        let consider = |key: &ResourceKey, had: Option<u64>, delta: &mut Delta| {
            let desired = inner.resources.get(key).filter(|p| p.scope.includes(node));
            match desired {
                Some(p) => {
                    let v = p.version();
                    if had != Some(v) && rejected.get(key) != Some(&v) {
                        delta.upserts.push(Upsert {
                            key: key.clone(),
                            version: v,
                            encoded: p.encoded.clone(),
                        });
                    }
                }
                None => {
                    if had.is_some() || rejected.contains_key(key) {
                        delta.removals.push(key.clone());
                    }
                }
            }
        };
        match held {
            // Revision 0 is the empty configuration: what a proxy in sync
            // there needs is everything in its scope, whatever the log
            // keeps (the first configuration is not logged).
            Held::InSyncAt(0) => {
                for key in inner.resources.keys() {
                    consider(key, None, &mut delta);
                }
            }
            Held::InSyncAt(seen) => {
                if seen < inner.log_floor {
                    return Err(FellBehind {
                        seen,
                        floor: inner.log_floor,
                    });
                }
                // Each key changed since `seen`, with what it was at `seen`:
                // the "before" of its first change since.
                let start = inner.log.partition_point(|e| e.revision <= seen);
                let mut changed: BTreeMap<&ResourceKey, Option<&(u64, Scope)>> = BTreeMap::new();
                for entry in inner.log.range(start..) {
                    changed.entry(&entry.key).or_insert(entry.before.as_ref());
                }
                for (key, before) in changed {
                    let had = before
                        .filter(|(_, scope)| scope.includes(node))
                        .map(|(version, _)| *version);
                    consider(key, had, &mut delta);
                }
            }
            Held::Reported(client) => {
                for key in inner.resources.keys() {
                    consider(key, client.get(key).copied(), &mut delta);
                }
                for key in client.keys() {
                    if !inner.resources.contains_key(key) {
                        delta.removals.push(key.clone());
                    }
                }
            }
        }
        Ok((inner.revision, delta))
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
    /// Where each stream shows its state (the status API).
    board: Arc<crate::status::StatusBoard>,
}

impl ConfigDiscoveryService {
    pub fn new(cache: Arc<ConfigCache>) -> Self {
        Self {
            cache,
            auth: Arc::new(crate::authn::Authenticator::None),
            metrics: Arc::default(),
            max_request_bytes: 64 << 20,
            stopping: tokio::sync::watch::channel(false).1,
            board: Arc::default(),
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

    /// Shows every stream's state on `board` (the status API).
    pub fn with_status_board(mut self, board: Arc<crate::status::StatusBoard>) -> Self {
        self.board = board;
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
        let bound = self.auth.stream_bound(&request);
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
        let mut status = crate::status::StreamStatus::new(&first.node, peer);
        // The node credential's expiry, for the status API.
        status.credential_not_after = bound.credential_not_after();
        let status = self.board.open(status);
        let session = NodeSession::new(first, self.cache.clone(), self.metrics.clone(), status);
        tracing::info!(node = %session.node, ?peer, held = session.reported.as_ref().map_or(0, HashMap::len), "proxy subscribed");
        tokio::spawn(session.run(requests, tx, self.stopping.clone(), bound));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[derive(Debug)]
struct Pending {
    nonce: String,
    /// The revision the proxy is in sync at once it has applied this.
    revision: u64,
    upserts: Vec<(ResourceKey, u64)>,
    removals: Vec<ResourceKey>,
}

/// State of one proxy's stream.
#[derive(Debug)]
struct NodeSession {
    node: String,
    cache: Arc<ConfigCache>,
    /// The versions the proxy reported when it subscribed, until the first
    /// response is computed from them.
    reported: Option<HashMap<ResourceKey, u64>>,
    /// Versions the proxy refused: not sent again.
    rejected: HashMap<ResourceKey, u64>,
    /// The revision the proxy is in sync at (it ACKed a response bringing
    /// it there); `None` until it ACKs the first.
    seen: Option<u64>,
    next_nonce: u64,
    pending: Option<Pending>,
    metrics: Arc<crate::metrics::Metrics>,
    /// This stream on the status board (listed while the session lives).
    status: crate::status::StreamHandle,
}

impl NodeSession {
    fn new(
        first: DeltaRequest,
        cache: Arc<ConfigCache>,
        metrics: Arc<crate::metrics::Metrics>,
        status: crate::status::StreamHandle,
    ) -> Self {
        let client = first
            .initial_versions
            .iter()
            .filter_map(|rv| Some((ResourceKey::from_proto(rv.key.as_ref()?)?, rv.version)))
            .collect();
        Self {
            node: first.node,
            cache,
            reported: Some(client),
            rejected: HashMap::new(),
            seen: None,
            next_nonce: 1,
            pending: None,
            metrics,
            status,
        }
    }

    async fn run(
        mut self,
        mut requests: Streaming<DeltaRequest>,
        tx: mpsc::Sender<Result<DeltaResponse, Status>>,
        mut stopping: tokio::sync::watch::Receiver<bool>,
        mut bound: crate::authn::StreamBound,
    ) {
        let node = self.node.clone();
        let mut revisions = self.cache.subscribe();
        self.metrics.connected_proxies.inc();
        let metrics = self.metrics.clone();
        let _connected = scopeguard(move || {
            metrics.connected_proxies.dec();
        });
        loop {
            if self.pending.is_none() {
                let current = *revisions.borrow_and_update();
                let held = match (&self.reported, self.seen) {
                    (Some(reported), _) => Some(Held::Reported(reported)),
                    (None, Some(seen)) if current > seen => Some(Held::InSyncAt(seen)),
                    _ => None,
                };
                if let Some(held) = held {
                    let first = matches!(held, Held::Reported(_));
                    let (revision, delta) = match self.cache.delta(&self.node, held, &self.rejected)
                    {
                        Ok(delta) => delta,
                        Err(behind) => {
                            tracing::warn!(node = %self.node, %behind, "proxy stream fell behind the change log: ending it, the proxy resubscribes with its versions");
                            let _ = tx
                                .send(Err(Status::unavailable(format!(
                                    "{behind}: subscribe again"
                                ))))
                                .await;
                            break;
                        }
                    };
                    // Compared once; from now on the revision says it all.
                    self.reported = None;
                    // The first response is sent even when empty: it tells
                    // the proxy it is in sync.
                    if first || !delta.upserts.is_empty() || !delta.removals.is_empty() {
                        let response = self.prepare(revision, delta);
                        if tx.send(Ok(response)).await.is_err() {
                            break;
                        }
                    } else {
                        self.seen = Some(revision);
                        self.status.update(|s| s.synced_revision = revision);
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
                refused = bound.ended(&node) => {
                    tracing::info!(node = %self.node, %refused, "the proxy's credential no longer holds: closing its stream");
                    let _ = tx.send(Err(refused)).await;
                    break;
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
            upserts.push((r.key, r.version));
            resources.push(r.encoded);
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
            revision,
            upserts,
            removals: delta.removals,
        });
        self.status
            .update(|s| s.pending = Some((revision, std::time::SystemTime::now())));
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
        let now = std::time::SystemTime::now();
        let mut nacked = Vec::new();
        let mut cleared = Vec::new();
        for (key, version) in pending.upserts {
            if let Some(message) = errors.get(&key) {
                self.metrics.nacks.inc();
                tracing::warn!(node = %self.node, resource = %key, %message, "proxy rejected a resource (NACK); it keeps its last good version");
                self.rejected.insert(key.clone(), version);
                nacked.push((
                    key,
                    crate::status::Rejection {
                        version,
                        message: message.clone(),
                        at: now,
                    },
                ));
            } else if self.rejected.remove(&key).is_some() {
                cleared.push(key);
            }
        }
        for key in pending.removals {
            if self.rejected.remove(&key).is_some() {
                cleared.push(key);
            }
        }
        self.seen = Some(pending.revision);
        self.status.update(|s| {
            s.synced_revision = pending.revision;
            s.pending = None;
            s.nacks += nacked.len() as u64;
            for key in &cleared {
                s.rejections.remove(key);
            }
            s.rejections.extend(nacked);
        });
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
        let body = ResourceBody::Node(Box::new(Node {
            name: name.into(),
            addresses: vec![NodeAddress {
                kind: "InternalIP".into(),
                address: ip.into(),
            }],
            hbone: None,
            zone: None,
        }));
        (
            body.key(),
            Published::new(&VersionedResource::encode(&body), Scope::AllNodes),
        )
    }

    fn names(delta: &Delta) -> (Vec<String>, Vec<String>) {
        let mut up: Vec<String> = delta
            .upserts
            .iter()
            .map(|r| r.key.name.to_string())
            .collect();
        up.sort();
        (
            up,
            delta.removals.iter().map(|k| k.name.to_string()).collect(),
        )
    }

    fn reported(map: &HashMap<ResourceKey, u64>) -> Held<'_> {
        Held::Reported(map)
    }

    #[test]
    fn delta_since_a_revision_sends_only_changed_keys() {
        let cache = ConfigCache::default();
        let none = HashMap::new();
        let (ka, a) = node("a", "10.0.0.1");
        let (kb, b) = node("b", "10.0.0.2");
        cache.commit(vec![
            Change::Upsert(ka.clone(), a.clone()),
            Change::Upsert(kb.clone(), b.clone()),
        ]);
        let (rev, full) = cache.delta("x", reported(&none), &none).unwrap();
        assert_eq!(rev, 1);
        assert_eq!(names(&full).0, ["a", "b"]);

        let (_, a2) = node("a", "10.0.0.9");
        cache.commit(vec![Change::Upsert(ka.clone(), a2)]);
        cache.commit(vec![Change::Remove(kb.clone())]);
        let (rev, delta) = cache.delta("x", Held::InSyncAt(1), &none).unwrap();
        assert_eq!(rev, 3);
        assert_eq!(
            names(&delta),
            (vec!["a".to_string()], vec!["b".to_string()])
        );
        // In sync at the latest: nothing.
        let (_, nothing) = cache.delta("x", Held::InSyncAt(3), &none).unwrap();
        assert_eq!(nothing, Delta::default());
    }

    #[test]
    fn what_a_proxy_holds_is_what_the_log_says_its_node_had() {
        let cache = ConfigCache::default();
        let none = HashMap::new();
        let (ka, a) = node("a", "10.0.0.1");
        cache.commit(vec![Change::Upsert(ka.clone(), a.clone())]);
        // Changed, then changed back: the proxy in sync at 1 already holds it.
        let (_, a2) = node("a", "10.0.0.9");
        cache.commit(vec![Change::Upsert(ka.clone(), a2)]);
        cache.commit(vec![Change::Upsert(ka.clone(), a.clone())]);
        let (_, delta) = cache.delta("x", Held::InSyncAt(1), &none).unwrap();
        assert_eq!(delta, Delta::default());
        // Added and removed since: it never held it, nothing to remove.
        let (kc, c) = node("c", "10.0.0.3");
        cache.commit(vec![Change::Upsert(kc.clone(), c)]);
        cache.commit(vec![Change::Remove(kc)]);
        let (_, delta) = cache.delta("x", Held::InSyncAt(3), &none).unwrap();
        assert_eq!(delta, Delta::default());
    }

    #[test]
    fn reconnect_with_current_versions_needs_nothing() {
        let cache = ConfigCache::default();
        let (ka, a) = node("a", "10.0.0.1");
        cache.commit(vec![Change::Upsert(ka.clone(), a.clone())]);
        let stale = ResourceKey::new(Kind::Node, "gone");
        let client: HashMap<_, _> = [(ka, a.version()), (stale, 7)].into();
        let (_, delta) = cache
            .delta("x", reported(&client), &HashMap::new())
            .unwrap();
        assert_eq!(names(&delta), (vec![], vec!["gone".to_string()]));
    }

    #[test]
    fn rejected_versions_are_not_resent_and_scope_is_honoured() {
        let cache = ConfigCache::default();
        let none = HashMap::new();
        let (ka, mut a) = node("a", "10.0.0.1");
        a.scope = Scope::Nodes(Arc::new(["node-1".to_string()].into()));
        cache.commit(vec![Change::Upsert(ka.clone(), a.clone())]);
        let (_, other) = cache.delta("node-2", reported(&none), &none).unwrap();
        assert!(other.upserts.is_empty());
        let (_, mine) = cache.delta("node-1", reported(&none), &none).unwrap();
        assert_eq!(mine.upserts.len(), 1);
        let rejected: HashMap<_, _> = [(ka.clone(), a.version())].into();
        let (_, again) = cache.delta("node-1", reported(&none), &rejected).unwrap();
        assert!(again.upserts.is_empty());
        // Moving to another node's scope removes it from the proxy that
        // held it, and sends it to the other.
        let mut moved = a.clone();
        moved.scope = Scope::Nodes(Arc::new(["node-2".to_string()].into()));
        cache.commit(vec![Change::Upsert(ka, moved)]);
        let (_, gone) = cache.delta("node-1", Held::InSyncAt(1), &none).unwrap();
        assert_eq!(names(&gone), (vec![], vec!["a".to_string()]));
        let (_, came) = cache.delta("node-2", Held::InSyncAt(1), &none).unwrap();
        assert_eq!(names(&came), (vec!["a".to_string()], vec![]));
        // A third node never held it: nothing to remove.
        let (_, neither) = cache.delta("node-3", Held::InSyncAt(1), &none).unwrap();
        assert_eq!(neither, Delta::default());
    }

    #[test]
    fn the_status_board_follows_acks_and_nacks() {
        let cache = Arc::new(ConfigCache::default());
        let (ka, a) = node("a", "10.0.0.1");
        let (kb, b) = node("b", "10.0.0.2");
        cache.commit(vec![
            Change::Upsert(ka.clone(), a.clone()),
            Change::Upsert(kb.clone(), b),
        ]);
        let board = crate::status::StatusBoard::new();
        let handle = board.open(crate::status::StreamStatus::new("node-1", None));
        let mut session = NodeSession::new(
            DeltaRequest {
                node: "node-1".into(),
                ..DeltaRequest::default()
            },
            cache.clone(),
            Arc::default(),
            handle,
        );
        let none = HashMap::new();
        let (revision, delta) = cache.delta("node-1", reported(&none), &none).unwrap();
        let response = session.prepare(revision, delta);
        let shown = &board.streams()[0];
        assert_eq!(shown.pending.map(|(r, _)| r), Some(revision));
        assert_eq!(shown.synced_revision, 0);
        // The proxy refuses "a" and takes "b".
        session.on_request(DeltaRequest {
            response_nonce: response.nonce.clone(),
            errors: vec![ferry_api::proto::ResourceError {
                key: Some(ka.to_proto()),
                message: "addresses[0]: 5 bytes".into(),
            }],
            ..DeltaRequest::default()
        });
        let shown = &board.streams()[0];
        assert_eq!(shown.synced_revision, revision);
        assert!(shown.pending.is_none());
        assert_eq!(shown.nacks, 1);
        assert_eq!(shown.rejections.len(), 1);
        assert_eq!(shown.rejections[&ka].message, "addresses[0]: 5 bytes");
        assert_eq!(shown.rejections[&ka].version, a.version());
        // A new version of "a" is taken: the rejection goes.
        let (_, mut a2) = node("a", "10.0.0.9");
        a2.scope = Scope::AllNodes;
        cache.commit(vec![Change::Upsert(ka.clone(), a2)]);
        let (revision, delta) = cache
            .delta("node-1", Held::InSyncAt(revision), &session.rejected)
            .unwrap();
        assert_eq!(names(&delta).0, ["a"]);
        let response = session.prepare(revision, delta);
        session.on_request(DeltaRequest {
            response_nonce: response.nonce,
            ..DeltaRequest::default()
        });
        let shown = &board.streams()[0];
        assert!(shown.rejections.is_empty());
        assert_eq!(shown.nacks, 1);
        assert_eq!(shown.synced_revision, revision);
        // The stream's entry goes with the session.
        drop(session);
        assert!(board.streams().is_empty());
    }

    #[test]
    fn a_commit_larger_than_the_log_stays_whole() {
        let cache = ConfigCache::with_log_capacity(2);
        let none = HashMap::new();
        let (ka, a) = node("a", "10.0.0.1");
        cache.commit(vec![Change::Upsert(ka, a)]);
        // Three changes in one revision, with room for two: the revision
        // before is trimmed, this one is kept whole.
        let batch: Vec<Change> = ["b", "c", "d"]
            .iter()
            .map(|n| {
                let (k, p) = node(n, "10.0.0.2");
                Change::Upsert(k, p)
            })
            .collect();
        cache.commit(batch);
        let (rev, delta) = cache.delta("x", Held::InSyncAt(1), &none).unwrap();
        assert_eq!(rev, 2);
        assert_eq!(names(&delta).0, ["b", "c", "d"]);
        // The next commit trims it.
        let (ke, e) = node("e", "10.0.0.3");
        cache.commit(vec![Change::Upsert(ke, e)]);
        assert_eq!(
            cache.delta("x", Held::InSyncAt(1), &none).unwrap_err(),
            FellBehind { seen: 1, floor: 2 }
        );
    }

    #[test]
    fn the_first_configuration_is_not_logged_and_revision_0_gets_all_of_it() {
        let cache = ConfigCache::default();
        let none = HashMap::new();
        let (ka, a) = node("a", "10.0.0.1");
        let (kb, b) = node("b", "10.0.0.2");
        cache.commit(vec![Change::Upsert(ka.clone(), a), Change::Upsert(kb, b)]);
        assert_eq!(cache.read().log.len(), 0);
        let (rev, delta) = cache.delta("x", Held::InSyncAt(0), &none).unwrap();
        assert_eq!(rev, 1);
        assert_eq!(names(&delta).0, ["a", "b"]);
        // Later ones are.
        let (_, a2) = node("a", "10.0.0.9");
        cache.commit(vec![Change::Upsert(ka, a2)]);
        assert_eq!(cache.read().log.len(), 1);
        let (_, delta) = cache.delta("x", Held::InSyncAt(1), &none).unwrap();
        assert_eq!(names(&delta).0, ["a"]);
        let (_, delta) = cache.delta("x", Held::InSyncAt(0), &none).unwrap();
        assert_eq!(names(&delta).0, ["a", "b"]);
    }

    #[test]
    fn a_stream_from_before_the_mesh_emptied_gets_everything_after_it_refills() {
        let cache = ConfigCache::with_log_capacity(2);
        let none = HashMap::new();
        let (ka, a) = node("a", "10.0.0.1");
        cache.commit(vec![Change::Upsert(ka.clone(), a)]);
        let (_, a2) = node("a", "10.0.0.2");
        cache.commit(vec![Change::Upsert(ka.clone(), a2)]);
        // Revision 3 empties the mesh; revision 4 refills it (a first
        // configuration again, not logged); revision 5 trims the log.
        cache.commit(vec![Change::Remove(ka)]);
        let (kb, b) = node("b", "10.0.0.3");
        let (kc, c) = node("c", "10.0.0.4");
        cache.commit(vec![Change::Upsert(kb.clone(), b), Change::Upsert(kc, c)]);
        let (_, b2) = node("b", "10.0.0.5");
        cache.commit(vec![Change::Upsert(kb, b2)]);
        // A stream that last saw revision 3 must not get revision 5 alone
        // (it would never hear of c).
        assert_eq!(
            cache.delta("x", Held::InSyncAt(3), &none).unwrap_err(),
            FellBehind { seen: 3, floor: 4 }
        );
        let (_, delta) = cache.delta("x", Held::InSyncAt(4), &none).unwrap();
        assert_eq!(names(&delta).0, ["b"]);
    }

    #[test]
    fn a_stream_behind_the_log_is_told_so() {
        let cache = ConfigCache::with_log_capacity(2);
        let none = HashMap::new();
        for i in 0..4 {
            let (k, n) = node("a", &format!("10.0.0.{i}"));
            cache.commit(vec![Change::Upsert(k, n)]);
        }
        assert_eq!(
            cache.delta("x", Held::InSyncAt(1), &none).unwrap_err(),
            FellBehind { seen: 1, floor: 2 }
        );
        assert!(cache.delta("x", Held::InSyncAt(2), &none).is_ok());
        assert!(cache.delta("x", reported(&none), &none).is_ok());
    }
}
