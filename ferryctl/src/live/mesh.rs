//! One running mesh, wherever it runs: the lab on this machine
//! ([`LabClient`]) or a cluster ([`KubeClient`]). The commands ask it the
//! same questions either way.

use anyhow::Context;
use bytes::Bytes;
use ferry_api::proto::{NodeResourcesResponse, StatusResponse};

use super::client::{http_get, LabClient};
use super::kubernetes::{KubeClient, CONTROL_PLANE_METRICS_PORT};

/// Lines of each log a bug report keeps on a cluster (the lab keeps the
/// last MiB of each file).
const LOG_LINES: i64 = 5_000;

/// A running mesh.
#[derive(Debug)]
pub enum Mesh {
    Lab(LabClient),
    Kubernetes(KubeClient),
}

/// A control plane replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub name: String,
    /// How it is reached: an address in the lab, `pod/<name>` on a cluster.
    pub address: String,
}

/// The lab's record of `replica`.
fn lab_replica<'a>(
    lab: &'a LabClient,
    replica: &Replica,
) -> anyhow::Result<&'a super::lab::LabReplica> {
    lab.record
        .replicas
        .iter()
        .find(|r| r.name == replica.name)
        .with_context(|| format!("no replica {} in lab {}", replica.name, lab.record.name))
}

/// A file of a log, or why it could not be had.
pub type LogFile = (String, anyhow::Result<Vec<u8>>);

impl Mesh {
    /// For people: `lab NAME`, `namespace NS of the cluster`.
    pub fn name(&self) -> String {
        match self {
            Mesh::Lab(lab) => format!("lab {}", lab.record.name),
            Mesh::Kubernetes(kube) => format!("namespace {} of the cluster", kube.namespace),
        }
    }

    /// The lab, when the mesh is one.
    pub fn lab(&self) -> Option<&LabClient> {
        match self {
            Mesh::Lab(lab) => Some(lab),
            Mesh::Kubernetes(_) => None,
        }
    }

    pub fn replicas(&self) -> Vec<Replica> {
        match self {
            Mesh::Lab(lab) => lab
                .record
                .replicas
                .iter()
                .map(|r| Replica {
                    name: r.name.clone(),
                    address: r.address.to_string(),
                })
                .collect(),
            Mesh::Kubernetes(kube) => kube
                .replicas
                .iter()
                .map(|pod| Replica {
                    name: pod.clone(),
                    address: format!("pod/{pod}"),
                })
                .collect(),
        }
    }

    /// The nodes with a proxy to ask.
    pub fn nodes(&self) -> Vec<String> {
        match self {
            Mesh::Lab(lab) => lab.record.nodes.iter().map(|n| n.name.clone()).collect(),
            Mesh::Kubernetes(kube) => kube.proxies.keys().cloned().collect(),
        }
    }

    pub async fn status(&self, replica: &Replica) -> anyhow::Result<StatusResponse> {
        match self {
            Mesh::Lab(lab) => lab.status(lab_replica(lab, replica)?).await,
            Mesh::Kubernetes(kube) => kube.status(&replica.name).await,
        }
    }

    pub async fn node_resources(&self, node: &str) -> anyhow::Result<NodeResourcesResponse> {
        match self {
            Mesh::Lab(lab) => lab.node_resources(node).await,
            Mesh::Kubernetes(kube) => kube.node_resources(node).await,
        }
    }

    /// `GET path` of `node`'s proxy admin endpoint.
    pub async fn admin_get(&self, node: &str, path: &str) -> anyhow::Result<Bytes> {
        match self {
            Mesh::Lab(lab) => lab.admin_get(lab.record.node(node)?, path).await,
            Mesh::Kubernetes(kube) => kube.admin_get(node, path).await,
        }
    }

    /// The mesh's trust domain.
    pub fn trust_domain(&self) -> anyhow::Result<String> {
        match self {
            Mesh::Lab(lab) => {
                let pki = &lab.record.pki;
                let ca = ferry_pki::read_pem(&pki.join(ferry_pki::files::CA_CERT))?;
                Ok(ferry_pki::ca_trust_domain(&ca, pki)?)
            }
            Mesh::Kubernetes(kube) => kube.trust_domain(),
        }
    }

    /// A replica's `/metrics`.
    pub async fn replica_metrics(&self, replica: &Replica) -> anyhow::Result<Bytes> {
        match self {
            Mesh::Lab(lab) => {
                let record = lab_replica(lab, replica)?;
                http_get(&lab.record.control_plane_netns, record.metrics, "/metrics").await
            }
            Mesh::Kubernetes(kube) => {
                kube.http_get(&replica.name, CONTROL_PLANE_METRICS_PORT, "/metrics")
                    .await
            }
        }
    }

    /// The recent log of a replica: its files in the lab (restarts
    /// included), its pod's log on a cluster.
    pub async fn replica_logs(&self, replica: &Replica) -> Vec<LogFile> {
        match self {
            Mesh::Lab(lab) => super::bugreport::lab_logs(&lab.record.work, &replica.name),
            Mesh::Kubernetes(kube) => vec![(
                format!("{}.log", replica.name),
                kube.log(&replica.name, LOG_LINES)
                    .await
                    .map(String::into_bytes),
            )],
        }
    }

    /// The recent log of `node`'s proxy.
    pub async fn proxy_logs(&self, node: &str) -> Vec<LogFile> {
        match self {
            Mesh::Lab(lab) => {
                super::bugreport::lab_logs(&lab.record.work, &format!("proxy-{node}"))
            }
            Mesh::Kubernetes(kube) => match kube.proxies.get(node) {
                Some(pod) => vec![(
                    format!("{pod}.log"),
                    kube.log(pod, LOG_LINES).await.map(String::into_bytes),
                )],
                None => vec![(
                    format!("proxy-{node}.log"),
                    Err(anyhow::anyhow!("no running proxy pod on {node}")),
                )],
            },
        }
    }

    /// What describes the mesh's parts in a bug report.
    pub fn summary(&self) -> anyhow::Result<String> {
        Ok(match self {
            Mesh::Lab(lab) => serde_json::to_string_pretty(&lab.record)?,
            Mesh::Kubernetes(kube) => serde_json::to_string_pretty(&serde_json::json!({
                "namespace": kube.namespace,
                "control_plane_pods": kube.replicas,
                "proxy_pods": kube.proxies,
            }))?,
        })
    }
}
