//! Talking to a mesh on Kubernetes, through the API server only (the
//! kubeconfig's context, kube-rs):
//! - the control plane replicas are the pods labelled
//!   `app.kubernetes.io/part-of=ferry,app.kubernetes.io/component=control-plane`
//!   in `--namespace`. Their status API is reached by port-forward to
//!   15010, over TLS verified against the mesh CA root (ConfigMap
//!   `ferry-ca-root`) for the name the replicas serve (their
//!   `--server-name`).
//! - the caller authenticates with the kubeconfig's bearer token (or
//!   `--token-file`), which the replicas review and authorize
//!   (`get meshstatus.ferry.dev`).
//! - each node's proxy is the proxy pod (`component=proxy`) on that node.
//!   Its admin endpoint (127.0.0.1:15000 on the node) is reached by
//!   port-forward: never through a port opened on the node's address.
//! - logs come from the pods' log subresource.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use bytes::Bytes;
use ferry_api::proto::mesh_status_client::MeshStatusClient;
use ferry_api::proto::{
    NodeResourcesRequest, NodeResourcesResponse, StatusRequest, StatusResponse,
};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{ListParams, LogParams};
use kube::Api;

use super::client::{get_over, REQUEST_TIMEOUT};

/// The labels of the chart's pods.
const PART_OF: &str = "app.kubernetes.io/part-of=ferry";
const CONTROL_PLANE: &str = "app.kubernetes.io/component=control-plane";
const PROXY: &str = "app.kubernetes.io/component=proxy";

/// The control plane's gRPC port, the proxies' admin port, the control
/// plane's metrics port.
pub const CONTROL_PLANE_PORT: u16 = 15010;
pub const PROXY_ADMIN_PORT: u16 = 15000;
pub const CONTROL_PLANE_METRICS_PORT: u16 = 15014;

/// Where to find the mesh.
#[derive(Debug, Clone, Default)]
pub struct KubeTarget {
    /// The kubeconfig context (default: the current one).
    pub context: Option<String>,
    /// The namespace Ferry runs in.
    pub namespace: String,
    /// A bearer token for the status API, instead of the kubeconfig's.
    pub token_file: Option<std::path::PathBuf>,
}

/// A client of the mesh on one cluster.
#[derive(Clone)]
pub struct KubeClient {
    client: kube::Client,
    pub namespace: String,
    token: Option<String>,
    ca_pem: String,
    server_name: String,
    /// Running control plane pods.
    pub replicas: Vec<String>,
    /// Node to its running proxy pod.
    pub proxies: BTreeMap<String, String>,
}

impl std::fmt::Debug for KubeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeClient")
            .field("namespace", &self.namespace)
            .field("server_name", &self.server_name)
            .field("replicas", &self.replicas)
            .field("proxies", &self.proxies)
            .finish_non_exhaustive()
    }
}

fn running(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        && pod.metadata.deletion_timestamp.is_none()
}

fn has_labels(pod: &Pod, selector: &[&str]) -> bool {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    selector.iter().all(|term| {
        term.split_once('=')
            .is_some_and(|(k, v)| labels.get(k).map(String::as_str) == Some(v))
    })
}

