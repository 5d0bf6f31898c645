//! The mesh root CA: generated or loaded, it issues node and server
//! credentials and signs workload CSRs for its own trust domain.

use std::path::Path;
use std::time::{Duration, SystemTime};

use ferry_api::identity::{Identity, NodeIdentity};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

use crate::{files, pem_to_der, uri_sans, CertError, Credential};

/// The mesh root CA.
pub struct Authority {
    trust_domain: String,
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
    /// When the root expires: nothing it signs may outlive it.
    not_after: SystemTime,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    // A minute of slack for clocks that are slightly behind.
    params.not_before = now() - time::Duration::minutes(1);
    params.not_after = now() + lifetime;
}

impl Authority {
    /// Creates a new root CA for `trust_domain`, valid for `lifetime`.
    pub fn generate(trust_domain: &str, lifetime: Duration) -> Result<Self, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Ferry");
        params.distinguished_name.push(
            DnType::CommonName,
            format!("Ferry mesh root CA ({trust_domain})"),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names =
            vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
        validity(&mut params, lifetime);
        let not_after = SystemTime::from(params.not_after);
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            issuer: Issuer::new(params, key),
            cert_pem,
            key_pem,
            not_after,
        })
    }

    /// Loads `ca.pem` and `ca-key.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, CertError> {
        let cert_path = dir.join(files::CA_CERT);
        let key_path = dir.join(files::CA_KEY);
        let credential = Credential::load(&cert_path, &key_path)?;
        Self::from_pem(credential.cert_pem, credential.key_pem, &cert_path)
    }

    /// The CA from its certificate and key; `origin` names where they came
    /// from in errors (a file, or a Secret).
    pub fn from_pem(cert_pem: String, key_pem: String, origin: &Path) -> Result<Self, CertError> {
        let der = pem_to_der(&cert_pem, origin, "PEM certificate")?;
        let trust_domain = uri_sans(&der)
            .map_err(|reason| CertError::Parse {
                path: origin.to_path_buf(),
                what: "certificate",
                reason,
            })?
            .into_iter()
            .find_map(|uri| {
                let td = uri.strip_prefix("spiffe://")?;
                (!td.is_empty() && !td.contains('/')).then(|| td.to_string())
            })
            .ok_or_else(|| CertError::NoTrustDomain {
                path: origin.to_path_buf(),
            })?;
        let not_after = crate::not_after(&der).map_err(|reason| CertError::Parse {
            path: origin.to_path_buf(),
            what: "certificate",
            reason,
        })?;
        if not_after <= SystemTime::now() {
            return Err(CertError::Expired {
                path: origin.to_path_buf(),
                not_after: not_after
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            });
        }
        let key = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| CertError::Parse {
            path: origin.to_path_buf(),
            what: "CA certificate",
            reason: e.to_string(),
        })?;
        Ok(Self {
            trust_domain,
            cert_pem,
            key_pem,
            issuer,
            not_after,
        })
    }

    /// The CA's private key, PEM (to store it in a Secret).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Writes `ca.pem` and `ca-key.pem` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), CertError> {
        Credential {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
        .write(&dir.join(files::CA_CERT), &dir.join(files::CA_KEY))
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// When the root certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// `lifetime`, cut to what is left of the root's: a certificate that
    /// outlived its issuer would fail verification before its own end,
    /// unnoticed by the renewal that waits for that end.
    fn within_root(&self, lifetime: Duration) -> Duration {
        let left = self
            .not_after
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        lifetime.min(left)
    }

    fn issue(
        &self,
        mut params: CertificateParams,
        lifetime: Duration,
    ) -> Result<Credential, CertError> {
        let key = KeyPair::generate()?;
        validity(&mut params, self.within_root(lifetime));
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Credential {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A node proxy's credential: `spiffe://<td>/ferry/node/<node>`, client auth.
    pub fn issue_node(&self, node: &str, lifetime: Duration) -> Result<Credential, CertError> {
        let id = NodeIdentity {
            trust_domain: self.trust_domain.clone(),
            node: node.to_string(),
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("ferry node {node}"));
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, lifetime)
    }

    /// The control plane's server credential for these names and IPs.
    pub fn issue_server(
        &self,
        names: &[String],
        lifetime: Duration,
    ) -> Result<Credential, CertError> {
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "ferry control plane");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, lifetime)
    }

    /// Reads a workload CSR: its signature must verify and it must carry
    /// exactly one URI SAN, a workload identity in this trust domain.
    pub fn read_csr(
        &self,
        csr_pem: &str,
    ) -> Result<(Identity, CertificateSigningRequestParams), CertError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CertError::Csr(format!("unreadable or badly signed CSR: {e}")))?;
        let uris: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .filter_map(|san| match san {
                SanType::URI(uri) => Some(uri.as_str().to_string()),
                _ => None,
            })
            .collect();
        let [uri] = uris.as_slice() else {
            return Err(CertError::Csr(format!(
                "the CSR must carry exactly one URI SAN, it has {}",
                uris.len()
            )));
        };
        let identity: Identity = uri
            .parse()
            .map_err(|e: ferry_api::identity::IdentityError| CertError::Csr(e.to_string()))?;
        if identity.trust_domain != self.trust_domain {
            return Err(CertError::Csr(format!(
                "{identity} is outside trust domain {}",
                self.trust_domain
            )));
        }
        Ok((identity, csr))
    }

    /// Signs a workload certificate for `identity` with the CSR's public key.
    /// Only the identity and the key are taken from the CSR; everything else
    /// is the CA's choice.
    pub fn sign_workload(
        &self,
        identity: &Identity,
        csr: &CertificateSigningRequestParams,
        lifetime: Duration,
    ) -> Result<String, CertError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, self.within_root(lifetime));
        Ok(params.signed_by(&csr.public_key, &self.issuer)?.pem())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{pem_der, workload_csr};

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn an_expired_root_is_refused_and_nothing_outlives_a_root() {
        // Expired: refused when loaded, naming where it came from.
        let gone = Authority::generate("example.org", Duration::ZERO).unwrap();
        let err = Authority::from_pem(
            gone.cert_pem().to_string(),
            gone.key_pem().to_string(),
            Path::new("secret ferry-system/ferry-ca"),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("secret ferry-system/ferry-ca: the CA certificate expired at"),
            "{err}"
        );
        // An hour left: a day's workload certificate ends with the root.
        let ca = Authority::generate("example.org", Duration::from_secs(3600)).unwrap();
        let (identity, csr) = ca
            .read_csr(
                &workload_csr(&Identity::new("example.org", "shop", "web"))
                    .unwrap()
                    .0,
            )
            .unwrap();
        let signed = ca.sign_workload(&identity, &csr, DAY).unwrap();
        let ends = crate::not_after(&pem_der(&signed).unwrap()).unwrap();
        assert!(
            ends <= ca.not_after(),
            "{ends:?} after {:?}",
            ca.not_after()
        );
        let node = ca.issue_node("node-a", DAY).unwrap();
        assert!(crate::not_after(&pem_der(&node.cert_pem).unwrap()).unwrap() <= ca.not_after());
    }

    #[test]
    fn ca_round_trips_through_files_with_its_trust_domain() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::generate("example.org", DAY).unwrap();
        ca.write(dir.path()).unwrap();
        let loaded = Authority::load(dir.path()).unwrap();
        assert_eq!(loaded.trust_domain(), "example.org");
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
    }

    #[test]
    fn mismatched_key_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::generate("td", DAY).unwrap();
        ca.write(dir.path()).unwrap();
        let other = Authority::generate("td", DAY).unwrap();
        std::fs::write(dir.path().join(files::CA_KEY), &other.key_pem).unwrap();
        let err = Authority::load(dir.path()).unwrap_err();
        assert!(matches!(err, CertError::Mismatch { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("ca-key.pem is not the private key of "),
            "{message}"
        );
        assert!(
            message.ends_with("ca.pem (their public keys differ)"),
            "{message}"
        );
    }

    #[test]
    fn unreadable_and_garbage_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = Authority::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("ca.pem: cannot read"), "{err}");
        std::fs::write(dir.path().join(files::CA_CERT), "junk").unwrap();
        std::fs::write(dir.path().join(files::CA_KEY), "junk").unwrap();
        let err = Authority::load(dir.path()).unwrap_err();
        assert!(
            err.to_string()
                .contains("ca-key.pem: not a PEM private key"),
            "{err}"
        );
    }

    #[test]
    fn node_credentials_carry_the_node_identity() {
        let ca = Authority::generate("td", DAY).unwrap();
        let node = ca.issue_node("node-a", DAY).unwrap();
        let der = pem_der(&node.cert_pem).unwrap();
        assert_eq!(uri_sans(&der).unwrap(), ["spiffe://td/ferry/node/node-a"]);
    }

    #[test]
    fn workload_csrs_are_signed_for_their_identity_only() {
        let ca = Authority::generate("td", DAY).unwrap();
        let id = Identity::new("td", "shop", "backend");
        let (csr, _key) = workload_csr(&id).unwrap();
        let (read, params) = ca.read_csr(&csr).unwrap();
        assert_eq!(read, id);
        let cert = ca
            .sign_workload(&read, &params, Duration::from_secs(3600))
            .unwrap();
        let der = pem_der(&cert).unwrap();
        assert_eq!(uri_sans(&der).unwrap(), ["spiffe://td/ns/shop/sa/backend"]);

        let foreign = Identity::new("elsewhere", "shop", "backend");
        let (csr, _) = workload_csr(&foreign).unwrap();
        assert_eq!(
            ca.read_csr(&csr).unwrap_err().to_string(),
            "certificate signing request refused: spiffe://elsewhere/ns/shop/sa/backend is outside trust domain td"
        );
        assert!(ca
            .read_csr(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
            )
            .is_err());
    }
}
