//! What the proxy keeps on disk (`--state-dir`), so that a restart while
//! the control plane is away starts from its last good configuration and
//! certificates instead of from nothing. (Without them it fails closed and
//! refuses every connection; with them it keeps enforcing policy and
//! presenting its identities.)
//!
//! - `config.pb`: every resource the store holds, as the control plane sent
//!   it (a `DeltaResponse`, protobuf), written once changes have settled and
//!   at most once per `settle`, atomically (a temporary file renamed over
//!   the old one).
//! - `certs/<namespace>/<service account>/cert.pem` and `key.pem`: each
//!   workload certificate chain and its private key, written when
//!   obtained, removed when the identity is no longer served.
//!
//! Files are mode 0600 in 0700 folders; nothing is encrypted (the private
//! keys are as safe as the node's disk, as a kubelet's are). At start, a
//! configuration saved for this node is applied to the store like a
//! control-plane response (the config stream then resynchronises it with a
//! delta); certificates still valid are installed and renewed as usual.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_api::identity::Identity;
use ferry_api::proto::DeltaResponse;
use ferry_core::state::{ConfigStore, ProxyState};
use prost::Message as _;

const CONFIG: &str = "config.pb";
const CERTS: &str = "certs";
/// The `nonce` of a saved configuration starts with this, then the node.
const SAVED_FOR: &str = "saved-for:";

/// Something the state folder could not do.
#[derive(Debug, thiserror::Error)]
pub enum SavedError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a saved configuration: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: saved for node {saved}, not {node}")]
    OtherNode {
        path: PathBuf,
        saved: String,
        node: String,
    },
    #[error("private key: {0}")]
    Key(#[from] ferry_pki::CertError),
}

/// A workload certificate as saved: its chain (PEM) and key (PKCS#8 DER).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedCertificate {
    pub identity: Identity,
    pub chain_pem: Vec<String>,
    pub key_der: Vec<u8>,
}

