//! A two-node loopback cluster for end-to-end tests: a control plane with
//! the mesh CA and two node proxies, each standing on its own 127.n.0.y
//! address; pods are echo servers on 127.n.{1,2}.y; clients use the
//! proxies' SOCKS5 listener from their pod's address. Each test takes its
//! own 127.<n>.0.0/16 block so tests can run in parallel.

use std::net::{IpAddr, SocketAddr};

use anyhow::Context;

use crate::net::EchoServer;
use crate::{LoopbackMesh, MeshOptions, NodeSpec};

/// Manifests of a two-node cluster in block 127.<n>.0.0/16.
pub fn cluster(n: u8, affinity_timeout: u32) -> String {
    let pod = |name: &str, node: &str, ip: String, sa: &str, app: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{app: {app}}}}}\nspec:\n  nodeName: {node}\n  serviceAccountName: {sa}\n  containers: [{{name: c, image: echo, ports: [{{name: api, containerPort: 9090}}]}}]\nstatus:\n  phase: Running\n  podIP: {ip}\n  conditions: [{{type: Ready, status: \"True\"}}]\n---\n"
        )
    };
    let mut out = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop}}\n---\n\
         apiVersion: v1\nkind: Node\nmetadata: {{name: node-a}}\nstatus: {{addresses: [{{type: InternalIP, address: 127.{n}.0.1}}]}}\n---\n\
         apiVersion: v1\nkind: Node\nmetadata: {{name: node-b}}\nstatus: {{addresses: [{{type: InternalIP, address: 127.{n}.0.2}}]}}\n---\n"
    );
    out += &pod(
        "client",
        "node-a",
        format!("127.{n}.1.10"),
        "client",
        "client",
    );
    out += &pod(
        "backend-a",
        "node-a",
        format!("127.{n}.1.11"),
        "backend",
        "backend",
    );
    out += &pod(
        "backend-b1",
        "node-b",
        format!("127.{n}.2.11"),
        "backend",
        "backend",
    );
    // Another service account: connections to it need their own HBONE connection.
    out += &pod(
        "backend-b2",
        "node-b",
        format!("127.{n}.2.12"),
        "backend2",
        "backend",
    );
    out += &format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: backend, namespace: shop}}\nspec:\n  clusterIP: 10.96.{n}.20\n  selector: {{app: backend}}\n  ports: [{{name: http, port: 80, targetPort: api}}]\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: sticky, namespace: shop}}\nspec:\n  clusterIP: 10.96.{n}.21\n  selector: {{app: backend}}\n  ports: [{{name: http, port: 80, targetPort: api}}]\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {affinity_timeout}}}}}\n"
    );
    out
}

/// The running cluster.
#[derive(Debug)]
pub struct Cluster {
    pub mesh: LoopbackMesh,
    _backends: Vec<EchoServer>,
    _manifests: tempfile::TempDir,
    pub n: u8,
}

impl Cluster {
    pub async fn start(n: u8, options: MeshOptions) -> anyhow::Result<Self> {
        let manifests = tempfile::tempdir()?;
        std::fs::write(manifests.path().join("cluster.yaml"), cluster(n, 2))?;
        let mut backends = Vec::new();
        for (name, ip) in [
            ("backend-a", format!("127.{n}.1.11")),
            ("backend-b1", format!("127.{n}.2.11")),
            ("backend-b2", format!("127.{n}.2.12")),
        ] {
            backends.push(EchoServer::start(format!("{ip}:9090").parse()?, name).await?);
        }
        let nodes = [
            NodeSpec::new("node-a", &format!("127.{n}.0.1"))?,
            NodeSpec::new("node-b", &format!("127.{n}.0.2"))?,
        ];
        let mesh = tokio::task::block_in_place(|| {
            LoopbackMesh::start_with(manifests.path(), &nodes, options)
        })?;
        let cluster = Self {
            mesh,
            _backends: backends,
            _manifests: manifests,
            n,
        };
        // Ready, and each proxy holds certificates for all its pods' identities.
        tokio::task::block_in_place(|| {
            cluster.mesh.wait_all("config and certificates", |d| {
                d["ready"] == true
                    && d["resources"]["service"]
                        .as_array()
                        .is_some_and(|s| s.len() == 2)
                    // Two service accounts run on each node.
                    && d["certificates"].as_array().is_some_and(|c| c.len() >= 2)
            })
        })?;
        Ok(cluster)
    }

    pub fn ip(&self, third: u8, fourth: u8) -> IpAddr {
        IpAddr::from([127, self.n, third, fourth])
    }

    /// The SOCKS5 listener of a node's proxy.
    pub fn socks(&self, node: &str) -> anyhow::Result<SocketAddr> {
        Ok(self.mesh.proxy(node).context("no such node")?.socks5)
    }

    pub fn client(&self) -> IpAddr {
        self.ip(1, 10)
    }
}

/// Options for a cluster with the mesh CA and mTLS.
pub fn mtls() -> MeshOptions {
    MeshOptions {
        pki: true,
        ..MeshOptions::default()
    }
}
