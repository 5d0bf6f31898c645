//! The read-only status API (`ferry.v1.MeshStatus`, on the config port):
//! what this replica knows of the mesh, for `ferryctl status`.
//!
//! [`StatusBoard`] is written by the config streams and the mesh CA and
//! read only when someone asks:
//! - every open config stream ([`StreamStatus`], one lock per stream,
//!   updated on the stream's own task): the node, the revision its proxy
//!   is in sync at, the response in flight, the resources it refuses
//!   (NACKs, with the proxy's reason), its node credential's expiry;
//! - the latest certificate signed for each identity on each node.
//!
//! Revisions count per replica, so `ferryctl` compares a proxy with the
//! replica it streams from; resource versions agree across replicas.
//! Callers authenticate ([`crate::authn::Authenticator::viewer`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use ferry_api::proto::mesh_status_server::{MeshStatus, MeshStatusServer};
use ferry_api::proto::{
    self, NodeResourcesRequest, NodeResourcesResponse, StatusRequest, StatusResponse,
};
use ferry_api::ResourceKey;
use tonic::{Request, Response, Status};

use crate::authn::Authenticator;
use crate::push::ConfigCache;

/// Most certificates remembered (identities × nodes); expired ones go
/// first.
const MAX_ISSUED: usize = 100_000;

/// A resource a proxy refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub version: u64,
    pub message: String,
    pub at: SystemTime,
}

/// One open config stream, as its session keeps it up to date.
#[derive(Debug, Clone)]
pub struct StreamStatus {
    pub node: String,
    pub peer: Option<std::net::SocketAddr>,
    pub connected_at: SystemTime,
    /// The revision the proxy is in sync at (0: not yet).
    pub synced_revision: u64,
    /// The response in flight: its revision and when it was sent.
    pub pending: Option<(u64, SystemTime)>,
    /// Resources the proxy refuses now.
    pub rejections: BTreeMap<ResourceKey, Rejection>,
    /// NACKed resources over the stream's life.
    pub nacks: u64,
    /// The node credential the stream was opened with expires then.
    pub credential_not_after: Option<SystemTime>,
}

impl StreamStatus {
    pub fn new(node: &str, peer: Option<std::net::SocketAddr>) -> Self {
        Self {
            node: node.to_string(),
            peer,
            connected_at: SystemTime::now(),
            synced_revision: 0,
            pending: None,
            rejections: BTreeMap::new(),
            nacks: 0,
            credential_not_after: None,
        }
    }
}

/// A certificate the CA signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Issued {
    at: SystemTime,
    not_after: SystemTime,
}

