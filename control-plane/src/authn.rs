//! Who is calling: how a proxy proves which node it serves
//! ([`Authenticator`]), for the config stream and the mesh CA alike.
//!
//! - **Node certificate** (`ferry-certs`, the local lab): the client
//!   certificate of the mTLS connection names the node
//!   ([`authenticated_node`]).
//! - **Service account token** (in a cluster): the proxy sends a projected
//!   token with its own audience as `authorization: Bearer ...`; the
//!   control plane asks the API server (TokenReview) whose it is, requires
//!   the proxy DaemonSet's service account, and learns the node from the
//!   pod the token is bound to (its `spec.nodeName`, cross-checked with
//!   the token's node claim when the API server adds one). Outcomes are
//!   remembered for a while and reviews in flight are bounded
//!   ([`ReviewLimits`]), so unknown tokens cannot flood the API server.
//!
//! The read-only status API ([`crate::status`]) admits the same node
//! credentials, and, in a cluster, people and tools holding a Kubernetes
//! token allowed to `get` the resource `meshstatus` of API group
//! `ferry.dev` in the control plane's namespace (TokenReview, then
//! SubjectAccessReview): [`Authenticator::viewer`]. Nobody is anonymous.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_api::identity::NodeIdentity;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::{Api, Client};
use tonic::{Request, Status};

/// How the [`TokenReviewer`] bounds its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReviewLimits {
    /// How long a reviewed token is trusted without asking again.
    pub accepted_for: Duration,
    /// How long a refused token is refused without asking again.
    pub refused_for: Duration,
    /// TokenReviews in flight at most.
    pub in_flight: usize,
    /// Outcomes remembered at most (expired ones are dropped first).
    pub remembered: usize,
    /// Longest a caller waits for its review, its turn included: an API
    /// server that stalls, or a flood of unknown tokens ahead of it, is
    /// answered `UNAVAILABLE` (the proxy retries) instead of holding the
    /// caller and a review slot for the client's own read timeout.
    pub answer_within: Duration,
}

impl Default for ReviewLimits {
    fn default() -> Self {
        Self {
            accepted_for: Duration::from_secs(60),
            refused_for: Duration::from_secs(10),
            in_flight: 8,
            remembered: 10_000,
            answer_within: Duration::from_secs(10),
        }
    }
}

/// How proxies prove which node they serve.
#[derive(Debug)]
pub enum Authenticator {
    /// Nobody is authenticated (plaintext config, no CA).
    None,
    /// A node credential issued by the mesh CA, in this trust domain.
    NodeCertificate { trust_domain: String },
    /// A service account token checked with TokenReview.
    ServiceAccountToken(Box<TokenReviewer>),
}

impl Authenticator {
    /// The node the request comes from; `None` when nothing authenticates
    /// requests. An error refuses the request.
    pub async fn node<T>(&self, request: &Request<T>) -> Result<Option<String>, Status> {
        match self {
            Authenticator::None => Ok(None),
            Authenticator::NodeCertificate { trust_domain } => {
                authenticated_node(request, trust_domain)
            }
            Authenticator::ServiceAccountToken(reviewer) => {
                let token = bearer(request).ok_or_else(|| {
                    Status::unauthenticated(
                        "a service account token is required (authorization: Bearer)",
                    )
                })?;
                reviewer.node(token).await.map(Some)
            }
        }
    }
}

/// How often the token of an open stream is reviewed again: 1,000 proxies
/// cost the API server about three TokenReviews a second.
pub const STREAM_REVIEW_INTERVAL: Duration = Duration::from_secs(300);

/// What bounds a long-lived stream (a proxy's config stream) opened with a
/// request's credential: a node credential ends with its certificate, a
/// service account token is reviewed again every
/// [`STREAM_REVIEW_INTERVAL`] (the pod deleted, the token expired or
/// revoked); none is unbounded. Checked once when the
/// stream opened, a credential would otherwise hold it for ever.
pub struct StreamBound {
    kind: BoundKind,
    next_review: tokio::time::Instant,
}

impl std::fmt::Debug for StreamBound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        let kind = match &self.kind {
            BoundKind::Unbounded => "unbounded".to_string(),
            BoundKind::Until(at) => format!("until {at:?}"),
            BoundKind::Token { .. } => "token, reviewed again".to_string(),
        };
        f.debug_struct("StreamBound")
            .field("kind", &kind)
            .field("next_review", &self.next_review)
            .finish()
    }
}

