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

/// The lifetimes the CA grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlBounds {
    /// Shorter requests are refused.
    pub min: Duration,
    /// Longer requests (and requests for "the CA's choice", zero) get this.
    pub max: Duration,
}

impl TtlBounds {
    /// The lifetime granted for a request of `requested` (zero: the
    /// maximum), or why it is refused.
    pub fn grant(&self, requested: Duration) -> Result<Duration, String> {
        if requested.is_zero() || requested > self.max {
            Ok(self.max)
        } else if requested < self.min {
            Err(format!(
                "a lifetime of {} s is below the CA's minimum of {} s",
                requested.as_secs(),
                self.min.as_secs()
            ))
        } else {
            Ok(requested)
        }
    }
}

/// The CA service.
#[derive(Debug)]
pub struct MeshCa {
    authority: Arc<Authority>,
    accounts: Arc<NodeAccounts>,
    /// Lifetimes granted: a request for more gets `max`, a request for
    /// less than `min` is refused (a certificate that must be renewed
    /// every few seconds is a load on the CA, not a security gain).
    ttl: TtlBounds,
    metrics: Arc<crate::metrics::Metrics>,
    auth: Arc<Authenticator>,
    /// Every signed certificate is shown here (the status API).
    board: Option<Arc<crate::status::StatusBoard>>,
}

impl MeshCa {
    pub fn new(authority: Arc<Authority>, accounts: Arc<NodeAccounts>, ttl: TtlBounds) -> Self {
        let trust_domain = authority.trust_domain().to_string();
        Self {
            authority,
            accounts,
            auth: Arc::new(Authenticator::NodeCertificate { trust_domain }),
            ttl,
            metrics: Arc::default(),
            board: None,
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

    /// Records every certificate signed on `board` (the status API).
    pub fn with_status_board(mut self, board: Arc<crate::status::StatusBoard>) -> Self {
        self.board = Some(board);
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
        let ttl = self
            .ttl
            .grant(requested)
            .map_err(|reason| self.refuse(&node, Status::invalid_argument(reason)))?;
        let cert = self
            .authority
            .sign_workload(&identity, &csr, ttl)
            .map_err(|e| Status::internal(e.to_string()))?;
        self.count("signed");
        if let Some(board) = &self.board {
            match ferry_pki::pem_der(&cert).and_then(|der| ferry_pki::not_after(&der)) {
                Ok(not_after) => board.issued(&node, &identity.to_string(), not_after),
                Err(e) => {
                    tracing::warn!(%identity, error = %e, "the signed certificate is unreadable: not shown in the status")
                }
            }
        }
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

    #[test]
    fn lifetimes_are_bounded_and_too_short_ones_refused() {
        let secs = Duration::from_secs;
        let bounds = TtlBounds {
            min: secs(60),
            max: secs(86_400),
        };
        assert_eq!(bounds.grant(secs(0)), Ok(secs(86_400)));
        assert_eq!(bounds.grant(secs(3_600)), Ok(secs(3_600)));
        assert_eq!(bounds.grant(secs(60)), Ok(secs(60)));
        assert_eq!(bounds.grant(secs(1_000_000)), Ok(secs(86_400)));
        assert_eq!(
            bounds.grant(secs(1)),
            Err("a lifetime of 1 s is below the CA's minimum of 60 s".to_string())
        );
    }
}
