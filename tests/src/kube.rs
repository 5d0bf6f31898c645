//! The daemons as a cluster runs them, against the in-test API server
//! ([`crate::apiserver`]): a control plane with `--source kubernetes` and
//! its CA in a Secret, and proxies that prove their node with a service
//! account token. Each test gives its own loopback block (`127.<block>.
//! 0.0/16`), so no other test's ephemeral ports can collide with them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::{binary, Process};

/// A control plane replica.
#[derive(Debug)]
pub struct ControlPlane {
    /// gRPC (config, CA, status).
    pub listen: SocketAddr,
    pub metrics: SocketAddr,
    pub log: PathBuf,
    pub process: Process,
}

/// Starts replica `replica` (1-based) named `name`, at `127.<block>.0.<replica>`;
/// its serving certificate is for that address.
pub fn start_control_plane(
    dir: &Path,
    kubeconfig: &Path,
    name: &str,
    block: u8,
    replica: u8,
) -> anyhow::Result<ControlPlane> {
    let ip = format!("127.{block}.0.{replica}");
    let listen: SocketAddr = format!("{ip}:15010").parse()?;
    let metrics: SocketAddr = format!("{ip}:15014").parse()?;
    let log = dir.join(format!("{name}.log"));
    let process = Process::start_with_env(
        name,
        &binary("ferry-control-plane")?,
        &[
            "--source",
            "kubernetes",
            "--listen",
            &listen.to_string(),
            "--metrics-listen",
            &metrics.to_string(),
            "--ca-secret",
            "ferry-ca",
            "--namespace",
            "ferry-system",
            "--server-name",
            &ip,
            "--token-audience",
            "ferry",
        ],
        &[
            ("KUBECONFIG".into(), kubeconfig.display().to_string()),
            ("FERRY_REPLICA_NAME".into(), name.to_string()),
        ],
        log.clone(),
    )?;
    Ok(ControlPlane {
        listen,
        metrics,
        log,
        process,
    })
}

/// A node proxy.
#[derive(Debug)]
pub struct Proxy {
    pub admin: SocketAddr,
    pub log: PathBuf,
    pub process: Process,
}

/// Starts a proxy for `node` with service account token `token`, its
/// listeners at `127.<block>.1.<index>`; the CA root is `dir/ca.pem`.
pub fn start_proxy(
    dir: &Path,
    cp: &ControlPlane,
    node: &str,
    token: &str,
    name: &str,
    block: u8,
    index: u8,
) -> anyhow::Result<Proxy> {
    let token_file = dir.join(format!("{name}.token"));
    std::fs::write(&token_file, token)?;
    let ip = format!("127.{block}.1.{index}");
    let admin: SocketAddr = format!("{ip}:15000").parse()?;
    let log = dir.join(format!("{name}.log"));
    let process = Process::start(
        name,
        &binary("ferry-proxy")?,
        &[
            "--node",
            node,
            "--control-plane",
            &format!("https://{}", cp.listen),
            "--ca-root",
            &dir.join("ca.pem").display().to_string(),
            "--token-file",
            &token_file.display().to_string(),
            "--admin",
            &admin.to_string(),
            "--socks5",
            &format!("{ip}:1080"),
            "--hbone",
            &format!("{ip}:15008"),
        ],
        log.clone(),
    )?;
    Ok(Proxy {
        admin,
        log,
        process,
    })
}