/// What this replica knows of its proxies.
#[derive(Debug, Default)]
pub struct StatusBoard {
    streams: Mutex<HashMap<u64, Arc<Mutex<StreamStatus>>>>,
    next: AtomicU64,
    /// (node, identity) → the latest certificate signed.
    issued: Mutex<HashMap<(String, String), Issued>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update is a plain assignment: a panic mid-way leaves usable data.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl StatusBoard {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Lists a stream until the returned handle drops.
    pub fn open(self: &Arc<Self>, status: StreamStatus) -> StreamHandle {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let status = Arc::new(Mutex::new(status));
        lock(&self.streams).insert(id, status.clone());
        StreamHandle {
            board: self.clone(),
            id,
            status,
        }
    }

    /// Records a certificate signed for `identity` on `node`.
    pub fn issued(&self, node: &str, identity: &str, not_after: SystemTime) {
        let now = SystemTime::now();
        let mut issued = lock(&self.issued);
        let key = (node.to_string(), identity.to_string());
        // A renewal takes its certificate's place, full table or not.
        if issued.len() >= MAX_ISSUED && !issued.contains_key(&key) {
            issued.retain(|_, i| i.not_after > now);
            if issued.len() >= MAX_ISSUED {
                tracing::debug!(
                    node,
                    identity,
                    "status board full: certificate not recorded"
                );
                return;
            }
        }
        issued.insert(key, Issued { at: now, not_after });
    }

    /// Every open stream, oldest first.
    pub fn streams(&self) -> Vec<StreamStatus> {
        let streams: Vec<(u64, Arc<Mutex<StreamStatus>>)> = lock(&self.streams)
            .iter()
            .map(|(id, s)| (*id, s.clone()))
            .collect();
        let mut out: Vec<(u64, StreamStatus)> = streams
            .into_iter()
            .map(|(id, s)| (id, lock(&s).clone()))
            .collect();
        out.sort_by_key(|(id, _)| *id);
        out.into_iter().map(|(_, s)| s).collect()
    }

    /// Status of this replica, as the API answers; `needed` says whether a
    /// node still runs a mesh pod with an identity.
    pub fn response(
        &self,
        cache: &ConfigCache,
        replica: &Replica,
        needed: impl Fn(&str, &str) -> bool,
    ) -> StatusResponse {
        let (revision, resources, nodes) = cache.summary();
        let proxies = self.streams().into_iter().map(stream_proto).collect();
        let mut certificates: Vec<proto::IssuedCertificate> = lock(&self.issued)
            .iter()
            .map(|((node, identity), i)| proto::IssuedCertificate {
                node: node.clone(),
                identity: identity.clone(),
                issued_at_unix_ms: unix_ms(i.at),
                not_after_unix_ms: unix_ms(i.not_after),
                needed: needed(node, identity),
            })
            .collect();
        certificates.sort_by(|a, b| (&a.node, &a.identity).cmp(&(&b.node, &b.identity)));
        StatusResponse {
            replica: replica.name.clone(),
            version: format!(
                "{} ({})",
                ferry_api::build::VERSION,
                ferry_api::build::GIT_COMMIT
            ),
            revision,
            resources: resources as u64,
            nodes,
            proxies,
            certificates,
            now_unix_ms: unix_ms(SystemTime::now()),
            started_at_unix_ms: unix_ms(replica.started_at),
            ca: replica.ca,
        }
    }
}

fn stream_proto(s: StreamStatus) -> proto::ProxyStream {
    let (pending_revision, pending_since) = s.pending.unwrap_or((0, SystemTime::UNIX_EPOCH));
    proto::ProxyStream {
        node: s.node,
        peer: s.peer.map(|p| p.to_string()).unwrap_or_default(),
        connected_at_unix_ms: unix_ms(s.connected_at),
        synced_revision: s.synced_revision,
        pending_revision,
        pending_since_unix_ms: unix_ms(pending_since),
        rejections: s
            .rejections
            .into_iter()
            .map(|(key, r)| proto::Rejection {
                key: Some(key.to_proto()),
                version: r.version,
                message: r.message,
                at_unix_ms: unix_ms(r.at),
            })
            .collect(),
        nacks: s.nacks,
        credential_not_after_unix_ms: s.credential_not_after.map_or(0, unix_ms),
    }
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One stream's entry on the board; removed when this drops.
#[derive(Debug)]
pub struct StreamHandle {
    board: Arc<StatusBoard>,
    id: u64,
    status: Arc<Mutex<StreamStatus>>,
}

impl StreamHandle {
    /// Updates the stream's entry (its own lock: streams never wait on
    /// each other).
    pub fn update(&self, f: impl FnOnce(&mut StreamStatus)) {
        f(&mut lock(&self.status));
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        lock(&self.board.streams).remove(&self.id);
    }
}

/// What the replica says of itself.
#[derive(Debug, Clone)]
pub struct Replica {
    pub name: String,
    pub started_at: SystemTime,
    /// The mesh CA runs here.
    pub ca: bool,
}

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct MeshStatusService {
    board: Arc<StatusBoard>,
    cache: Arc<ConfigCache>,
    auth: Arc<Authenticator>,
    replica: Arc<Replica>,
    /// Which service accounts each node runs (the CA's index).
    accounts: Arc<crate::ca::NodeAccounts>,
}

impl MeshStatusService {
    pub fn new(
        board: Arc<StatusBoard>,
        cache: Arc<ConfigCache>,
        auth: Arc<Authenticator>,
        accounts: Arc<crate::ca::NodeAccounts>,
        replica: Replica,
    ) -> Self {
        Self {
            board,
            cache,
            auth,
            replica: Arc::new(replica),
            accounts,
        }
    }

    pub fn into_server(self) -> MeshStatusServer<Self> {
        MeshStatusServer::new(self)
    }
}

/// A node credential reads what its own node is served, as the config
/// stream gives it (no other node's policies); a user RBAC allows reads
/// any node's.
fn may_read_node(caller: &crate::authn::Viewer, node: &str) -> Result<(), Status> {
    match caller {
        crate::authn::Viewer::Node(own) if own != node => Err(Status::permission_denied(format!(
            "the credential of node {own} reads only its own node's resources, not {node}'s"
        ))),
        _ => Ok(()),
    }
}

impl MeshStatusService {
    /// Who is asking, or the refusal (logged).
    async fn caller<T>(&self, request: &Request<T>) -> Result<crate::authn::Viewer, Status> {
        self.auth.viewer(request).await.inspect_err(|status| {
            tracing::warn!(peer = ?request.remote_addr(), reason = %status.message(), "status request refused");
        })
    }
}

#[tonic::async_trait]
impl MeshStatus for MeshStatusService {
    async fn node_resources(
        &self,
        request: Request<NodeResourcesRequest>,
    ) -> Result<Response<NodeResourcesResponse>, Status> {
        let caller = self.caller(&request).await?;
        let node = request.into_inner().node;
        if node.is_empty() {
            return Err(Status::invalid_argument("node: must not be empty"));
        }
        may_read_node(&caller, &node)?;
        let (revision, published) = self.cache.for_node(&node);
        let resources = published
            .iter()
            .map(crate::translate::Published::resource)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::internal(format!("a published resource does not decode: {e}")))?;
        tracing::debug!(%caller, node, resources = resources.len(), "node resources requested");
        Ok(Response::new(NodeResourcesResponse {
            revision,
            resources,
        }))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let caller = self.caller(&request).await?;
        tracing::debug!(%caller, "status requested");
        let needed = |node: &str, identity: &str| {
            identity
                .parse::<ferry_api::identity::Identity>()
                .is_ok_and(|id| {
                    self.accounts
                        .allows(node, &id.namespace, &id.service_account)
                })
        };
        Ok(Response::new(self.board.response(
            &self.cache,
            &self.replica,
            needed,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::Kind;

    #[test]
    fn a_node_credential_reads_only_its_own_nodes_resources() {
        use crate::authn::Viewer;
        assert!(may_read_node(&Viewer::Node("node-a".into()), "node-a").is_ok());
        let refused = may_read_node(&Viewer::Node("node-a".into()), "node-b").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(may_read_node(&Viewer::User("alice".into()), "node-b").is_ok());
    }

    #[test]
    fn streams_are_listed_while_open_and_keep_their_updates() {
        let board = StatusBoard::new();
        let a = board.open(StreamStatus::new("node-a", None));
        let b = board.open(StreamStatus::new("node-b", None));
        let key = ResourceKey::new(Kind::Service, "default/web");
        a.update(|s| {
            s.synced_revision = 7;
            s.nacks += 1;
            s.rejections.insert(
                key.clone(),
                Rejection {
                    version: 3,
                    message: "bad".into(),
                    at: SystemTime::now(),
                },
            );
        });
        let streams = board.streams();
        assert_eq!(
            streams.iter().map(|s| s.node.as_str()).collect::<Vec<_>>(),
            ["node-a", "node-b"]
        );
        assert_eq!(streams[0].synced_revision, 7);
        assert_eq!(streams[0].rejections[&key].message, "bad");
        drop(a);
        let streams = board.streams();
        assert_eq!(streams.len(), 1);
        assert_eq!(streams[0].node, "node-b");
        drop(b);
        assert!(board.streams().is_empty());
    }

    #[test]
    fn the_latest_certificate_per_identity_and_node_is_kept() {
        let board = StatusBoard::default();
        let later = SystemTime::now() + std::time::Duration::from_secs(3600);
        let latest = later + std::time::Duration::from_secs(60);
        board.issued("node-a", "spiffe://td/ns/a/sa/x", later);
        board.issued("node-a", "spiffe://td/ns/a/sa/x", latest);
        board.issued("node-b", "spiffe://td/ns/a/sa/x", later);
        let cache = ConfigCache::new();
        let replica = Replica {
            name: "cp-0".into(),
            started_at: SystemTime::now(),
            ca: true,
        };
        let response = board.response(&cache, &replica, |node, _| node == "node-a");
        assert_eq!(response.replica, "cp-0");
        assert!(response.ca);
        let certs: Vec<(&str, u64)> = response
            .certificates
            .iter()
            .map(|c| (c.node.as_str(), c.not_after_unix_ms))
            .collect();
        assert_eq!(
            certs,
            [("node-a", unix_ms(latest)), ("node-b", unix_ms(later))]
        );
        let needed: Vec<bool> = response.certificates.iter().map(|c| c.needed).collect();
        assert_eq!(needed, [true, false]);
    }

    #[test]
    fn expired_certificates_make_room_when_the_board_is_full() {
        let board = StatusBoard::default();
        let past = SystemTime::now() - std::time::Duration::from_secs(1);
        let future = SystemTime::now() + std::time::Duration::from_secs(3600);
        {
            let mut issued = lock(&board.issued);
            for i in 0..MAX_ISSUED {
                issued.insert(
                    (format!("n{i}"), "id".into()),
                    Issued {
                        at: past,
                        not_after: if i == 0 { future } else { past },
                    },
                );
            }
        }
        board.issued("new", "id", future);
        // Full of live certificates: a renewal still takes its place.
        let later = future + std::time::Duration::from_secs(60);
        board.issued("n0", "id", later);
        let issued = lock(&board.issued);
        assert_eq!(issued.len(), 2);
        assert_eq!(
            issued
                .get(&("n0".to_string(), "id".to_string()))
                .map(|i| i.not_after),
            Some(later)
        );
        assert!(issued.contains_key(&("new".to_string(), "id".to_string())));
        assert!(issued.contains_key(&("n0".to_string(), "id".to_string())));
    }
}