enum BoundKind {
    Unbounded,
    Until(std::time::SystemTime),
    Token {
        auth: std::sync::Arc<Authenticator>,
        token: String,
    },
}

impl Authenticator {
    /// The bound of a stream opened with `request` (already authenticated
    /// by [`Authenticator::node`]).
    pub fn stream_bound<T>(self: &std::sync::Arc<Self>, request: &Request<T>) -> StreamBound {
        let kind = match &**self {
            Authenticator::None => BoundKind::Unbounded,
            Authenticator::NodeCertificate { .. } => request
                .peer_certs()
                .and_then(|certs| certs.first().cloned())
                .and_then(|leaf| ferry_pki::not_after(leaf.as_ref()).ok())
                .map_or(BoundKind::Unbounded, BoundKind::Until),
            Authenticator::ServiceAccountToken(_) => match bearer(request) {
                Some(token) => BoundKind::Token {
                    auth: self.clone(),
                    token: token.to_string(),
                },
                None => BoundKind::Unbounded,
            },
        };
        StreamBound {
            kind,
            next_review: tokio::time::Instant::now() + STREAM_REVIEW_INTERVAL,
        }
    }
}

impl StreamBound {
    /// When the node credential the stream was opened with expires.
    pub fn credential_not_after(&self) -> Option<std::time::SystemTime> {
        match self.kind {
            BoundKind::Until(at) => Some(at),
            _ => None,
        }
    }

    /// Resolves, with the refusal to end the stream with, once the
    /// credential no longer holds for `node`. A review the API server
    /// cannot answer is not the credential's fault: the stream goes on and
    /// the review is tried again later. Cancel-safe (a `select!` branch):
    /// the time of the next review is kept across calls.
    pub async fn ended(&mut self, node: &str) -> Status {
        match &self.kind {
            BoundKind::Unbounded => std::future::pending().await,
            BoundKind::Until(at) => {
                let left = at
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default();
                tokio::time::sleep(left).await;
                Status::unauthenticated("the node credential expired: reconnect with a renewed one")
            }
            BoundKind::Token { auth, token } => {
                let Authenticator::ServiceAccountToken(reviewer) = &**auth else {
                    return std::future::pending().await;
                };
                loop {
                    tokio::time::sleep_until(self.next_review).await;
                    let outcome = reviewer.node(token).await;
                    self.next_review = tokio::time::Instant::now() + STREAM_REVIEW_INTERVAL;
                    match outcome {
                        Ok(reviewed) if reviewed == node => {}
                        Ok(reviewed) => {
                            return Status::permission_denied(format!(
                                "the token is now for node {reviewed}, not {node}"
                            ))
                        }
                        Err(status) if status.code() == tonic::Code::Unavailable => {}
                        Err(status) => return status,
                    }
                }
            }
        }
    }
}

/// The RBAC check a status caller's token must pass: verb `get` on
/// resource `meshstatus` of API group `ferry.dev`, in the control plane's
/// namespace.
pub const STATUS_API_GROUP: &str = "ferry.dev";
/// See [`STATUS_API_GROUP`].
pub const STATUS_RESOURCE: &str = "meshstatus";
/// See [`STATUS_API_GROUP`].
pub const STATUS_VERB: &str = "get";

impl Authenticator {
    /// Who may read the status API: a node credential, or a Kubernetes
    /// token RBAC allows to `get` `meshstatus.ferry.dev`. An error refuses
    /// the request.
    pub async fn viewer<T>(&self, request: &Request<T>) -> Result<Viewer, Status> {
        match self {
            Authenticator::None => Err(Status::unauthenticated(
                "the status API needs authenticated callers: this control plane runs without --tls-dir or --ca-secret",
            )),
            Authenticator::NodeCertificate { trust_domain } => {
                match authenticated_node(request, trust_domain)? {
                    Some(node) => Ok(Viewer::Node(node)),
                    None => Err(Status::unauthenticated(
                        "present a node credential (mTLS client certificate)",
                    )),
                }
            }
            Authenticator::ServiceAccountToken(reviewer) => {
                let token = bearer(request).ok_or_else(|| {
                    Status::unauthenticated(format!(
                        "a Kubernetes token allowed to {STATUS_VERB} {STATUS_RESOURCE}.{STATUS_API_GROUP} is required (authorization: Bearer)"
                    ))
                })?;
                reviewer.viewer(token).await.map(Viewer::User)
            }
        }
    }
}

