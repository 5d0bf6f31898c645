//! A multi-node cluster made of network namespaces, built from a folder of
//! manifests (nodes with their InternalIP, pods with node and IP).
//!
//! - `<p>-net`: the network between nodes (a bridge) and the control plane;
//! - `<p>-<node>`: one namespace per node: an uplink on the node network
//!   with the node's InternalIP, a bridge `br0` for its pods (gateway: the
//!   `.1` of the pods' /24), routes to the other nodes' pod networks, and
//!   the node proxy with capture, DNS and HBONE;
//! - one namespace per pod: `eth0` on its node's bridge, a default route to
//!   the node, the node proxy as resolver, and an HTTP server on each
//!   container port that answers with the pod's name.
//!
//! No namespace has a link to the machine's interfaces. Everything is torn
//! down when the [`Lab`] drops.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::netns::Netns;
use crate::{binary, wait_for, Process};

/// The HTTP server every lab pod runs: answers `<namespace>/<pod>` on each port.
const SERVER: &str = r#"
import http.server, socketserver, sys, threading
name, ip, ports = sys.argv[1], sys.argv[2], [int(p) for p in sys.argv[3:]]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = (name + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
servers = [S((ip, p), H) for p in ports]
for s in servers[1:]:
    threading.Thread(target=s.serve_forever, daemon=True).start()
servers[0].serve_forever()
"#;

/// A node of the lab.
#[derive(Debug, Clone)]
pub struct LabNode {
    pub name: String,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
}

/// A pod of the lab.
#[derive(Debug, Clone)]
pub struct LabPod {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub ports: Vec<u16>,
}

/// A running lab.
#[derive(Debug)]
pub struct Lab {
    pub nodes: Vec<LabNode>,
    pub pods: Vec<LabPod>,
    pub control_plane_ip: Ipv4Addr,
    // Drop order: processes first, then namespaces, then the work folder.
    processes: Vec<Process>,
    namespaces: BTreeMap<String, Netns>,
    pub work: tempfile::TempDir,
}

fn field<'a>(v: &'a serde_yaml::Value, path: &[&str]) -> Option<&'a serde_yaml::Value> {
    let mut v = v;
    for p in path {
        v = v.get(p)?;
    }
    Some(v)
}

fn gateway_of(ip: Ipv4Addr) -> Ipv4Addr {
    let o = ip.octets();
    Ipv4Addr::new(o[0], o[1], o[2], 1)
}

/// Reads nodes and pods from the manifests (YAML documents).
pub fn read_topology(dir: &Path) -> anyhow::Result<(Vec<LabNode>, Vec<LabPod>)> {
    let mut nodes = Vec::new();
    let mut pods = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "yaml" || e == "yml"))
    {
        let text = std::fs::read_to_string(file)?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let Ok(v) = serde::Deserialize::deserialize(doc) else {
                continue;
            };
            let v: serde_yaml::Value = v;
            let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or("");
            let name = field(&v, &["metadata", "name"])
                .and_then(|n| n.as_str())
                .unwrap_or("")
                .to_string();
            match kind {
                "Node" => {
                    let ip = field(&v, &["status", "addresses"])
                        .and_then(|a| a.as_sequence())
                        .into_iter()
                        .flatten()
                        .find(|a| a.get("type").and_then(|t| t.as_str()) == Some("InternalIP"))
                        .and_then(|a| a.get("address")?.as_str()?.parse::<Ipv4Addr>().ok())
                        .with_context(|| format!("node {name} has no IPv4 InternalIP"))?;
                    nodes.push(LabNode {
                        name,
                        ip,
                        gateway: Ipv4Addr::UNSPECIFIED,
                    });
                }
                "Pod" => {
                    let Some(ip) = field(&v, &["status", "podIP"])
                        .and_then(|i| i.as_str()?.parse::<Ipv4Addr>().ok())
                    else {
                        continue;
                    };
                    let node = field(&v, &["spec", "nodeName"])
                        .and_then(|n| n.as_str())
                        .unwrap_or("")
                        .to_string();
                    let namespace = field(&v, &["metadata", "namespace"])
                        .and_then(|n| n.as_str())
                        .unwrap_or("default")
                        .to_string();
                    let ports = field(&v, &["spec", "containers"])
                        .and_then(|c| c.as_sequence())
                        .into_iter()
                        .flatten()
                        .flat_map(|c| {
                            c.get("ports")
                                .and_then(|p| p.as_sequence())
                                .cloned()
                                .unwrap_or_default()
                        })
                        .filter(|p| {
                            p.get("protocol").and_then(|x| x.as_str()).unwrap_or("TCP") == "TCP"
                        })
                        .filter_map(|p| {
                            p.get("containerPort")?
                                .as_u64()
                                .and_then(|n| u16::try_from(n).ok())
                        })
                        .collect();
                    pods.push(LabPod {
                        namespace,
                        name,
                        node,
                        ip,
                        ports,
                    });
                }
                _ => {}
            }
        }
    }
    for node in &mut nodes {
        let pod = pods.iter().find(|p| p.node == node.name).with_context(|| {
            format!(
                "node {} has no pod: cannot infer its pod network",
                node.name
            )
        })?;
        node.gateway = gateway_of(pod.ip);
    }
    Ok((nodes, pods))
}

