//! The mesh CA's key material in a cluster: the root and its key in a
//! Secret ([`load_or_create_ca`]), generated on first start when allowed
//! (several replicas starting together agree on whichever Secret was
//! created first), and the root certificate published in a ConfigMap for
//! the proxies ([`publish_root`]).

use std::path::Path;
use std::time::Duration;

use ferry_pki::Authority;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::PostParams;
use kube::{Api, Client};

/// The Secret keys of the CA.
pub const CA_CERT_KEY: &str = "ca.pem";
pub const CA_KEY_KEY: &str = "ca-key.pem";
/// The ConfigMap key of the published root.
pub const ROOT_KEY: &str = "ca.pem";

/// Errors of the in-cluster CA material.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("Secret {namespace}/{name}: {reason}")]
    Secret {
        namespace: String,
        name: String,
        reason: String,
    },
    #[error("CA: {0}")]
    Ca(#[from] ferry_pki::CertError),
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
    root_lifetime: Duration,
) -> Result<Authority, SecretError> {
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    let error = |reason: String| SecretError::Secret {
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
        let authority = Authority::generate(trust_domain, root_lifetime)?;
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
) -> Result<(), SecretError> {
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
