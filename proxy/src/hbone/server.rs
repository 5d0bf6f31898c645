//! The HBONE listener (port 15008): terminates mutual TLS and HTTP/2, and
//! hands every CONNECT stream to [`crate::inbound::Inbound`].
//!
//! Plaintext, a client without a mesh certificate, a certificate from
//! another CA or trust domain, or an expired one fail the TLS handshake,
//! which is counted as a TLS failure. The peer's verified identity goes
//! with every stream, for the policy and telemetry that use it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::H2Settings;
use crate::inbound::Inbound;
use crate::telemetry::metrics::{FailureReason, Reporter};
use crate::telemetry::Parties;

/// Why an HBONE connection ended badly; TLS failures are counted.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("{0}")]
    Tls(String),
    #[error("{0}")]
    Other(String),
}

/// The HBONE listener.
#[derive(Debug, Clone)]
pub struct HboneServer {
    pub tls: Arc<rustls::ServerConfig>,
    pub settings: H2Settings,
    /// Longest a client may take to complete the TLS handshake.
    pub handshake_timeout: Duration,
    pub inbound: Arc<Inbound>,
}

impl HboneServer {
    /// Serves until the task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        let this = Arc::new(self);
        let acceptor = TlsAcceptor::from(this.tls.clone());
        crate::net::accept::serve(listener, "hbone", |tcp, peer| {
            let this = this.clone();
            let acceptor = acceptor.clone();
            async move {
                let local = tcp.local_addr().ok();
                if let Err(e) = this.clone().connection(acceptor, tcp, peer).await {
                    tracing::info!(%peer, error = %e, "HBONE connection refused");
                    if let ConnectionError::Tls(_) = e {
                        let target: &dyn std::fmt::Display = match &local {
                            Some(l) => l,
                            None => &"-",
                        };
                        this.inbound.telemetry.failure(
                            Reporter::Destination,
                            &Parties::default(),
                            FailureReason::TlsFailure,
                            peer,
                            target,
                            &e,
                        );
                    }
                }
            }
        })
        .await
    }

    async fn connection(
        self: Arc<Self>,
        acceptor: TlsAcceptor,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> Result<(), ConnectionError> {
        let _ = tcp.set_nodelay(true);
        let tls = tokio::time::timeout(self.handshake_timeout, acceptor.accept(tcp))
            .await
            .map_err(|_| ConnectionError::Tls("TLS handshake timed out".into()))?
            .map_err(|e| ConnectionError::Tls(format!("TLS handshake failed: {e}")))?;
        let identity = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(crate::identity::tls::identity_of)
            .transpose()
            .map_err(|e| ConnectionError::Other(e.to_string()))?
            .ok_or_else(|| ConnectionError::Tls("no client certificate".into()))?;
        let mut connection = self
            .settings
            .server()
            .handshake::<_, bytes::Bytes>(tls)
            .await
            .map_err(|e| ConnectionError::Other(format!("HTTP/2 handshake: {e}")))?;
        tracing::debug!(%peer, %identity, "HBONE connection accepted");
        let identity = Arc::new(identity);
        while let Some(next) = connection.accept().await {
            let (request, respond) = match next {
                Ok(stream) => stream,
                Err(e) => return Err(ConnectionError::Other(format!("HTTP/2: {e}"))),
            };
            let inbound = self.inbound.clone();
            let identity = identity.clone();
            tokio::spawn(async move { inbound.stream(request, respond, identity, peer).await });
        }
        Ok(())
    }
}
