//! The identity manager: workload certificates for the pods of this node.
//!
//! It follows the config store: for every service account with a mesh pod
//! on this node it generates a key (which never leaves this process), sends
//! a CSR to the mesh CA over the node-authenticated channel, and keeps the
//! signed certificate. Certificates are renewed at about half their
//! lifetime; a failed request is retried with capped backoff while the
//! current certificate stays in use for as long as it is valid. Open
//! connections are unaffected by a renewal: a TLS session keeps the key it
//! was established with.
//!
//! - [`tls`]: the rustls configurations built on these certificates (the
//!   HBONE client and server, SPIFFE identity checks).
//! - [`token`]: the service account token a proxy in a cluster presents to
//!   the control plane instead of a node certificate.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use ferry_api::identity::Identity;
use ferry_api::proto::certificate_authority_client::CertificateAuthorityClient;
use ferry_api::proto::SignRequest;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use serde::Serialize;
use tokio::sync::{watch, Notify};
use x509_parser::prelude::{FromDer, X509Certificate};

use ferry_core::state::{ConfigStore, ProxyState};

use crate::net::backoff::Backoff;

/// Workload certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateSettings {
    /// Requested lifetime; zero: the CA's maximum.
    pub ttl: Duration,
    /// Retry backoff after a failed request: first step and cap.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// How often the identities are reviewed when nothing else happens.
    pub review_interval: Duration,
    /// Longest one certificate request may take. A CA that takes the
    /// request and never answers (its handler stuck: HTTP/2 PINGs are
    /// still answered) would otherwise hold renewal for every identity of
    /// the node until their certificates expire.
    pub request_timeout: Duration,
}

pub mod tls;
pub mod token;