/// Who reads the status API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Viewer {
    /// A proxy's node credential: it sees its own node's resources only.
    Node(String),
    /// A Kubernetes user RBAC allows.
    User(String),
}

impl std::fmt::Display for Viewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Viewer::Node(node) => write!(f, "node {node}"),
            Viewer::User(user) => write!(f, "user {user}"),
        }
    }
}

/// The bearer token of a request.
fn bearer<T>(request: &Request<T>) -> Option<&str> {
    request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// What a token is reviewed for: each is remembered on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Purpose {
    /// A proxy proving its node.
    Node,
    /// A caller of the status API.
    Viewer,
}

/// A review's outcome (the node, or the refusal) and when it was made.
type Reviewed = (Result<String, Status>, Instant);

/// Checks proxies' tokens with the API server.
pub struct TokenReviewer {
    client: Client,
    audience: String,
    /// The proxies' service account: namespace and name.
    namespace: String,
    account: String,
    /// Reviewed tokens, per purpose: the node (or the caller's name), or
    /// the refusal, and when.
    cache: Mutex<HashMap<(Purpose, String), Reviewed>>,
    /// At most `limits.in_flight` TokenReviews in flight: unknown tokens
    /// cannot flood the API server.
    reviews: tokio::sync::Semaphore,
    limits: ReviewLimits,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("audience", &self.audience)
            .field("namespace", &self.namespace)
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

impl TokenReviewer {
    pub fn new(
        client: Client,
        audience: &str,
        namespace: &str,
        account: &str,
        limits: ReviewLimits,
    ) -> Self {
        Self {
            client,
            audience: audience.to_string(),
            namespace: namespace.to_string(),
            account: account.to_string(),
            cache: Mutex::default(),
            reviews: tokio::sync::Semaphore::new(limits.in_flight.max(1)),
            limits,
        }
    }

    fn cached(&self, purpose: Purpose, token: &str) -> Option<Result<String, Status>> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let (outcome, at) = cache.get(&(purpose, token.to_string()))?;
        self.fresh(outcome, *at).then(|| outcome.clone())
    }

    /// Whether a remembered outcome still holds.
    fn fresh(&self, outcome: &Result<String, Status>, at: Instant) -> bool {
        let ttl = match outcome {
            Ok(_) => self.limits.accepted_for,
            Err(_) => self.limits.refused_for,
        };
        at.elapsed() < ttl
    }

    /// The node of the proxy holding `token`.
    pub async fn node(&self, token: &str) -> Result<String, Status> {
        self.remembered(Purpose::Node, token).await
    }

    /// Whether `token` may read the status API (its user's name if so).
    pub async fn viewer(&self, token: &str) -> Result<String, Status> {
        self.remembered(Purpose::Viewer, token).await
    }

    /// The outcome of reviewing `token` for `purpose`: remembered, else
    /// asked of the API server (within the bound on reviews in flight).
    async fn remembered(&self, purpose: Purpose, token: &str) -> Result<String, Status> {
        if let Some(outcome) = self.cached(purpose, token) {
            return outcome;
        }
        let within = self.limits.answer_within;
        let outcome = tokio::time::timeout(within, async {
            let _permit = self
                .reviews
                .acquire()
                .await
                .map_err(|_| Status::unavailable("shutting down"))?;
            // Another caller may have reviewed it while this one waited.
            if let Some(outcome) = self.cached(purpose, token) {
                return outcome;
            }
            match purpose {
                Purpose::Node => self.review(token).await,
                Purpose::Viewer => self.review_viewer(token).await,
            }
        })
        .await
        .unwrap_or_else(|_| {
            Err(Status::unavailable(format!(
                "the token could not be reviewed within {within:?} (the API server is slow, or reviews are queued)"
            )))
        });
        // API trouble is not the token's fault: not remembered.
        let remember = match &outcome {
            Ok(_) => true,
            Err(status) => status.code() != tonic::Code::Unavailable,
        };
        if remember {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.len() >= self.limits.remembered {
                cache.retain(|_, (o, at)| self.fresh(o, *at));
                if cache.len() >= self.limits.remembered {
                    cache.clear();
                }
            }
            cache.insert(
                (purpose, token.to_string()),
                (outcome.clone(), Instant::now()),
            );
        }
        outcome
    }