/// The proxy's state folder.
#[derive(Debug)]
pub struct StateDir {
    root: PathBuf,
    node: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SavedError + '_ {
    move |source| SavedError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` readable by the owner only. A folder that already exists
/// keeps its mode (`--state-dir` may name a shared parent such as a
/// volume's mount point); what Ferry writes in it is private anyway.
fn private_dir(dir: &Path) -> Result<(), SavedError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically: a private temporary file, synced,
/// renamed over `path`.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SavedError> {
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

impl StateDir {
    /// Opens (creating it when needed) the state folder of `node`'s proxy.
    pub fn open(root: impl Into<PathBuf>, node: &str) -> Result<Self, SavedError> {
        let root = root.into();
        private_dir(&root)?;
        private_dir(&root.join(CERTS))?;
        Ok(Self {
            root,
            node: node.to_string(),
        })
    }

    fn config_path(&self) -> PathBuf {
        self.root.join(CONFIG)
    }

    /// The configuration saved for this node, if any.
    pub fn load_config(&self) -> Result<Option<DeltaResponse>, SavedError> {
        let path = self.config_path();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        let saved = DeltaResponse::decode(bytes.as_slice()).map_err(|e| SavedError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let Some(node) = saved.nonce.strip_prefix(SAVED_FOR) else {
            return Err(SavedError::Corrupt {
                path,
                reason: "no node recorded".into(),
            });
        };
        if node != self.node {
            return Err(SavedError::OtherNode {
                path,
                saved: node.to_string(),
                node: self.node.clone(),
            });
        }
        Ok(Some(saved))
    }

    /// Saves everything `state` holds.
    pub fn save_config(&self, state: &ProxyState) -> Result<(), SavedError> {
        let saved = DeltaResponse {
            nonce: format!("{SAVED_FOR}{}", self.node),
            revision: state.revision(),
            resources: state.iter().map(|r| r.to_proto()).collect(),
            removed: Vec::new(),
        };
        write_private(&self.config_path(), &saved.encode_to_vec())
    }

    /// Saves the configuration whenever the store changes (every applied
    /// delta, whatever its revision: a new control-plane process numbers
    /// its revisions from 1 again), at most once per `settle`, until the
    /// task is dropped. A failed write is logged and retried with the next
    /// change.
    pub async fn follow(self: Arc<Self>, store: Arc<ConfigStore>, settle: Duration) {
        let mut changes = store.subscribe();
        loop {
            if changes.changed().await.is_err() {
                return;
            }
            tokio::time::sleep(settle).await;
            changes.borrow_and_update();
            let state = store.snapshot();
            let dir = self.clone();
            let written = tokio::task::spawn_blocking(move || {
                dir.save_config(&state).map(|()| state.revision())
            })
            .await;
            match written {
                Ok(Ok(revision)) => {
                    tracing::debug!(revision, "configuration saved");
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "saving the configuration failed"),
                Err(e) => tracing::warn!(error = %e, "saving the configuration failed"),
            }
        }
    }

    /// `certs/<namespace>/<service account>/cert.pem` and `key.pem`
    /// (namespace and service account names are DNS labels: no `/`, no
    /// `..`, so they are safe as folder names).
    fn certificate_paths(&self, identity: &Identity) -> (PathBuf, PathBuf) {
        let dir = self
            .root
            .join(CERTS)
            .join(&identity.namespace)
            .join(&identity.service_account);
        (dir.join("cert.pem"), dir.join("key.pem"))
    }

    /// Saves a workload certificate and its key (the key first: a chain
    /// without its key is never left behind).
    pub fn save_certificate(&self, saved: &SavedCertificate) -> Result<(), SavedError> {
        let (cert, key) = self.certificate_paths(&saved.identity);
        if let Some(dir) = cert.parent() {
            private_dir(dir)?;
        }
        write_private(&key, ferry_pki::private_key_pem(&saved.key_der)?.as_bytes())?;
        write_private(&cert, saved.chain_pem.concat().as_bytes())
    }

    /// Forgets the certificate of an identity no longer served.
    pub fn remove_certificate(&self, identity: &Identity) {
        let (cert, key) = self.certificate_paths(identity);
        for path in [&cert, &key] {
            if let Err(e) = std::fs::remove_file(path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "removing a saved certificate failed");
                }
            }
        }
        // The identity's folder, and its namespace's when now empty.
        if let Some(dir) = cert.parent() {
            let _ = std::fs::remove_dir(dir);
            if let Some(namespace) = dir.parent() {
                let _ = std::fs::remove_dir(namespace);
            }
        }
    }

    /// The saved certificates of `trust_domain`, each with its key checked
    /// to belong to it (the caller verifies the rest as it would a fresh
    /// one). Unreadable files are logged and skipped.
    pub fn load_certificates(&self, trust_domain: &str) -> Vec<SavedCertificate> {
        let names = |dir: &Path| -> Vec<String> {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        };
        let root = self.root.join(CERTS);
        let mut out = Vec::new();
        for namespace in names(&root) {
            for account in names(&root.join(&namespace)) {
                let identity = Identity::new(trust_domain, &namespace, &account);
                let (cert, key) = self.certificate_paths(&identity);
                let loaded = ferry_pki::Credential::load(&cert, &key)
                    .map_err(|e| e.to_string())
                    .and_then(|credential| {
                        let key_der = ferry_pki::pem_der(&credential.key_pem)?;
                        Ok(SavedCertificate {
                            identity,
                            chain_pem: vec![credential.cert_pem],
                            key_der,
                        })
                    });
                match loaded {
                    Ok(saved) => out.push(saved),
                    Err(reason) => {
                        tracing::warn!(path = %cert.display(), %reason, "saved certificate skipped")
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::model::Node;
    use ferry_api::ResourceBody;

    fn node(name: &str) -> ResourceBody {
        ResourceBody::Node(Box::new(Node {
            name: name.into(),
            addresses: vec![],
            hbone: Some("10.1.0.1:15008".parse().unwrap()),
            zone: None,
        }))
    }

    #[test]
    fn the_configuration_round_trips_for_its_node_only() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path().join("state"), "node-a").unwrap();
        assert!(state.load_config().unwrap().is_none());
        let store = ConfigStore::holding(&[node("node-a"), node("node-b")]);
        state.save_config(&store.snapshot()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dir.path().join("state")), 0o700);
            assert_eq!(mode(&dir.path().join("state").join(CONFIG)), 0o600);
            // A folder that exists (a shared mount point) keeps its mode;
            // what is written in it is private.
            let shared = dir.path().join("shared");
            std::fs::create_dir(&shared).unwrap();
            std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
            let in_shared = StateDir::open(&shared, "node-a").unwrap();
            in_shared.save_config(&store.snapshot()).unwrap();
            assert_eq!(mode(&shared), 0o755);
            assert_eq!(mode(&shared.join(CONFIG)), 0o600);
            assert_eq!(mode(&shared.join(CERTS)), 0o700);
        }
        // Applied to an empty store, it gives the same resources, versions
        // included (the control plane then sends only what changed).
        let restored = ConfigStore::new();
        restored.apply(state.load_config().unwrap().unwrap());
        assert!(restored.snapshot().is_configured());
        let sorted = |store: &ConfigStore| {
            let mut versions: Vec<_> = store
                .snapshot()
                .versions()
                .into_iter()
                .map(|v| (format!("{:?}", v.key), v.version))
                .collect();
            versions.sort();
            versions
        };
        assert_eq!(sorted(&restored), sorted(&store));
        // Another node's proxy does not take it.
        let other = StateDir::open(dir.path().join("state"), "node-b").unwrap();
        assert!(matches!(
            other.load_config(),
            Err(SavedError::OtherNode { .. })
        ));
        // Garbage is named, not applied.
        std::fs::write(dir.path().join("state").join(CONFIG), b"\xff\xff\xff").unwrap();
        assert!(matches!(
            state.load_config(),
            Err(SavedError::Corrupt { .. })
        ));
    }

    #[test]
    fn certificates_round_trip_and_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path(), "node-a").unwrap();
        let ca = ferry_pki::Authority::generate("td", Duration::from_secs(3600)).unwrap();
        let identity = Identity::new("td", "shop", "backend");
        let (csr, key_der) = ferry_pki::workload_csr(&identity).unwrap();
        let (read, params) = ca.read_csr(&csr).unwrap();
        let chain = ca
            .sign_workload(&read, &params, Duration::from_secs(600))
            .unwrap();
        let saved = SavedCertificate {
            identity: identity.clone(),
            chain_pem: vec![chain],
            key_der,
        };
        state.save_certificate(&saved).unwrap();
        assert_eq!(state.load_certificates("td"), std::slice::from_ref(&saved));
        // A key that is not the certificate's is not loaded.
        let (_, other_key) = ferry_pki::workload_csr(&identity).unwrap();
        state
            .save_certificate(&SavedCertificate {
                key_der: other_key,
                ..saved.clone()
            })
            .unwrap();
        assert!(state.load_certificates("td").is_empty());
        state.remove_certificate(&identity);
        assert_eq!(
            std::fs::read_dir(dir.path().join(CERTS)).unwrap().count(),
            0
        );
    }
}