#[cfg(test)]
impl CertificateSettings {
    /// The CA's own lifetime, one-second retries, a 10 s request deadline.
    pub(crate) fn for_tests() -> Self {
        Self {
            ttl: Duration::ZERO,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(1),
            review_interval: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Errors of one certificate request.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("no mesh CA configured (the proxy runs without node credentials)")]
    NoCa,
    #[error("creating the CSR: {0}")]
    Csr(#[from] ferry_pki::CertError),
    #[error("the CA refused: {0}")]
    Refused(#[from] tonic::Status),
    #[error("the CA answered with an unusable certificate: {0}")]
    BadCertificate(String),
    #[error("mesh roots: {0}")]
    Roots(String),
    #[error(transparent)]
    Token(#[from] crate::identity::token::TokenError),
    #[error("the CA did not answer within {0:?}")]
    Timeout(Duration),
}

/// A certificate in use.
#[derive(Debug)]
pub struct WorkloadCert {
    pub certified: Arc<CertifiedKey>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// When renewal starts (about half the lifetime).
    pub refresh_at: SystemTime,
}

impl WorkloadCert {
    fn valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

/// One line of `/config_dump`'s certificate section.
#[derive(Debug, Clone, Serialize)]
pub struct CertStatus {
    pub identity: String,
    pub not_after_unix: u64,
    pub refresh_at_unix: u64,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Parses PEM blocks into DER certificates.
pub fn pem_certs(pems: &[String]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut out = Vec::new();
    for pem in pems {
        let mut rest = pem.as_bytes();
        while let Ok((remaining, block)) = x509_parser::pem::parse_x509_pem(rest) {
            out.push(CertificateDer::from(block.contents));
            if remaining.len() == rest.len() {
                break;
            }
            rest = remaining;
        }
    }
    if out.is_empty() {
        return Err("no PEM certificate found".into());
    }
    Ok(out)
}

/// A root store from PEM certificates.
pub fn root_store(pem: &str) -> Result<RootCertStore, IdentityError> {
    let mut roots = RootCertStore::empty();
    for cert in pem_certs(&[pem.to_string()]).map_err(IdentityError::Roots)? {
        roots
            .add(cert)
            .map_err(|e| IdentityError::Roots(e.to_string()))?;
    }
    Ok(roots)
}

/// A certificate for `identity` from its chain (PEM) and private key
/// (PKCS#8 DER), checked to name that identity, received at `received`.
fn workload_cert(
    identity: &Identity,
    chain_pem: &[String],
    key_der: &[u8],
    received: SystemTime,
) -> Result<WorkloadCert, IdentityError> {
    let chain = pem_certs(chain_pem).map_err(IdentityError::BadCertificate)?;
    let leaf = chain
        .first()
        .ok_or_else(|| IdentityError::BadCertificate("empty chain".into()))?;
    let presented = crate::identity::tls::identity_of(leaf)
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    if &presented != identity {
        return Err(IdentityError::BadCertificate(format!(
            "issued for {presented}, asked for {identity}"
        )));
    }
    let (_, parsed) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    let to_system = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
    };
    let not_before = to_system(parsed.validity().not_before);
    let not_after = to_system(parsed.validity().not_after);
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der.to_vec()));
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    Ok(WorkloadCert {
        certified: Arc::new(CertifiedKey::new(chain, signer)),
        not_before,
        not_after,
        refresh_at: refresh_at(not_before, not_after, received),
    })
}

/// When a certificate valid from `not_before` to `not_after`, received at
/// `received`, is renewed: halfway through the part of its validity the
/// proxy can actually use. The CA backdates `not_before` (clock slack), so
/// halving the whole window would make a short-lived certificate due the
/// moment it arrives.
pub fn refresh_at(
    not_before: SystemTime,
    not_after: SystemTime,
    received: SystemTime,
) -> SystemTime {
    let from = received.max(not_before);
    let usable = not_after.duration_since(from).unwrap_or_default();
    from + usable / 2
}

/// Keeps a certificate for every identity this node serves.
#[derive(Debug)]
pub struct IdentityManager {
    node: String,
    trust_domain: String,
    roots: Arc<RootCertStore>,
    ca: Option<CertificateAuthorityClient<tonic::transport::Channel>>,
    settings: CertificateSettings,
    certs: ArcSwap<HashMap<Identity, Arc<WorkloadCert>>>,
    /// Identities asked for on demand (before the config shows their pod).
    requested: std::sync::Mutex<BTreeSet<Identity>>,
    wake: Notify,
    updates: watch::Sender<u64>,
    token: std::sync::OnceLock<crate::identity::token::TokenFile>,
    /// Where certificates are kept across restarts (`--state-dir`).
    saved: std::sync::OnceLock<Arc<crate::saved::StateDir>>,
}

impl IdentityManager {
    pub fn new(
        node: impl Into<String>,
        trust_domain: impl Into<String>,
        roots: RootCertStore,
        ca: Option<tonic::transport::Channel>,
        settings: CertificateSettings,
    ) -> Arc<Self> {
        Arc::new(Self {
            node: node.into(),
            trust_domain: trust_domain.into(),
            roots: Arc::new(roots),
            ca: ca.map(CertificateAuthorityClient::new),
            settings,
            certs: ArcSwap::default(),
            requested: std::sync::Mutex::default(),
            wake: Notify::new(),
            updates: watch::Sender::new(0),
            token: std::sync::OnceLock::new(),
            saved: std::sync::OnceLock::new(),
        })
    }

    /// Proves the node to the CA with a service account token (in a
    /// cluster); set once, before [`IdentityManager::run`].
    pub fn use_token(&self, token: crate::identity::token::TokenFile) {
        let _ = self.token.set(token);
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }

    /// The certificate for `identity`, if one is held and valid now.
    pub fn certified(&self, identity: &Identity) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.load();
        let cert = certs.get(identity)?;
        cert.valid_at(SystemTime::now())
            .then(|| cert.certified.clone())
    }

    /// The certificate for `identity`, fetching it if needed and waiting up to `timeout`.
    pub async fn wait_certified(
        &self,
        identity: &Identity,
        timeout: Duration,
    ) -> Option<Arc<CertifiedKey>> {
        if let Some(cert) = self.certified(identity) {
            return Some(cert);
        }
        self.requested
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(identity.clone());
        self.wake.notify_one();
        let mut updates = self.updates.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(cert) = self.certified(identity) {
                return Some(cert);
            }
            match tokio::time::timeout_at(deadline, updates.changed()).await {
                Ok(Ok(())) => {}
                _ => return self.certified(identity),
            }
        }
    }

    /// Held certificates, for `/config_dump` and metrics.
    pub fn status(&self) -> Vec<CertStatus> {
        let mut out: Vec<CertStatus> = self
            .certs
            .load()
            .iter()
            .map(|(id, c)| CertStatus {
                identity: id.to_string(),
                not_after_unix: unix(c.not_after),
                refresh_at_unix: unix(c.refresh_at),
            })
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }

    /// Identities of the mesh pods on this node (from the store's per-node
    /// index: O(local pods), not O(cluster)).
    fn local_identities(&self, state: &ProxyState) -> BTreeSet<Identity> {
        state
            .workloads_on(&self.node)
            .filter(|w| w.mesh)
            .map(|w| Identity::new(&self.trust_domain, &w.namespace, &w.service_account))
            .collect()
    }

    /// Requests and parses one certificate.
    pub async fn fetch(&self, identity: &Identity) -> Result<WorkloadCert, IdentityError> {
        let mut ca = self.ca.clone().ok_or(IdentityError::NoCa)?;
        let (csr_pem, key_der) = ferry_pki::workload_csr(identity)?;
        let mut request = tonic::Request::new(SignRequest {
            csr_pem,
            ttl_seconds: u32::try_from(self.settings.ttl.as_secs()).unwrap_or(u32::MAX),
        });
        crate::identity::token::authorize(self.token.get(), &mut request)?;
        let within = self.settings.request_timeout;
        // The CA is told the deadline too (grpc-timeout), and it is kept
        // here whatever the CA does with it.
        request.set_timeout(within);
        let response = tokio::time::timeout(within, ca.sign(request))
            .await
            .map_err(|_| IdentityError::Timeout(within))??
            .into_inner();
        let cert = workload_cert(
            identity,
            &response.cert_chain_pem,
            &key_der,
            SystemTime::now(),
        )?;
        if let Some(saved) = self.saved.get() {
            let saving = crate::saved::SavedCertificate {
                identity: identity.clone(),
                chain_pem: response.cert_chain_pem,
                key_der,
            };
            if let Err(e) = saved.save_certificate(&saving) {
                tracing::warn!(%identity, error = %e, "saving the certificate failed");
            }
        }
        Ok(cert)
    }

    /// Keeps certificates in `dir` and installs the ones saved there that
    /// are still valid (a restart while the control plane is away keeps
    /// the node's identities). Set once, before [`IdentityManager::run`].
    pub fn use_state_dir(&self, dir: Arc<crate::saved::StateDir>) {
        let mut restored = 0;
        for saved in dir.load_certificates(&self.trust_domain) {
            match workload_cert(
                &saved.identity,
                &saved.chain_pem,
                &saved.key_der,
                SystemTime::now(),
            ) {
                Ok(cert) if cert.valid_at(SystemTime::now()) => {
                    tracing::info!(identity = %saved.identity, not_after_unix = unix(cert.not_after), "saved workload certificate restored");
                    self.publish(saved.identity, Some(cert));
                    restored += 1;
                }
                Ok(_) => dir.remove_certificate(&saved.identity),
                Err(e) => {
                    tracing::warn!(identity = %saved.identity, error = %e, "saved certificate unusable");
                    dir.remove_certificate(&saved.identity);
                }
            }
        }
        if restored > 0 {
            tracing::info!(
                restored,
                "workload certificates restored from the state folder"
            );
        }
        let _ = self.saved.set(dir);
    }

    fn publish(&self, identity: Identity, cert: Option<WorkloadCert>) {
        if cert.is_none() {
            if let Some(saved) = self.saved.get() {
                saved.remove_certificate(&identity);
            }
        }
        let cert = cert.map(Arc::new);
        self.certs.rcu(|current| {
            let mut next = HashMap::clone(current);
            match &cert {
                Some(c) => next.insert(identity.clone(), c.clone()),
                None => next.remove(&identity),
            };
            next
        });
        self.updates.send_modify(|n| *n += 1);
    }

    /// Keeps certificates for this node's identities until dropped. When
    /// the config stream reconnects (`connects` changes), failed requests
    /// are retried at once instead of after their backoff.
    pub async fn run(self: Arc<Self>, store: Arc<ConfigStore>, mut connects: watch::Receiver<u64>) {
        let mut changes = store.subscribe();
        let mut retry: HashMap<Identity, (Instant, Backoff)> = HashMap::new();
        loop {
            let mut desired = self.local_identities(&store.snapshot());
            desired.extend(
                self.requested
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .cloned(),
            );
            let mut next_wake = Instant::now() + self.settings.review_interval;
            for identity in &desired {
                let now = SystemTime::now();
                let due = self.certs.load().get(identity).map(|c| c.refresh_at);
                if due.is_some_and(|at| now < at) {
                    if let Some(at) = due {
                        let wait = at.duration_since(now).unwrap_or_default();
                        next_wake = next_wake.min(Instant::now() + wait);
                    }
                    continue;
                }
                if let Some((at, _)) = retry.get(identity) {
                    if Instant::now() < *at {
                        next_wake = next_wake.min(*at);
                        continue;
                    }
                }
                match self.fetch(identity).await {
                    Ok(cert) => {
                        tracing::info!(%identity, valid_seconds = cert.not_after.duration_since(cert.not_before).unwrap_or_default().as_secs(), "workload certificate obtained");
                        let wait = cert
                            .refresh_at
                            .duration_since(SystemTime::now())
                            .unwrap_or_default();
                        next_wake = next_wake.min(Instant::now() + wait);
                        retry.remove(identity);
                        self.publish(identity.clone(), Some(cert));
                        self.requested
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(identity);
                    }
                    Err(e) => {
                        let (at, backoff) = retry.entry(identity.clone()).or_insert_with(|| {
                            (
                                Instant::now(),
                                Backoff::new(self.settings.retry_initial, self.settings.retry_max),
                            )
                        });
                        let backoff = backoff.next_delay();
                        *at = Instant::now() + backoff;
                        tracing::warn!(%identity, error = %e, retry_in_ms = backoff.as_millis() as u64, still_valid = self.certified(identity).is_some(), "certificate request failed");
                        next_wake = next_wake.min(Instant::now() + backoff);
                        // Wake waiters so they can give up early if they must.
                        self.updates.send_modify(|n| *n += 1);
                    }
                }
            }
            // Identities no longer served: drop their certificates (sessions
            // already established keep their own reference).
            let stale: Vec<Identity> = self
                .certs
                .load()
                .keys()
                .filter(|id| !desired.contains(*id))
                .cloned()
                .collect();
            for identity in stale {
                tracing::info!(%identity, "no pod of this identity on the node any more; certificate dropped");
                retry.remove(&identity);
                self.publish(identity, None);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(next_wake.into()) => {}
                changed = changes.changed() => if changed.is_err() { return; },
                _ = self.wake.notified() => {}
                reconnected = connects.changed() => {
                    if reconnected.is_ok() {
                        retry.clear();
                    } else {
                        // No config stream any more (tests): keep going
                        // on timers and config changes alone.
                        connects = watch::Sender::new(0).subscribe();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On tokio's paused clock: it moves on only when every task waits.
    #[tokio::test(start_paused = true)]
    async fn a_ca_that_never_answers_fails_the_request_in_time() {
        // A CA that takes connections and never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ca = tonic::transport::Endpoint::from_shared(format!(
            "http://{}",
            listener.local_addr().unwrap()
        ))
        .unwrap()
        .connect_lazy();
        let identities = IdentityManager::new(
            "node-a",
            "cluster.local",
            RootCertStore::empty(),
            Some(ca),
            CertificateSettings::for_tests(),
        );
        let started = tokio::time::Instant::now();
        let fetched = tokio::time::timeout(
            Duration::from_secs(60),
            identities.fetch(&Identity::new("cluster.local", "shop", "web")),
        )
        .await
        .expect("the request was still waiting after a minute");
        // tonic keeps the deadline it sends (a cancelled request), or the
        // proxy's own does: the request fails at 10 s either way.
        let failed = fetched.unwrap_err();
        assert!(
            matches!(&failed, IdentityError::Timeout(_))
                || matches!(&failed, IdentityError::Refused(s) if s.code() == tonic::Code::Cancelled),
            "{failed}"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        drop(listener);
    }

    #[test]
    fn renewal_is_halfway_through_the_usable_window() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let secs = Duration::from_secs;
        // A 30 s certificate, backdated a minute: due 15 s after it
        // arrives, not at once (halving the 90 s window would say 15 s
        // *before* it arrived, and renewal would loop).
        assert_eq!(refresh_at(t - secs(60), t + secs(30), t), t + secs(15));
        // A day-long certificate received as issued.
        assert_eq!(
            refresh_at(t - secs(60), t + secs(86_400), t),
            t + secs(43_200)
        );
        // Received late (after a restart): halfway through what is left.
        assert_eq!(
            refresh_at(t - secs(60), t + secs(100), t + secs(60)),
            t + secs(80)
        );
        // Received after it expired: due at once.
        assert_eq!(refresh_at(t - secs(60), t, t + secs(5)), t + secs(5));
    }
}
