//! End-to-end harness: runs the real Ferry binaries as processes and talks
//! to them over real sockets.
//!
//! Everything a test starts is owned by a guard: [`Process`] kills its child
//! by PID on drop, [`tempfile::TempDir`] removes its folder, so a failing
//! test cleans up as well as a passing one. All traffic stays on loopback.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub mod apiserver;
pub mod kube;
pub mod net;
pub mod netns;
pub mod otlp;
pub mod prom;
pub mod two_nodes;

pub use ferryctl::lab::process::{binary, copy_dir, rss_kib, wait_for, Process};

/// The repository root (for deploy/examples and friends).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A free TCP port on 127.0.0.1 for a daemon to listen on, checked by
/// binding it (the listener is closed again).
///
/// Taken below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`): a port the OS hands out as
/// "ephemeral" can be taken, before the daemon binds it, by the source
/// port of any outgoing connection of a test running beside (a real
/// failure: `--metrics-listen 127.0.0.1:38643: Address already in use`).
/// Ports below the range are only ever taken by listeners; each call of
/// this process moves on (tests of one binary run in parallel threads),
/// and each process starts elsewhere in the range.
pub fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768);
    let (low, high) = (10_000u32, ephemeral_low.clamp(12_000, 65_535));
    let span = high - low;
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let Ok(port) = u16::try_from(low + offset) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    // Every port below the range is taken: let the OS pick.
    let listener = TcpListener::bind("127.0.0.1:0").context("binding an ephemeral port")?;
    Ok(listener.local_addr()?.port())
}

/// A minimal HTTP/1.1 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw).context("response is not UTF-8")?;
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status code")?;
    Ok((status, body.to_string()))
}

/// Async twin of [`wait_for`]: polls `check` every 100 ms until it returns
/// `Some`, or fails after `timeout`.
pub async fn wait_for_async<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::from("condition not met");
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node of a loopback mesh: its name and the loopback address standing for it.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub ip: IpAddr,
}

impl NodeSpec {
    pub fn new(name: &str, ip: &str) -> anyhow::Result<Self> {
        Ok(Self {
            name: name.into(),
            ip: ip.parse().with_context(|| format!("node address {ip}"))?,
        })
    }
}

/// How to run a loopback mesh.
#[derive(Debug, Clone, Default)]
pub struct MeshOptions {
    /// Create a PKI with `ferry-certs` and run with mTLS and the mesh CA.
    pub pki: bool,
    /// `--workload-cert-ttl` of the control plane, seconds.
    pub workload_cert_ttl: Option<u64>,
    /// Where a node's proxy really listens for HBONE, when something (a
    /// recording relay) stands at the address the control plane announces.
    pub hbone_listen: Vec<(String, SocketAddr)>,
    /// Extra environment of every proxy (OTEL_* for tracing tests).
    pub proxy_env: Vec<(String, String)>,
    /// Give every proxy a `--state-dir` (kept across [`LoopbackMesh::restart_proxy`]).
    pub state_dirs: bool,
    /// More flags for every proxy.
    pub proxy_args: Vec<String>,
}

/// A running proxy and its addresses.
#[derive(Debug)]
pub struct ProxyHandle {
    pub node: String,
    pub admin: SocketAddr,
    pub socks5: SocketAddr,
    pub hbone: SocketAddr,
    pub process: Process,
    /// How it was started, to start it again.
    args: Vec<String>,
    restarts: u32,
}

/// A control plane and node proxies on loopback, reading a manifest folder.
#[derive(Debug)]
pub struct LoopbackMesh {
    pub manifests: tempfile::TempDir,
    pub logs: tempfile::TempDir,
    pub pki: Option<tempfile::TempDir>,
    options: MeshOptions,
    pub control_plane_port: u16,
    /// The control plane's `/metrics` listener.
    pub control_plane_metrics: SocketAddr,
    pub control_plane: Process,
    pub proxies: Vec<ProxyHandle>,
}