    /// TokenReview (for the API server's own audiences: a person's or a
    /// tool's token), then SubjectAccessReview of the status verb in the
    /// control plane's namespace.
    async fn review_viewer(&self, token: &str) -> Result<String, Status> {
        use k8s_openapi::api::authorization::v1::{
            ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
        };
        let status = self.token_review(token, None).await?;
        let user = status.user.unwrap_or_default();
        let username = user.username.clone().unwrap_or_default();
        let access = SubjectAccessReview {
            metadata: ObjectMeta::default(),
            spec: SubjectAccessReviewSpec {
                user: user.username,
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                resource_attributes: Some(ResourceAttributes {
                    group: Some(STATUS_API_GROUP.into()),
                    resource: Some(STATUS_RESOURCE.into()),
                    verb: Some(STATUS_VERB.into()),
                    namespace: Some(self.namespace.clone()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            status: None,
        };
        let decided = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &access)
            .await
            .map_err(|e| Status::unavailable(format!("SubjectAccessReview failed: {e}")))?;
        let decision = decided
            .status
            .ok_or_else(|| Status::unavailable("SubjectAccessReview returned no status"))?;
        if !decision.allowed || decision.denied == Some(true) {
            return Err(Status::permission_denied(format!(
                "{username} may not {STATUS_VERB} {STATUS_RESOURCE}.{STATUS_API_GROUP} in namespace {}{}",
                self.namespace,
                decision
                    .reason
                    .filter(|r| !r.is_empty())
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            )));
        }
        Ok(username)
    }

    /// Asks the API server who holds `token` (for `audiences`; `None`:
    /// the API server's own); an unauthenticated token is refused.
    async fn token_review(
        &self,
        token: &str,
        audiences: Option<Vec<String>>,
    ) -> Result<k8s_openapi::api::authentication::v1::TokenReviewStatus, Status> {
        let review = TokenReview {
            metadata: ObjectMeta::default(),
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences,
            },
            status: None,
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Status::unavailable(format!("TokenReview failed: {e}")))?;
        let status = reviewed
            .status
            .ok_or_else(|| Status::unavailable("TokenReview returned no status"))?;
        if status.authenticated != Some(true) {
            return Err(Status::unauthenticated(format!(
                "token rejected: {}",
                status.error.as_deref().unwrap_or("not authenticated")
            )));
        }
        Ok(status)
    }

    async fn review(&self, token: &str) -> Result<String, Status> {
        let status = self
            .token_review(token, Some(vec![self.audience.clone()]))
            .await?;
        // An authenticator that ignores audiences answers without any:
        // the token must be shown to be ours.
        if !status
            .audiences
            .as_ref()
            .is_some_and(|a| a.contains(&self.audience))
        {
            return Err(Status::unauthenticated(format!(
                "token is not for audience {}",
                self.audience
            )));
        }
        let user = status.user.unwrap_or_default();
        let want = format!("system:serviceaccount:{}:{}", self.namespace, self.account);
        let username = user.username.unwrap_or_default();
        if username != want {
            return Err(Status::permission_denied(format!(
                "token of {username} is not the proxies' service account {want}"
            )));
        }
        let extra = user.extra.unwrap_or_default();
        let first = |key: &str| extra.get(key).and_then(|v| v.first()).cloned();
        let pod_name = first("authentication.kubernetes.io/pod-name").ok_or_else(|| {
            Status::permission_denied("the token is not bound to a pod (no pod-name claim)")
        })?;
        let pod_uid = first("authentication.kubernetes.io/pod-uid");
        let pod = Api::<Pod>::namespaced(self.client.clone(), &self.namespace)
            .get_opt(&pod_name)
            .await
            .map_err(|e| Status::unavailable(format!("reading pod {pod_name}: {e}")))?
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "the token's pod {}/{pod_name} does not exist",
                    self.namespace
                ))
            })?;
        if let (Some(claimed), Some(actual)) = (&pod_uid, &pod.metadata.uid) {
            if claimed != actual {
                return Err(Status::permission_denied(format!(
                    "the token's pod {pod_name} was replaced (uid {claimed}, now {actual})"
                )));
            }
        }
        let node = pod
            .spec
            .and_then(|s| s.node_name)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                Status::permission_denied(format!("the token's pod {pod_name} has no node"))
            })?;
        if let Some(claimed) = first("authentication.kubernetes.io/node-name") {
            if claimed != node {
                return Err(Status::permission_denied(format!(
                    "the token claims node {claimed}, its pod runs on {node}"
                )));
            }
        }
        Ok(node)
    }
}

