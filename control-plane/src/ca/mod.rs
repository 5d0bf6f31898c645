//! The mesh CA service: signs workload certificates for proxies, with node
//! authorization.
//!
//! A proxy proves its node ([`crate::authn`]: a node credential, or a
//! service account token in a cluster). It may obtain certificates only
//! for service accounts of mesh pods scheduled on that node;
//! [`NodeAccounts`] keeps that index up to date from the translated
//! workloads. Every refusal is logged with its reason, counted, and
//! returned to the caller. The CSR carries only a public key: private keys
//! never leave the proxies. The signing itself is [`ferry_pki::Authority`];
//! in a cluster its key material comes from a Secret ([`secret`]).

use std::sync::Arc;
use std::time::Duration;

use ferry_api::proto::certificate_authority_server::{
    CertificateAuthority, CertificateAuthorityServer,
};
use ferry_api::proto::{SignRequest, SignResponse};
use ferry_pki::Authority;
use tonic::{Request, Response, Status};

use crate::authn::Authenticator;

mod accounts;
pub mod secret;

pub use accounts::NodeAccounts;

/// The CA service.
#[derive(Debug)]
pub struct MeshCa {
    authority: Arc<Authority>,
    accounts: Arc<NodeAccounts>,
    max_ttl: Duration,
    metrics: Arc<crate::metrics::Metrics>,
    auth: Arc<Authenticator>,
}

impl MeshCa {
    pub fn new(authority: Arc<Authority>, accounts: Arc<NodeAccounts>, max_ttl: Duration) -> Self {
        let trust_domain = authority.trust_domain().to_string();
        Self {
            authority,
            accounts,
            auth: Arc::new(Authenticator::NodeCertificate { trust_domain }),
            max_ttl,
            metrics: Arc::default(),
        }
    }

    pub fn into_server(self) -> CertificateAuthorityServer<Self> {
        CertificateAuthorityServer::new(self)
    }

    /// Authenticates callers with `auth` instead of node certificates.
    pub fn with_authenticator(mut self, auth: Arc<Authenticator>) -> Self {
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