impl LoopbackMesh {
    /// Starts a control plane on a copy of `manifests` and one proxy per
    /// node name, without mTLS, every listener on 127.0.0.1.
    pub fn start(manifests: &Path, nodes: &[&str]) -> anyhow::Result<Self> {
        let specs = nodes
            .iter()
            .map(|n| NodeSpec::new(n, "127.0.0.1"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Self::start_with(manifests, &specs, MeshOptions::default())
    }

    /// Starts a control plane on a copy of `manifests` and one proxy per
    /// node, listening on the node's loopback address.
    pub fn start_with(
        manifests: &Path,
        nodes: &[NodeSpec],
        options: MeshOptions,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        copy_dir(manifests, dir.path())?;
        let logs = tempfile::tempdir()?;
        let pki = if options.pki {
            let pki = tempfile::tempdir()?;
            let mut args = vec![
                "init".to_string(),
                "--out".into(),
                pki.path().display().to_string(),
            ];
            for node in nodes {
                args.push("--node".into());
                args.push(node.name.clone());
            }
            let out = Command::new(binary("ferry-certs")?).args(&args).output()?;
            anyhow::ensure!(
                out.status.success(),
                "ferry-certs init: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Some(pki)
        } else {
            None
        };
        let port = free_port()?;
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let control_plane = Self::spawn_control_plane(
            dir.path(),
            logs.path(),
            pki.as_ref().map(|p| p.path()),
            &options,
            (port, metrics),
            0,
        )?;
        let scheme = if pki.is_some() { "https" } else { "http" };
        let mut proxies = Vec::new();
        for node in nodes {
            let shared = node.ip.is_loopback() && node.ip == IpAddr::from([127, 0, 0, 1]);
            let port_on = |fixed: u16| -> anyhow::Result<SocketAddr> {
                Ok(SocketAddr::new(
                    node.ip,
                    if shared { free_port()? } else { fixed },
                ))
            };
            let admin = port_on(15000)?;
            let socks5 = port_on(1080)?;
            let hbone = match options.hbone_listen.iter().find(|(n, _)| *n == node.name) {
                Some((_, addr)) => *addr,
                None => port_on(15008)?,
            };
            let mut args = vec![
                "--node".to_string(),
                node.name.clone(),
                "--control-plane".into(),
                format!("{scheme}://127.0.0.1:{port}"),
                "--admin".into(),
                admin.to_string(),
                "--socks5".into(),
                socks5.to_string(),
                "--hbone".into(),
                hbone.to_string(),
            ];
            if let Some(pki) = &pki {
                args.push("--certs".into());
                args.push(pki.path().display().to_string());
            }
            args.extend(options.proxy_args.iter().cloned());
            if options.state_dirs {
                args.push("--state-dir".into());
                args.push(
                    logs.path()
                        .join(format!("state-{}", node.name))
                        .display()
                        .to_string(),
                );
            }
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let process = Process::start_with_env(
                &node.name,
                &binary("ferry-proxy")?,
                &argv,
                &options.proxy_env,
                logs.path().join(format!("proxy-{}.log", node.name)),
            )?;
            proxies.push(ProxyHandle {
                node: node.name.clone(),
                admin,
                socks5,
                hbone,
                process,
                args,
                restarts: 0,
            });
        }
        Ok(Self {
            manifests: dir,
            logs,
            pki,
            options,
            control_plane_port: port,
            control_plane_metrics: metrics,
            control_plane,
            proxies,
        })
    }

    fn spawn_control_plane(
        manifests: &Path,
        logs: &Path,
        pki: Option<&Path>,
        options: &MeshOptions,
        (port, metrics): (u16, SocketAddr),
        generation: u32,
    ) -> anyhow::Result<Process> {
        let mut args = vec![
            "--manifests".to_string(),
            manifests.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--metrics-listen".into(),
            metrics.to_string(),
        ];
        if let Some(pki) = pki {
            args.push("--tls-dir".into());
            args.push(pki.display().to_string());
        }
        if let Some(ttl) = options.workload_cert_ttl {
            args.push("--workload-cert-ttl".into());
            args.push(ttl.to_string());
            // Rotation tests use lifetimes of seconds.
            args.push("--workload-cert-min-ttl".into());
            args.push(format!("{}s", ttl.min(60)));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Process::start(
            "control-plane",
            &binary("ferry-control-plane")?,
            &args,
            logs.join(format!("control-plane-{generation}.log")),
        )
    }

    /// Kills the control plane and starts a new one on the same port.
    pub fn restart_control_plane(&mut self, generation: u32) -> anyhow::Result<()> {
        self.control_plane.kill();
        self.control_plane = Self::spawn_control_plane(
            self.manifests.path(),
            self.logs.path(),
            self.pki.as_ref().map(|p| p.path()),
            &self.options,
            (self.control_plane_port, self.control_plane_metrics),
            generation,
        )?;
        Ok(())
    }

    /// Stops a proxy (SIGTERM) and starts it again with the same flags
    /// (and state folder); its new log is `proxy-<node>-<n>.log`.
    pub fn restart_proxy(&mut self, node: &str) -> anyhow::Result<()> {
        let logs = self.logs.path().to_path_buf();
        let env = self.options.proxy_env.clone();
        let proxy = self
            .proxies
            .iter_mut()
            .find(|p| p.node == node)
            .with_context(|| format!("no proxy for node {node}"))?;
        proxy.process.terminate(Duration::from_secs(10));
        proxy.restarts += 1;
        let argv: Vec<&str> = proxy.args.iter().map(String::as_str).collect();
        proxy.process = Process::start_with_env(
            node,
            &binary("ferry-proxy")?,
            &argv,
            &env,
            logs.join(format!("proxy-{node}-{}.log", proxy.restarts)),
        )?;
        Ok(())
    }

    pub fn proxy(&self, node: &str) -> anyhow::Result<&ProxyHandle> {
        self.proxies
            .iter()
            .find(|p| p.node == node)
            .with_context(|| format!("no proxy for node {node}"))
    }

    /// `/config_dump` of a proxy, parsed.
    pub fn config_dump(&self, node: &str) -> anyhow::Result<serde_json::Value> {
        let (status, body) = http_get(self.proxy(node)?.admin, "/config_dump")?;
        anyhow::ensure!(status == 200, "config_dump answered {status}");
        Ok(serde_json::from_str(&body)?)
    }

    /// Status code of a proxy's `/healthz/ready`.
    pub fn ready_status(&self, node: &str) -> anyhow::Result<u16> {
        Ok(http_get(self.proxy(node)?.admin, "/healthz/ready")?.0)
    }

    /// Waits until `check` holds for every proxy's config dump.
    pub fn wait_all(
        &self,
        what: &str,
        mut check: impl FnMut(&serde_json::Value) -> bool,
    ) -> anyhow::Result<()> {
        for proxy in &self.proxies {
            let node = &proxy.node;
            wait_for(
                &format!("{what} on {node}"),
                Duration::from_secs(20),
                || {
                    let dump = self.config_dump(node)?;
                    Ok(check(&dump).then_some(()))
                },
            )
            .with_context(|| self.diagnostics())?;
        }
        Ok(())
    }

    /// Logs of every process, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut out = format!("--- control plane log ---\n{}", self.control_plane.log());
        for p in &self.proxies {
            out.push_str(&format!(
                "\n--- proxy {} log ---\n{}",
                p.node,
                p.process.log()
            ));
        }
        out
    }
}

/// Finds a resource in a config dump by kind and key.
pub fn resource<'a>(
    dump: &'a serde_json::Value,
    kind: &str,
    key: &str,
) -> Option<&'a serde_json::Value> {
    dump["resources"][kind]
        .as_array()?
        .iter()
        .find(|r| r["key"] == key)
}

/// The container image of the binaries under test, built once per test
/// process with `scripts/image.sh` (no container engine: mmdebstrap and
/// umoci; the Debian root filesystem is cached under `target/image-test`).
/// Returns its reference (`LAYOUT:TAG`) and digest.
pub fn image() -> anyhow::Result<(String, String)> {
    static BUILT: std::sync::OnceLock<Result<(String, String), String>> =
        std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| build_image().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_image() -> anyhow::Result<(String, String)> {
    let root = repo_root();
    let proxy = binary("ferry-proxy")?;
    let binaries = proxy.parent().unwrap_or(Path::new("."));
    let built = std::process::Command::new(root.join("scripts/image.sh"))
        .arg("--binaries")
        .arg(binaries)
        .arg("--out")
        .arg(root.join("target/image-test"))
        .output()?;
    let stdout = String::from_utf8_lossy(&built.stdout);
    anyhow::ensure!(
        built.status.success(),
        "scripts/image.sh failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let line = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::to_string)
    };
    match (line("image: "), line("digest: ")) {
        (Some(image), Some(digest)) => Ok((image, digest)),
        _ => anyhow::bail!("scripts/image.sh printed no image and digest:\n{stdout}"),
    }
}
