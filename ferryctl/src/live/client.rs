//! Talking to a running lab's daemons: the control plane replicas' status
//! API (gRPC, mTLS with a node credential of the lab's PKI) and the
//! proxies' admin endpoints (HTTP on each node's loopback). Every socket
//! is opened inside the lab's network namespaces
//! ([`crate::lab::netns::connect_in`]).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use ferry_api::proto::mesh_status_client::MeshStatusClient;
use ferry_api::proto::{
    NodeResourcesRequest, NodeResourcesResponse, StatusRequest, StatusResponse,
};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use super::lab::{LabNodeRecord, LabRecord, LabReplica};
use crate::lab::netns::connect_in;

/// How long one request to a daemon may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A TCP connection inside `netns`, for tokio.
async fn connect(netns: &str, addr: SocketAddr) -> anyhow::Result<tokio::net::TcpStream> {
    let netns = netns.to_string();
    let stream =
        tokio::task::spawn_blocking(move || connect_in(&netns, addr, REQUEST_TIMEOUT)).await??;
    Ok(tokio::net::TcpStream::from_std(stream)?)
}

/// A replica's refusal, named.
fn refused(replica: &LabReplica, status: &tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "control plane {} at {}: {}: {}",
        replica.name,
        replica.address,
        status.code(),
        status.message()
    )
}

/// Largest answer accepted from the status API (a large mesh's
/// resources for one node, as the proxies accept them).
pub const MAX_STATUS_MESSAGE: usize = 512 << 20;

/// A client of one running lab.
#[derive(Debug, Clone)]
pub struct LabClient {
    pub record: LabRecord,
    ca_pem: String,
}

impl LabClient {
    /// Calls the status API with the lab's node credentials (it admits
    /// the mesh's node credentials; each reads its own node's resources).
    pub fn new(record: LabRecord) -> anyhow::Result<Self> {
        if record.nodes.is_empty() {
            bail!("lab {} has no nodes", record.name);
        }
        let ca_pem = ferry_pki::read_pem(&record.pki.join(ferry_pki::files::CA_CERT))?;
        Ok(Self { record, ca_pem })
    }

    /// mTLS as `node` (default: the lab's first node).
    fn tls(&self, node: Option<&str>) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
        let node = match node {
            Some(node) => node,
            None => &self.record.nodes[0].name,
        };
        let (cert, key) = ferry_pki::files::node(node);
        let pki = &self.record.pki;
        let credential = ferry_pki::Credential::load(&pki.join(cert), &pki.join(key))
            .with_context(|| format!("the credential of node {node}"))?;
        Ok(tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(
                credential.cert_pem,
                credential.key_pem,
            )))
    }

    /// A client of one replica's status API, as `node`.
    async fn replica(
        &self,
        replica: &LabReplica,
        node: Option<&str>,
    ) -> anyhow::Result<MeshStatusClient<tonic::transport::Channel>> {
        let netns = self.record.control_plane_netns.clone();
        let addr = replica.address;
        let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?
            .tls_config(self.tls(node)?)?
            .connect_timeout(REQUEST_TIMEOUT)
            .timeout(REQUEST_TIMEOUT);
        let channel = endpoint
            .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                let netns = netns.clone();
                async move { connect(&netns, addr).await.map(TokioIo::new) }
            }))
            .await
            .with_context(|| format!("control plane {} at {addr}", replica.name))?;
        Ok(MeshStatusClient::new(channel).max_decoding_message_size(MAX_STATUS_MESSAGE))
    }

    /// One replica's status.
    pub async fn status(&self, replica: &LabReplica) -> anyhow::Result<StatusResponse> {
        let response = self
            .replica(replica, None)
            .await?
            .status(StatusRequest {})
            .await
            .map_err(|status| refused(replica, &status))?;
        Ok(response.into_inner())
    }

    /// What the control plane serves `node`, from the first replica that
    /// answers.
    pub async fn node_resources(&self, node: &str) -> anyhow::Result<NodeResourcesResponse> {
        let mut errors = Vec::new();
        for replica in &self.record.replicas {
            let asked = async {
                self.replica(replica, Some(node))
                    .await?
                    .node_resources(NodeResourcesRequest {
                        node: node.to_string(),
                    })
                    .await
                    .map_err(|status| refused(replica, &status))
            };
            match asked.await {
                Ok(response) => return Ok(response.into_inner()),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        bail!("no control plane replica answered: {}", errors.join("; "))
    }

    /// `GET path` of a node's proxy admin endpoint: the body, which must
    /// come with 200.
    pub async fn admin_get(&self, node: &LabNodeRecord, path: &str) -> anyhow::Result<Bytes> {
        let what = format!("proxy of {} ({} {path})", node.name, node.admin);
        http_get(&node.netns, node.admin, path)
            .await
            .with_context(|| what)
    }
}

/// `GET path` from `addr` inside `netns`: the body, which must come with
/// 200, within [`REQUEST_TIMEOUT`].
pub async fn http_get(netns: &str, addr: SocketAddr, path: &str) -> anyhow::Result<Bytes> {
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        let stream = connect(netns, addr).await?;
        get_over(stream, &addr.to_string(), path).await
    })
    .await
    .map_err(|_| anyhow::anyhow!("no answer within {REQUEST_TIMEOUT:?}"))
    .and_then(|r| r)
}

/// `GET path` over a connection made elsewhere (in a namespace, through
/// a port-forward): the body, which must come with 200.
pub async fn get_over<S>(stream: S, host: &str, path: &str) -> anyhow::Result<Bytes>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = http::Request::get(path)
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("{status}: {}", String::from_utf8_lossy(&body).trim());
    }
    Ok(body)
}
