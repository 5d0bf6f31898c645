//! The mesh CA: signs workload certificates for proxies, with node
//! authorization.
//!
//! A proxy authenticates with its node credential (mTLS; the URI SAN
//! `spiffe://<td>/ferry/node/<name>` names its node). It may obtain
//! certificates only for service accounts of mesh pods scheduled on that
//! node; [`NodeAccounts`] keeps that index up to date from the translated
//! workloads. Every refusal is logged with its reason and returned to the
//! caller. The CSR carries only a public key: private keys never leave the
//! proxies.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ferry_api::identity::NodeIdentity;
use ferry_api::proto::certificate_authority_server::{
    CertificateAuthority, CertificateAuthorityServer,
};
use ferry_api::proto::{resource, SignRequest, SignResponse};
use ferry_api::Kind;
use ferry_certs::Authority;
use tonic::{Request, Response, Status};

use crate::translate::Change;

type Account = (String, String);

#[derive(Debug, Default)]
struct AccountsInner {
    /// workload key -> (node, (namespace, service account))
    workloads: HashMap<String, (String, Account)>,
    /// node -> service account -> number of mesh pods
    nodes: HashMap<String, HashMap<Account, usize>>,
}

/// Which service accounts have mesh pods on which node.
#[derive(Debug, Default)]
pub struct NodeAccounts {
    inner: RwLock<AccountsInner>,
}

impl NodeAccounts {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Follows a batch of published changes.
    pub fn update(&self, changes: &[Change]) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        for change in changes {
            let (key, entry) = match change {
                Change::Upsert(key, published) if key.kind == Kind::Workload => {
                    let entry = match &published.resource.body {
                        Some(resource::Body::Workload(w)) if w.mesh && !w.node.is_empty() => {
                            Some((
                                w.node.clone(),
                                (w.namespace.clone(), w.service_account.clone()),
                            ))
                        }
                        _ => None,
                    };
                    (key, entry)
                }
                Change::Remove(key) if key.kind == Kind::Workload => (key, None),
                _ => continue,
            };
            if let Some((node, account)) = inner.workloads.remove(&key.name) {
                if let Some(accounts) = inner.nodes.get_mut(&node) {
                    if let Some(n) = accounts.get_mut(&account) {
                        *n -= 1;
                        if *n == 0 {
                            accounts.remove(&account);
                        }
                    }
                    if accounts.is_empty() {
                        inner.nodes.remove(&node);
                    }
                }
            }
            if let Some((node, account)) = entry {
                *inner
                    .nodes
                    .entry(node.clone())
                    .or_default()
                    .entry(account.clone())
                    .or_default() += 1;
                inner.workloads.insert(key.name.clone(), (node, account));
            }
        }
    }

    /// Whether a mesh pod with this service account runs on `node`.
    pub fn allows(&self, node: &str, namespace: &str, service_account: &str) -> bool {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner
            .nodes
            .get(node)
            .is_some_and(|a| a.contains_key(&(namespace.to_string(), service_account.to_string())))
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
    let uris = ferry_certs::uri_sans(leaf.as_ref())
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

/// The CA service.
#[derive(Debug)]
pub struct MeshCa {
    authority: Arc<Authority>,
    accounts: Arc<NodeAccounts>,
    max_ttl: Duration,
    metrics: Arc<crate::metrics::Metrics>,
    auth: Arc<crate::identity::Authenticator>,
}

impl MeshCa {
    pub fn new(authority: Arc<Authority>, accounts: Arc<NodeAccounts>, max_ttl: Duration) -> Self {
        let trust_domain = authority.trust_domain().to_string();
        Self {
            authority,
            accounts,
            auth: Arc::new(crate::identity::Authenticator::NodeCertificate { trust_domain }),
            max_ttl,
            metrics: Arc::default(),
        }
    }

    pub fn into_server(self) -> CertificateAuthorityServer<Self> {
        CertificateAuthorityServer::new(self)
    }

    /// Authenticates callers with `auth` instead of node certificates.
    pub fn with_authenticator(mut self, auth: Arc<crate::identity::Authenticator>) -> Self {
        self.auth = auth;
        self
    }

    /// Counts signed and refused requests in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    fn count(&self, outcome: &'static str) {
        self.metrics
            .csr
            .get_or_create(&crate::metrics::OutcomeLabel { outcome })
            .inc();
    }

    fn refuse(&self, node: &str, status: Status) -> Status {
        self.count("refused");
        tracing::warn!(node, reason = %status.message(), "certificate request refused");
        status
    }
}