/// The node a request comes from, from its verified client certificate.
/// `None` when the connection carries no client certificate (plaintext).
pub fn authenticated_node<T>(
    request: &Request<T>,
    trust_domain: &str,
) -> Result<Option<String>, Status> {
    let Some(certs) = request.peer_certs() else {
        return Ok(None);
    };
    let Some(leaf) = certs.first() else {
        return Ok(None);
    };
    let uris = ferry_pki::uri_sans(leaf.as_ref())
        .map_err(|e| Status::unauthenticated(format!("unreadable client certificate: {e}")))?;
    let node = uris
        .iter()
        .find_map(|u| u.parse::<NodeIdentity>().ok())
        .ok_or_else(|| {
            Status::unauthenticated("the client certificate is not a node credential")
        })?;
    if node.trust_domain != trust_domain {
        return Err(Status::unauthenticated(format!(
            "node credential {node} is outside trust domain {trust_domain}"
        )));
    }
    Ok(Some(node.node))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An API server that takes connections and never answers, and a
    /// client of it (the listener must be kept while it is used).
    fn stalled_api_server() -> (std::net::TcpListener, Client) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url: http::Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let client = Client::try_from(kube::Config::new(url)).unwrap();
        (listener, client)
    }

    /// On tokio's paused clock: it moves on only when every task waits.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_api_server_is_answered_unavailable_in_time() {
        let (listener, client) = stalled_api_server();
        let limits = ReviewLimits {
            in_flight: 1,
            ..ReviewLimits::default()
        };
        let reviewer = std::sync::Arc::new(TokenReviewer::new(
            client,
            "ferry",
            "ferry-system",
            "ferry-proxy",
            limits,
        ));
        let started = tokio::time::Instant::now();
        // Two callers, one review slot: the second waits its turn, within
        // the same bound.
        let second = {
            let reviewer = reviewer.clone();
            tokio::spawn(async move { reviewer.node("other").await })
        };
        let first = reviewer.node("token").await.unwrap_err();
        assert_eq!(first.code(), tonic::Code::Unavailable, "{first}");
        let second = second.await.unwrap().unwrap_err();
        assert_eq!(second.code(), tonic::Code::Unavailable, "{second}");
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        // Not the token's fault: not remembered.
        assert!(reviewer.cached(Purpose::Node, "token").is_none());
        drop(listener);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_ends_with_its_node_credential_and_outlives_api_trouble() {
        // A node credential: the stream ends when its certificate does.
        let mut bound = StreamBound {
            kind: BoundKind::Until(std::time::SystemTime::now() + Duration::from_secs(30)),
            next_review: tokio::time::Instant::now(),
        };
        let started = tokio::time::Instant::now();
        let ended = bound.ended("node-a").await;
        assert_eq!(ended.code(), tonic::Code::Unauthenticated, "{ended}");
        assert!(
            started.elapsed() >= Duration::from_secs(29),
            "{:?}",
            started.elapsed()
        );

        // A token whose reviews the API server never answers: the stream
        // goes on (the reviews time out as UNAVAILABLE and are tried again).
        let (listener, client) = stalled_api_server();
        let auth = std::sync::Arc::new(Authenticator::ServiceAccountToken(Box::new(
            TokenReviewer::new(
                client,
                "ferry",
                "ferry-system",
                "ferry-proxy",
                ReviewLimits::default(),
            ),
        )));
        let mut bound = StreamBound {
            kind: BoundKind::Token {
                auth,
                token: "token".into(),
            },
            next_review: tokio::time::Instant::now(),
        };
        assert!(
            tokio::time::timeout(Duration::from_secs(600), bound.ended("node-a"))
                .await
                .is_err()
        );
        drop(listener);
    }

    #[tokio::test]
    async fn the_status_api_admits_nobody_anonymous() {
        let request = Request::new(());
        let err = Authenticator::None.viewer(&request).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(err.message().contains("--tls-dir or --ca-secret"), "{err}");
        let certificates = Authenticator::NodeCertificate {
            trust_domain: "cluster.local".into(),
        };
        let err = certificates.viewer(&request).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(err.message().contains("node credential"), "{err}");
    }
}
