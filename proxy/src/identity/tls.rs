//! TLS for HBONE (rustls, ring, TLS 1.3 only).
//!
//! Both ends verify the peer's chain against the mesh roots and then its
//! SPIFFE identity (URI SAN), never a DNS name:
//! - the client ([`client_config`]) presents the **source** workload's
//!   certificate and accepts only a server presenting the **expected
//!   destination** identity;
//! - the server ([`server_config`]) requires a client certificate from the
//!   mesh in its trust domain, and presents the certificate of the workload
//!   the client asked for by server name (SNI, see
//!   [`Identity::server_name`]), provided that workload runs on this node.

use std::sync::Arc;

use ferry_api::identity::Identity;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, Error, RootCertStore, SignatureScheme};

use crate::identity::IdentityManager;

/// ALPN of HBONE: HTTP/2.
const ALPN_H2: &[u8] = b"h2";

/// The crypto provider every Ferry TLS config uses: ring, with the TLS 1.3
/// suites in the order both ends prefer. AES-128-GCM comes first: it is
/// the cheapest per byte (10 AES rounds to AES-256's 14; Envoy negotiates
/// it by default too), and HBONE spends a sixth of its CPU in AES-GCM
/// (docs/benchmarks.md). AES-256-GCM and ChaCha20-Poly1305 stay accepted.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite;
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    })
}

/// Errors building TLS configs.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS configuration: {0}")]
    Rustls(#[from] Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The workload identity in a certificate's URI SAN.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<Identity, Error> {
    let uris = ferry_pki::uri_sans(cert.as_ref())
        .map_err(|e| Error::General(format!("unreadable peer certificate: {e}")))?;
    uris.iter()
        .find_map(|u| u.parse::<Identity>().ok())
        .ok_or_else(|| Error::General("the peer certificate carries no workload identity".into()))
}

/// Accepts a server whose chain leads to the mesh roots and whose identity
/// is exactly `expected`.
#[derive(Debug)]
struct ExpectedServer {
    roots: Arc<RootCertStore>,
    expected: Identity,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ExpectedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let presented = identity_of(end_entity)?;
        if presented != self.expected {
            return Err(Error::General(format!(
                "identity mismatch: the server is {presented}, expected {}",
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::General("HBONE requires TLS 1.3".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Presents one fixed certificate.
#[derive(Debug)]
struct FixedClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for FixedClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A client config for one (source identity, destination identity) pair.
pub fn client_config(
    roots: Arc<RootCertStore>,
    source: Arc<CertifiedKey>,
    destination: Identity,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ExpectedServer {
            roots,
            expected: destination,
            provider,
        }))
        .with_client_cert_resolver(Arc::new(FixedClientCert(source)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No session resumption: HBONE connections are pooled and long-lived,
    // the listeners issue no tickets, and a config is built per
    // connection, so a session cache (rustls's default holds 256, 14 KB
    // allocated up front) would never be used.
    config.resumption = rustls::client::Resumption::disabled();
    // The records after the handshake are Ferry's (crate::hbone::record).
    config.enable_secret_extraction = true;
    Ok(config)
}

/// Requires a mesh client certificate with a workload identity in `trust_domain`.
#[derive(Debug)]
struct MeshClients {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientCertVerifier for MeshClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let identity = identity_of(end_entity)?;
        if identity.trust_domain != self.trust_domain {
            return Err(Error::General(format!(
                "{identity} is outside trust domain {}",
                self.trust_domain
            )));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Serves the certificate of the workload named by SNI, if it is one of ours.
#[derive(Debug)]
struct LocalWorkloadCerts {
    identities: Arc<IdentityManager>,
}

impl ResolvesServerCert for LocalWorkloadCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?;
        let identity = Identity::from_server_name(name, self.identities.trust_domain())?;
        let cert = self.identities.certified(&identity);
        if cert.is_none() {
            tracing::debug!(%identity, "HBONE client asked for an identity this node does not serve");
        }
        cert
    }
}

/// The HBONE listener's config.
pub fn server_config(identities: Arc<IdentityManager>) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let inner = WebPkiClientVerifier::builder_with_provider(identities.roots(), provider.clone())
        .build()?;
    let verifier = MeshClients {
        inner,
        trust_domain: identities.trust_domain().to_string(),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(LocalWorkloadCerts { identities }));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // Every connection is a full handshake: the client's certificate is
    // verified against the roots and trust domain of the moment (a resumed
    // session would carry the identity of an earlier handshake across a
    // root rotation). rustls's defaults would send two tickets after each
    // handshake and keep up to 256 sessions, client chains included.
    config.send_tls13_tickets = 0;
    // The records after the handshake are Ferry's (crate::hbone::record).
    config.enable_secret_extraction = true;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(config)
}
