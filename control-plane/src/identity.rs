//! Who a proxy is, and the mesh CA's key material, in a cluster.
//!
//! Two ways for a proxy to prove its node ([`Authenticator`]):
//!
//! - **Node certificate** (`ferry-certs`, the local lab): the client
//!   certificate of the mTLS connection names the node.
//! - **Service account token** (in a cluster): the proxy sends a projected
//!   token with its own audience as `authorization: Bearer ...`; the
//!   control plane asks the API server (TokenReview) whose it is, requires
//!   the proxy DaemonSet's service account, and learns the node from the
//!   pod the token is bound to (its `spec.nodeName`, cross-checked with
//!   the token's node claim when the API server adds one). A token is
//!   reviewed at most once a minute ([`TOKEN_CACHE`]).
//!
//! The CA root and key live in a Secret ([`load_or_create_ca`]), generated
//! on first start when allowed; several replicas starting together agree
//! on whichever Secret was created first. The root certificate is
//! published in a ConfigMap for the proxies ([`publish_root`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_certs::Authority;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::PostParams;
use kube::{Api, Client};
use tonic::{Request, Status};

/// How long a reviewed token is trusted without asking again.
pub const TOKEN_CACHE: Duration = Duration::from_secs(60);
/// How long a refused token is refused without asking again.
pub const REFUSAL_CACHE: Duration = Duration::from_secs(10);
/// TokenReviews in flight at most.
const REVIEWS_IN_FLIGHT: usize = 8;
/// Entries kept at most (expired ones are dropped first).
const CACHE_MAX: usize = 10_000;
/// The Secret keys of the CA.
pub const CA_CERT_KEY: &str = "ca.pem";
pub const CA_KEY_KEY: &str = "ca-key.pem";
/// The ConfigMap key of the published root.
pub const ROOT_KEY: &str = "ca.pem";

/// Errors of the in-cluster identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("the Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("Secret {namespace}/{name}: {reason}")]
    Secret {
        namespace: String,
        name: String,
        reason: String,
    },
    #[error("CA: {0}")]
    Ca(#[from] ferry_certs::CertError),
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
                crate::ca::authenticated_node(request, trust_domain)
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
    /// At most this many TokenReviews in flight: unknown tokens cannot
    /// flood the API server.
    reviews: tokio::sync::Semaphore,
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
    pub fn new(client: Client, audience: &str, namespace: &str, account: &str) -> Self {
        Self {
            client,
            audience: audience.to_string(),
            namespace: namespace.to_string(),
            account: account.to_string(),
            cache: Mutex::default(),
            reviews: tokio::sync::Semaphore::new(REVIEWS_IN_FLIGHT),
        }
    }

    fn cached(&self, token: &str) -> Option<Result<String, Status>> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let (outcome, at) = cache.get(token)?;
        let fresh = match outcome {
            Ok(_) => at.elapsed() < TOKEN_CACHE,
            Err(_) => at.elapsed() < REFUSAL_CACHE,
        };
        fresh.then(|| outcome.clone())
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
            if cache.len() >= CACHE_MAX {
                cache.retain(|_, (o, at)| match o {
                    Ok(_) => at.elapsed() < TOKEN_CACHE,
                    Err(_) => at.elapsed() < REFUSAL_CACHE,
                });
                if cache.len() >= CACHE_MAX {
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

/// The mesh CA from Secret `namespace/name`; created with a new root for
/// `trust_domain` when absent and `create` allows it. When several
/// replicas race to create it, every one ends up with the same CA.
pub async fn load_or_create_ca(
    client: &Client,
    namespace: &str,
    name: &str,
    create: bool,
    trust_domain: &str,
) -> Result<Authority, IdentityError> {
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    let error = |reason: String| IdentityError::Secret {
        namespace: namespace.to_string(),
        name: name.to_string(),
        reason,
    };
    for _ in 0..2 {
        if let Some(secret) = secrets.get_opt(name).await? {
            let data = secret.data.unwrap_or_default();
            let text = |key: &str| {
                data.get(key)
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                    .ok_or_else(|| error(format!("no {key}")))
            };
            let origin = format!("Secret {namespace}/{name}");
            return Ok(Authority::from_pem(
                text(CA_CERT_KEY)?,
                text(CA_KEY_KEY)?,
                Path::new(&origin),
            )?);
        }
        if !create {
            return Err(error(
                "absent, and creating it is off (--ca-secret-create=false): supply the CA".into(),
            ));
        }
        let authority = Authority::generate(trust_domain, Duration::from_secs(10 * 365 * 86_400))?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                labels: Some(
                    [("app.kubernetes.io/part-of".to_string(), "ferry".to_string())].into(),
                ),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(
                [
                    (
                        CA_CERT_KEY.to_string(),
                        ByteString(authority.cert_pem().as_bytes().to_vec()),
                    ),
                    (
                        CA_KEY_KEY.to_string(),
                        ByteString(authority.key_pem().as_bytes().to_vec()),
                    ),
                ]
                .into(),
            ),
            ..Secret::default()
        };
        match secrets.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!(
                    namespace,
                    name,
                    trust_domain,
                    "mesh CA generated and stored"
                );
                return Ok(authority);
            }
            // Another replica was first: use its CA.
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(error("created by another replica but unreadable".into()))
}

/// Publishes the root certificate in ConfigMap `namespace/name` (created,
/// or updated when it differs).
pub async fn publish_root(
    client: &Client,
    namespace: &str,
    name: &str,
    root_pem: &str,
) -> Result<(), IdentityError> {
    let maps = Api::<ConfigMap>::namespaced(client.clone(), namespace);
    let data = Some([(ROOT_KEY.to_string(), root_pem.to_string())].into());
    match maps.get_opt(name).await? {
        Some(existing) if existing.data == data => Ok(()),
        Some(mut existing) => {
            existing.data = data;
            maps.replace(name, &PostParams::default(), &existing)
                .await?;
            Ok(())
        }
        None => {
            let map = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    namespace: Some(namespace.to_string()),
                    ..ObjectMeta::default()
                },
                data,
                ..ConfigMap::default()
            };
            match maps.create(&PostParams::default(), &map).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
    }
}
