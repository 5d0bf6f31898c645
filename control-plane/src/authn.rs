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
}

impl Default for ReviewLimits {
    fn default() -> Self {
        Self {
            accepted_for: Duration::from_secs(60),
            refused_for: Duration::from_secs(10),
            in_flight: 8,
            remembered: 10_000,
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
                let token = request
                    .metadata()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .ok_or_else(|| {
                        Status::unauthenticated(
                            "a service account token is required (authorization: Bearer)",
                        )
                    })?;
                reviewer.node(token.trim()).await.map(Some)
            }
        }
    }
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
    /// Reviewed tokens: the node, or the refusal, and when.
    cache: Mutex<HashMap<String, Reviewed>>,
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

    fn cached(&self, token: &str) -> Option<Result<String, Status>> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let (outcome, at) = cache.get(token)?;
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
        if let Some(outcome) = self.cached(token) {
            return outcome;
        }
        let _permit = self
            .reviews
            .acquire()
            .await
            .map_err(|_| Status::unavailable("shutting down"))?;
        // Another caller may have reviewed it while this one waited.
        if let Some(outcome) = self.cached(token) {
            return outcome;
        }
        let outcome = self.review(token).await;
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
            cache.insert(token.to_string(), (outcome.clone(), Instant::now()));
        }
        outcome
    }

    async fn review(&self, token: &str) -> Result<String, Status> {
        let review = TokenReview {
            metadata: ObjectMeta::default(),
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![self.audience.clone()]),
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