impl Lab {
    /// Builds the lab for `manifests` with namespace names starting with `prefix`.
    pub fn up(manifests: &Path, prefix: &str) -> anyhow::Result<Self> {
        let (nodes, pods) = read_topology(manifests)?;
        if nodes.is_empty() {
            bail!("{}: no nodes in the manifests", manifests.display());
        }
        let work = tempfile::tempdir()?;
        let mut lab = Self {
            control_plane_ip: Ipv4Addr::UNSPECIFIED,
            nodes: nodes.clone(),
            pods: pods.clone(),
            processes: Vec::new(),
            namespaces: BTreeMap::new(),
            work,
        };
        // The node network and the control plane's address on it.
        let net = Netns::new(&format!("{prefix}-net"))?;
        net.ip(&["link", "add", "sw0", "type", "bridge"])?;
        net.ip(&["link", "set", "sw0", "up"])?;
        let base = nodes[0].ip.octets();
        let cp = Ipv4Addr::new(base[0], base[1], base[2], 2);
        net.ip(&["addr", "add", &format!("{cp}/24"), "dev", "sw0"])?;
        lab.control_plane_ip = cp;
        lab.namespaces.insert("net".into(), net);

        for (i, node) in nodes.iter().enumerate() {
            let ns = Netns::new(&format!("{prefix}-n{i}"))?;
            let uplink = format!("n{i}");
            ns.ip(&[
                "link",
                "add",
                "up0",
                "type",
                "veth",
                "peer",
                "name",
                &uplink,
                "netns",
                &lab.namespaces["net"].name,
            ])?;
            lab.namespaces["net"].ip(&["link", "set", &uplink, "master", "sw0", "up"])?;
            ns.ip(&["addr", "add", &format!("{}/24", node.ip), "dev", "up0"])?;
            ns.ip(&["link", "set", "up0", "up"])?;
            ns.ip(&["link", "add", "br0", "type", "bridge"])?;
            ns.ip(&["addr", "add", &format!("{}/24", node.gateway), "dev", "br0"])?;
            ns.ip(&["link", "set", "br0", "up"])?;
            ns.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
            for other in nodes.iter().filter(|o| o.name != node.name) {
                let o = other.gateway.octets();
                let network = Ipv4Addr::new(o[0], o[1], o[2], 0);
                ns.ip(&[
                    "route",
                    "add",
                    &format!("{network}/24"),
                    "via",
                    &other.ip.to_string(),
                ])?;
            }
            lab.namespaces.insert(node.name.clone(), ns);
        }
        for (i, pod) in pods.iter().enumerate() {
            let node = nodes.iter().find(|n| n.name == pod.node).with_context(|| {
                format!(
                    "pod {}/{} is on unknown node {}",
                    pod.namespace, pod.name, pod.node
                )
            })?;
            let ns = Netns::new(&format!("{prefix}-p{i}"))?;
            let veth = format!("p{i}");
            let node_ns = &lab.namespaces[&node.name];
            node_ns.ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
            ])?;
            node_ns.ip(&["link", "set", &veth, "master", "br0", "up"])?;
            ns.ip(&["addr", "add", &format!("{}/24", pod.ip), "dev", "eth0"])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
            ns.ip(&["route", "add", "default", "via", &node.gateway.to_string()])?;
            ns.set_resolv_conf(&format!(
                "nameserver {}\nsearch {}.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
                node.gateway, pod.namespace
            ))?;
            lab.namespaces
                .insert(format!("{}/{}", pod.namespace, pod.name), ns);
        }
        // The control plane watches a copy: edits in the lab never touch the source folder.
        let copy = lab.work.path().join("manifests");
        std::fs::create_dir(&copy)?;
        crate::copy_dir(manifests, &copy)?;
        lab.start(&copy)?;
        Ok(lab)
    }

    fn start(&mut self, manifests: &Path) -> anyhow::Result<()> {
        let work = self.work.path().to_path_buf();
        let pki = work.join("pki");
        let mut args = vec![
            "init".to_string(),
            "--out".into(),
            pki.display().to_string(),
            "--san".into(),
            self.control_plane_ip.to_string(),
        ];
        for n in &self.nodes {
            args.push("--node".into());
            args.push(n.name.clone());
        }
        let out = Command::new(binary("ferry-certs")?).args(&args).output()?;
        if !out.status.success() {
            bail!("ferry-certs: {}", String::from_utf8_lossy(&out.stderr));
        }
        let cp = binary("ferry-control-plane")?.display().to_string();
        let listen = format!("{}:15010", self.control_plane_ip);
        let manifests = manifests.display().to_string();
        let pki_arg = pki.display().to_string();
        let net = &self.namespaces["net"];
        self.processes.push(Process::start(
            "control-plane",
            Path::new("ip"),
            &net.command(
                &cp,
                &[
                    "--manifests",
                    &manifests,
                    "--listen",
                    &listen,
                    "--tls-dir",
                    &pki_arg,
                ],
            ),
            work.join("control-plane.log"),
        )?);
        let proxy = binary("ferry-proxy")?.display().to_string();
        let control_plane = format!("https://{listen}");
        for node in &self.nodes {
            let hbone = format!("{}:15008", node.ip);
            let dns = format!("{}:53", node.gateway);
            let ns = &self.namespaces[&node.name];
            let command = ns.command(
                &proxy,
                &[
                    "--node",
                    &node.name,
                    "--control-plane",
                    &control_plane,
                    "--certs",
                    &pki_arg,
                    "--admin",
                    "127.0.0.1:15000",
                    "--socks5",
                    "127.0.0.1:15080",
                    "--hbone",
                    &hbone,
                    "--capture-listen",
                    "0.0.0.0:15001",
                    "--capture-interface",
                    "br0",
                    "--dns-listen",
                    &dns,
                ],
            );
            self.processes.push(Process::start(
                &node.name,
                Path::new("ip"),
                &command,
                work.join(format!("proxy-{}.log", node.name)),
            )?);
        }
        let script = work.join("server.py");
        std::fs::write(&script, SERVER)?;
        let script = script.display().to_string();
        for pod in &self.pods {
            if pod.ports.is_empty() {
                continue;
            }
            let key = format!("{}/{}", pod.namespace, pod.name);
            let ip = pod.ip.to_string();
            let ports: Vec<String> = pod.ports.iter().map(u16::to_string).collect();
            let mut args = vec![script.as_str(), key.as_str(), ip.as_str()];
            args.extend(ports.iter().map(String::as_str));
            let ns = &self.namespaces[&key];
            self.processes.push(Process::start(
                &key,
                Path::new("ip"),
                &ns.command("python3", &args),
                work.join(format!("app-{}-{}.log", pod.namespace, pod.name)),
            )?);
        }
        for node in &self.nodes {
            let ns = &self.namespaces[&node.name];
            wait_for(
                &format!("proxy on {} ready with certificates", node.name),
                Duration::from_secs(30),
                || {
                    let dump = ns
                        .exec("curl", &["-sf", "127.0.0.1:15000/config_dump"])
                        .unwrap_or_default();
                    Ok((dump.contains("\"ready\": true")
                        && dump.contains("\"identity\": \"spiffe://"))
                    .then_some(()))
                },
            )
            .with_context(|| self.logs())?;
        }
        for pod in self.pods.iter().filter(|p| !p.ports.is_empty()) {
            let ns = &self.namespaces[&format!("{}/{}", pod.namespace, pod.name)];
            let url = format!("http://{}:{}/", pod.ip, pod.ports[0]);
            wait_for(
                &format!("app in {}/{}", pod.namespace, pod.name),
                Duration::from_secs(20),
                || Ok(ns.exec("curl", &["-sf", "-m", "2", &url]).ok().map(|_| ())),
            )
            .with_context(|| self.logs())?;
        }
        Ok(())
    }

    /// The folder of manifests the lab's control plane watches (edit it to
    /// change the cluster).
    pub fn manifests(&self) -> PathBuf {
        self.work.path().join("manifests")
    }

    /// Starts a long-lived connection from `pod` to `address` (one HTTP
    /// request, then the connection is kept open); the process prints
    /// `closed` when the connection is closed by the other side, `timeout`
    /// after `seconds`.
    pub fn hold_connection(
        &self,
        pod: &str,
        address: &str,
        seconds: u32,
    ) -> anyhow::Result<Process> {
        let ns = self
            .namespaces
            .get(pod)
            .with_context(|| format!("no pod {pod}"))?;
        let (host, port) = address.rsplit_once(':').context("address is HOST:PORT")?;
        let script = format!(
            "import socket,sys\ns=socket.create_connection(('{host}',{port}),timeout=5)\ns.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\nprint('open', s.recv(4096).split(b'\\r\\n\\r\\n')[-1].decode().strip(), flush=True)\ns.settimeout({seconds})\ntry:\n    data=s.recv(4096)\n    print('closed' if not data else 'data', flush=True)\nexcept socket.timeout:\n    print('timeout', flush=True)\nexcept OSError:\n    print('closed', flush=True)\n"
        );
        let log = self
            .work
            .path()
            .join(format!("hold-{}.log", pod.replace('/', "-")));
        Process::start(
            "hold",
            Path::new("ip"),
            &ns.command("python3", &["-c", &script]),
            log,
        )
    }

    /// Runs `curl` in a pod; returns the body, or the error.
    pub fn curl(&self, pod: &str, url: &str) -> anyhow::Result<String> {
        let ns = self
            .namespaces
            .get(pod)
            .with_context(|| format!("no pod {pod}"))?;
        Ok(ns
            .exec("curl", &["-sf", "-m", "5", url])?
            .trim()
            .to_string())
    }

    /// `/config_dump` of a node's proxy.
    pub fn config_dump(&self, node: &str) -> anyhow::Result<serde_json::Value> {
        let ns = self
            .namespaces
            .get(node)
            .with_context(|| format!("no node {node}"))?;
        Ok(serde_json::from_str(
            &ns.exec("curl", &["-sf", "127.0.0.1:15000/config_dump"])?,
        )?)
    }

    /// Every process's log.
    pub fn logs(&self) -> String {
        self.processes
            .iter()
            .map(|p| format!("--- {} ---\n{}", p.name(), p.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The namespace of a node or pod (`ns/name`).
    pub fn netns(&self, name: &str) -> Option<&Netns> {
        self.namespaces.get(name)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Stop the proxies cleanly so they remove their rules, then the rest.
        for p in &mut self.processes {
            p.terminate(Duration::from_secs(5));
        }
    }
}

/// One traffic check of the example cluster and what it saw.
#[derive(Debug, Clone)]
pub struct CheckResult {
    pub what: String,
    pub ok: bool,
    pub saw: String,
}

impl Lab {
    /// The traffic checks of deploy/examples: real requests through the mesh.
    pub fn check_examples(&self) -> Vec<CheckResult> {
        let mut results = Vec::new();
        let mut expect = |what: &str, pod: &str, url: &str, want: &dyn Fn(&str) -> bool| {
            let (ok, saw) = match self.curl(pod, url) {
                Ok(body) => (want(&body), format!("answered by {body}")),
                Err(e) => (
                    want(""),
                    format!("refused ({})", e.to_string().lines().next().unwrap_or("")),
                ),
            };
            results.push(CheckResult {
                what: format!("{what}: {pod} -> {url}"),
                ok,
                saw,
            });
        };
        expect(
            "service by name, policy allows",
            "shop/frontend",
            "http://backend.shop.svc.cluster.local/",
            &|b| b.starts_with("shop/backend-"),
        );
        expect(
            "pod across nodes (HBONE)",
            "shop/frontend",
            "http://10.244.2.11:9090/",
            &|b| b == "shop/backend-2",
        );
        expect(
            "policy denies (backend admits only the frontend)",
            "default/client",
            "http://backend.shop/",
            &|b| b.is_empty(),
        );
        expect(
            "service across nodes by short name",
            "default/client",
            "http://frontend.shop/",
            &|b| b == "shop/frontend",
        );
        expect(
            "headless service by name",
            "default/client",
            "http://db.shop:5432/",
            &|b| b == "shop/db-0",
        );
        for node in &self.nodes {
            let (ok, saw) = match self.config_dump(&node.name) {
                Ok(dump) => {
                    let identities: Vec<String> = dump["certificates"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|c| c["identity"].as_str().map(str::to_string))
                        .collect();
                    let pool = &dump["hbone_pool"];
                    (
                        !identities.is_empty(),
                        format!(
                            "identities {}; HBONE (TLS 1.3) connections {}, handshakes {}",
                            identities.join(", "),
                            pool["connections"],
                            pool["handshakes"]
                        ),
                    )
                }
                Err(e) => (false, e.to_string()),
            };
            results.push(CheckResult {
                what: format!("node {} proxy", node.name),
                ok,
                saw,
            });
        }
        results
    }
}