#[tonic::async_trait]
impl CertificateAuthority for MeshCa {
    async fn sign(&self, request: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        let node = self
            .auth
            .node(&request)
            .await
            .map_err(|status| self.refuse("<unknown>", status))?
            .ok_or_else(|| {
                self.refuse(
                    "<unknown>",
                    Status::unauthenticated(
                        "certificates are issued only to proxies that prove their node",
                    ),
                )
            })?;
        let request = request.into_inner();
        let (identity, csr) = self
            .authority
            .read_csr(&request.csr_pem)
            .map_err(|e| self.refuse(&node, Status::invalid_argument(e.to_string())))?;
        if !self
            .accounts
            .allows(&node, &identity.namespace, &identity.service_account)
        {
            return Err(self.refuse(
                &node,
                Status::permission_denied(format!(
                    "node {node} runs no mesh pod with service account {}/{}: refusing {identity}",
                    identity.namespace, identity.service_account
                )),
            ));
        }
        let requested = Duration::from_secs(u64::from(request.ttl_seconds));
        let ttl = if requested.is_zero() || requested > self.max_ttl {
            self.max_ttl
        } else {
            requested
        };
        let cert = self
            .authority
            .sign_workload(&identity, &csr, ttl)
            .map_err(|e| Status::internal(e.to_string()))?;
        self.count("signed");
        tracing::info!(node, %identity, ttl_seconds = ttl.as_secs(), "workload certificate signed");
        Ok(Response::new(SignResponse {
            cert_chain_pem: vec![cert],
            roots_pem: vec![self.authority.cert_pem().to_string()],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::{Published, Scope};
    use ferry_api::model::Workload;
    use ferry_api::{ResourceBody, VersionedResource};

    fn workload(name: &str, node: &str, sa: &str, mesh: bool) -> Change {
        let body = ResourceBody::Workload(Workload {
            uid: String::new(),
            namespace: "shop".into(),
            name: name.into(),
            node: Some(node.into()),
            service_account: sa.into(),
            addresses: vec![],
            labels: Default::default(),
            ports: vec![],
            ready: true,
            terminating: false,
            mesh,
        });
        Change::Upsert(
            body.key(),
            Published {
                resource: Arc::new(VersionedResource::encode(&body)),
                scope: Scope::AllNodes,
            },
        )
    }

    #[test]
    fn accounts_follow_pods_across_nodes() {
        let accounts = NodeAccounts::default();
        accounts.update(&[
            workload("a", "n1", "backend", true),
            workload("b", "n1", "backend", true),
            workload("c", "n2", "web", false),
        ]);
        assert!(accounts.allows("n1", "shop", "backend"));
        assert!(!accounts.allows("n2", "shop", "backend"));
        assert!(
            !accounts.allows("n2", "shop", "web"),
            "pods outside the mesh get no certificate"
        );
        // One of two pods moves away: still allowed; both gone: refused.
        accounts.update(&[workload("a", "n2", "backend", true)]);
        assert!(accounts.allows("n1", "shop", "backend"));
        assert!(accounts.allows("n2", "shop", "backend"));
        let Change::Upsert(key, _) = workload("b", "n1", "backend", true) else {
            unreachable!()
        };
        accounts.update(&[Change::Remove(key)]);
        assert!(!accounts.allows("n1", "shop", "backend"));
    }
}