impl KubeClient {
    /// Connects with the kubeconfig (`KUBECONFIG`, `~/.kube/config`, or
    /// in-cluster) and finds the mesh's pods.
    pub async fn connect(target: &KubeTarget) -> anyhow::Result<Self> {
        let options = kube::config::KubeConfigOptions {
            context: target.context.clone(),
            ..Default::default()
        };
        let config = match kube::Config::from_kubeconfig(&options).await {
            Ok(config) => config,
            Err(kubeconfig) => kube::Config::incluster().map_err(|incluster| {
                anyhow::anyhow!("--kubernetes: no usable kubeconfig ({kubeconfig}) and not in a cluster ({incluster})")
            })?,
        };
        let token = match &target.token_file {
            Some(path) => Some(read_token(path)?),
            None => config_token(&config)?,
        };
        let client = kube::Client::try_from(config).context("--kubernetes: building the client")?;
        let namespace = target.namespace.clone();
        let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        let listed = pods
            .list(&ListParams::default().labels(PART_OF))
            .await
            .with_context(|| format!("listing the pods of namespace {namespace}"))?;
        let mut replicas = Vec::new();
        let mut proxies = BTreeMap::new();
        let mut server_name = format!("ferry-control-plane.{namespace}.svc");
        for pod in listed.items.iter().filter(|p| running(p)) {
            let name = pod.metadata.name.clone().unwrap_or_default();
            if has_labels(pod, &[PART_OF, CONTROL_PLANE]) {
                // The name the replicas' serving certificate is for.
                let args = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.containers.first())
                    .and_then(|c| c.args.clone())
                    .unwrap_or_default();
                if let Some(i) = args.iter().position(|a| a == "--server-name") {
                    if let Some(named) = args.get(i + 1) {
                        server_name = named.clone();
                    }
                }
                replicas.push(name);
            } else if has_labels(pod, &[PART_OF, PROXY]) {
                if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
                    proxies.insert(node, name);
                }
            }
        }
        replicas.sort();
        if replicas.is_empty() {
            bail!("no running control plane pod in namespace {namespace} (labels {PART_OF},{CONTROL_PLANE}): is Ferry installed there? (--namespace)");
        }
        let root = Api::<ConfigMap>::namespaced(client.clone(), &namespace)
            .get("ferry-ca-root")
            .await
            .with_context(|| {
                format!("reading the mesh CA root (ConfigMap {namespace}/ferry-ca-root)")
            })?;
        let ca_pem = root
            .data
            .and_then(|d| d.get("ca.pem").cloned())
            .with_context(|| format!("ConfigMap {namespace}/ferry-ca-root has no ca.pem"))?;
        Ok(Self {
            client,
            namespace,
            token,
            ca_pem,
            server_name,
            replicas,
            proxies,
        })
    }

    /// The mesh's trust domain, from its CA root.
    pub fn trust_domain(&self) -> anyhow::Result<String> {
        Ok(ferry_pki::ca_trust_domain(
            &self.ca_pem,
            Path::new("ConfigMap ferry-ca-root"),
        )?)
    }

    /// A connection to `port` of pod `pod`, through the API server.
    async fn forward(&self, pod: &str, port: u16) -> anyhow::Result<tokio::io::DuplexStream> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut forwarder = pods
            .portforward(pod, &[port])
            .await
            .with_context(|| format!("port-forward to {}/{pod}:{port}", self.namespace))?;
        let stream = forwarder
            .take_stream(port)
            .with_context(|| format!("port-forward to {pod}:{port} gave no stream"))?;
        // The forwarder's task carries the bytes until the stream ends.
        tokio::spawn(async move {
            let _ = forwarder.join().await;
        });
        Ok(stream)
    }

    /// A status API client of replica `pod`.
    async fn replica(
        &self,
        pod: &str,
    ) -> anyhow::Result<MeshStatusClient<tonic::transport::Channel>> {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .domain_name(self.server_name.clone());
        let endpoint = tonic::transport::Endpoint::from_shared(format!(
            "https://{}:{CONTROL_PLANE_PORT}",
            self.server_name
        ))?
        .tls_config(tls)?
        .connect_timeout(REQUEST_TIMEOUT)
        .timeout(REQUEST_TIMEOUT);
        let this = self.clone();
        let pod_name = pod.to_string();
        let channel = endpoint
            .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                let (this, pod) = (this.clone(), pod_name.clone());
                async move {
                    this.forward(&pod, CONTROL_PLANE_PORT)
                        .await
                        .map(TokioIo::new)
                }
            }))
            .await
            .with_context(|| format!("control plane {pod}"))?;
        Ok(MeshStatusClient::new(channel)
            .max_decoding_message_size(super::client::MAX_STATUS_MESSAGE))
    }

    fn authorized<T>(&self, message: T) -> anyhow::Result<tonic::Request<T>> {
        let mut request = tonic::Request::new(message);
        let token = self.token.as_deref().context(
            "the status API needs a bearer token: the kubeconfig's user has none (client certificates are not forwarded); give one with --token-file (`kubectl create token NAME`)",
        )?;
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        Ok(request)
    }

    /// One replica's status.
    pub async fn status(&self, pod: &str) -> anyhow::Result<StatusResponse> {
        let request = self.authorized(StatusRequest {})?;
        let response = self
            .replica(pod)
            .await?
            .status(request)
            .await
            .map_err(|s| anyhow::anyhow!("control plane {pod}: {}: {}", s.code(), s.message()))?;
        Ok(response.into_inner())
    }

    /// What the control plane serves `node`, from the first replica that
    /// answers.
    pub async fn node_resources(&self, node: &str) -> anyhow::Result<NodeResourcesResponse> {
        let mut errors = Vec::new();
        for pod in &self.replicas {
            let asked = async {
                let request = self.authorized(NodeResourcesRequest {
                    node: node.to_string(),
                })?;
                self.replica(pod)
                    .await?
                    .node_resources(request)
                    .await
                    .map_err(|s| {
                        anyhow::anyhow!("control plane {pod}: {}: {}", s.code(), s.message())
                    })
            };
            match asked.await {
                Ok(response) => return Ok(response.into_inner()),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        bail!("no control plane replica answered: {}", errors.join("; "))
    }

    /// `GET path` on `port` of `pod`, through a port-forward.
    pub async fn http_get(&self, pod: &str, port: u16, path: &str) -> anyhow::Result<Bytes> {
        tokio::time::timeout(REQUEST_TIMEOUT, async {
            let stream = self.forward(pod, port).await?;
            get_over(stream, &format!("127.0.0.1:{port}"), path).await
        })
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {REQUEST_TIMEOUT:?}"))
        .and_then(|r| r)
        .with_context(|| format!("{}/{pod}:{port} {path}", self.namespace))
    }

    /// `GET path` of the admin endpoint of `node`'s proxy.
    pub async fn admin_get(&self, node: &str, path: &str) -> anyhow::Result<Bytes> {
        let pod = self.proxies.get(node).with_context(|| {
            format!(
                "no running proxy pod on node {node} (nodes with one: {})",
                self.proxies.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
        self.http_get(pod, PROXY_ADMIN_PORT, path).await
    }

    /// The last lines of a pod's log.
    pub async fn log(&self, pod: &str, lines: i64) -> anyhow::Result<String> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        pods.logs(
            pod,
            &LogParams {
                tail_lines: Some(lines),
                ..LogParams::default()
            },
        )
        .await
        .with_context(|| format!("the log of {}/{pod}", self.namespace))
    }
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let token = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("--token-file {}", path.display()))?
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        bail!("--token-file {}: empty", path.display());
    }
    Ok(token)
}

/// The bearer token of the kubeconfig's user, if it has one.
fn config_token(config: &kube::Config) -> anyhow::Result<Option<String>> {
    use secrecy::ExposeSecret;
    if let Some(token) = config.auth_info.token.as_ref() {
        return Ok(Some(token.expose_secret().to_string()));
    }
    if let Some(file) = config.auth_info.token_file.as_ref() {
        return read_token(Path::new(file)).map(Some);
    }
    Ok(None)
}
