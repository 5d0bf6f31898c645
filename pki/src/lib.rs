//! The mesh's X.509: certificates, keys and signing requests, built on
//! rcgen and x509-parser. Used by the control plane (the mesh CA), the
//! proxies (their workload CSRs, reading peer certificates) and the
//! development tool `ferry-certs`.
//!
//! - [`Authority`]: the mesh root CA. It carries its trust domain as a URI
//!   SAN (`spiffe://<trust domain>`), issues node credentials
//!   (`spiffe://<td>/ferry/node/<name>`, client auth) and the control
//!   plane's server credential, and signs workload CSRs (only for its own
//!   trust domain). The workload's private key never leaves the proxy: only
//!   its CSR does ([`workload_csr`]).
//! - [`Credential`]: a certificate and its private key, loaded with a check
//!   that they belong together.
//! - [`files`]: the file names of a PKI folder (`ferry-certs init`).

use std::path::{Path, PathBuf};

use ferry_api::identity::Identity;
use rcgen::{CertificateParams, KeyPair, SanType};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// A parsed certificate signing request.
pub use rcgen::CertificateSigningRequestParams as CsrParams;

mod authority;
pub use authority::Authority;

/// File names inside a PKI folder.
pub mod files {
    pub const CA_CERT: &str = "ca.pem";
    pub const CA_KEY: &str = "ca-key.pem";
    pub const CONTROL_PLANE_CERT: &str = "control-plane.pem";
    pub const CONTROL_PLANE_KEY: &str = "control-plane-key.pem";

    /// `nodes/<name>.pem` and `nodes/<name>-key.pem`.
    pub fn node(name: &str) -> (String, String) {
        (format!("nodes/{name}.pem"), format!("nodes/{name}-key.pem"))
    }
}

/// What can go wrong with keys and certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a {what}: {reason}")]
    Parse {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("{key} is not the private key of {cert} (their public keys differ)")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("{path}: the CA certificate carries no spiffe://<trust domain> URI SAN")]
    NoTrustDomain { path: PathBuf },
    #[error("{path}: the CA certificate expired at {not_after} (Unix time): every certificate it signed fails; rotate the mesh CA")]
    Expired { path: PathBuf, not_after: u64 },
    #[error("certificate signing request refused: {0}")]
    Csr(String),
    #[error("signing failed: {0}")]
    Sign(#[from] rcgen::Error),
}

pub(crate) fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Read {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn write(path: &Path, contents: &str, private: bool) -> Result<(), CertError> {
    let fail = |source| CertError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    std::fs::write(path, contents).map_err(fail)?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
    }
    #[cfg(not(unix))]
    let _ = private;
    Ok(())
}

/// The DER contents of the first PEM block.
pub fn pem_der(pem: &str) -> Result<Vec<u8>, String> {
    x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map(|(_, block)| block.contents)
        .map_err(|e| e.to_string())
}

pub(crate) fn pem_to_der(pem: &str, path: &Path, what: &'static str) -> Result<Vec<u8>, CertError> {
    pem_der(pem).map_err(|reason| CertError::Parse {
        path: path.to_path_buf(),
        what,
        reason,
    })
}

/// A certificate (PEM) and its private key (PEM, PKCS#8).
#[derive(Debug, Clone)]
pub struct Credential {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Credential {
    /// Loads a certificate and key, checking that the key belongs to the certificate.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, CertError> {
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CertError::Parse {
            path: key_path.to_path_buf(),
            what: "PEM private key",
            reason: e.to_string(),
        })?;
        let der = pem_to_der(&cert_pem, cert_path, "PEM certificate")?;
        let (_, cert) = X509Certificate::from_der(&der).map_err(|e| CertError::Parse {
            path: cert_path.to_path_buf(),
            what: "PEM certificate",
            reason: e.to_string(),
        })?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CertError::Mismatch {
                cert: cert_path.to_path_buf(),
                key: key_path.to_path_buf(),
            });
        }
        Ok(Self { cert_pem, key_pem })
    }

    /// Writes `cert` and `key` (the key readable by the owner only).
    pub fn write(&self, cert_path: &Path, key_path: &Path) -> Result<(), CertError> {
        write(cert_path, &self.cert_pem, false)?;
        write(key_path, &self.key_pem, true)
    }
}

/// URI SANs of a DER certificate.
pub fn uri_sans(der: &[u8]) -> Result<Vec<String>, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                out.push((*uri).to_string());
            }
        }
    }
    Ok(out)
}

/// When a DER certificate stops being valid.
pub fn not_after(der: &[u8]) -> Result<std::time::SystemTime, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let seconds = cert.validity().not_after.timestamp();
    let seconds =
        u64::try_from(seconds).map_err(|_| format!("notAfter {seconds} is before 1970"))?;
    Ok(std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds))
}

/// The trust domain a mesh root certificate carries (URI SAN `spiffe://<td>`).
pub fn ca_trust_domain(cert_pem: &str, path: &Path) -> Result<String, CertError> {
    let der = pem_to_der(cert_pem, path, "PEM certificate")?;
    uri_sans(&der)
        .map_err(|reason| CertError::Parse {
            path: path.to_path_buf(),
            what: "certificate",
            reason,
        })?
        .into_iter()
        .find_map(|uri| {
            let td = uri.strip_prefix("spiffe://")?;
            (!td.is_empty() && !td.contains('/')).then(|| td.to_string())
        })
        .ok_or_else(|| CertError::NoTrustDomain {
            path: path.to_path_buf(),
        })
}

/// Reads a PEM file.
pub fn read_pem(path: &Path) -> Result<String, CertError> {
    read(path)
}

/// The PEM form (`PRIVATE KEY`) of a PKCS#8 private key.
pub fn private_key_pem(pkcs8_der: &[u8]) -> Result<String, CertError> {
    let key = KeyPair::try_from(pkcs8_der)?;
    Ok(key.serialize_pem())
}

/// Creates a CSR (PEM) for `identity` with a fresh P-256 key; returns the
/// CSR and the private key (PKCS#8 DER), which never leaves the caller.
pub fn workload_csr(identity: &Identity) -> Result<(String, Vec<u8>), CertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_der()))
}
