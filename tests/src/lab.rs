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

/// A packet capture on one interface (AF_PACKET, so no tcpdump is needed):
/// per TCP flow direction its payload bytes, whether its SYN was seen, and
/// the first payload bytes; and how many payloads contained a marker. Stops
/// when the stop file appears or after 60 s, then prints one JSON line.
const SNIFFER: &str = r#"
import json, os, socket, struct, sys, time
iface, stop, markers = sys.argv[1], sys.argv[2], [m.encode() for m in sys.argv[3:]]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(3))
s.bind((iface, 0))
s.settimeout(0.1)
print("ready", flush=True)
flows, hits, packets, deadline = {}, 0, 0, time.time() + 60
while time.time() < deadline and not os.path.exists(stop):
    try:
        frame = s.recv(262144)
    except socket.timeout:
        continue
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        continue
    ip = frame[14:]
    ihl, total = (ip[0] & 15) * 4, struct.unpack("!H", ip[2:4])[0]
    if ip[9] != 6:
        continue
    tcp = ip[ihl:total] if total else ip[ihl:]
    sport, dport = struct.unpack("!HH", tcp[:4])
    flags, payload = tcp[13], tcp[(tcp[12] >> 4) * 4:]
    packets += 1
    key = "%s:%d>%s:%d" % (socket.inet_ntoa(ip[12:16]), sport, socket.inet_ntoa(ip[16:20]), dport)
    f = flows.setdefault(key, {"flow": key, "syn": False, "bytes": 0, "first": ""})
    f["syn"] = f["syn"] or bool(flags & 2)
    if payload:
        if not f["first"]:
            f["first"] = payload[:3].hex()
        f["bytes"] += len(payload)
        hits += sum(1 for m in markers if m in payload)
print(json.dumps({"packets": packets, "marker_hits": hits, "flows": list(flows.values())}), flush=True)
"#;

/// One direction of a TCP flow seen on a link.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct LinkFlow {
    /// `src:port>dst:port`
    pub flow: String,
    pub syn: bool,
    pub bytes: u64,
    /// The first three payload bytes, hex.
    pub first: String,
}

/// What a capture on a link saw.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct LinkReport {
    pub packets: u64,
    pub marker_hits: u64,
    pub flows: Vec<LinkFlow>,
}

impl LinkReport {
    /// Checks that every TCP payload on the link belonged to TLS on the
    /// given ports (every flow opened during the capture starts with a TLS
    /// handshake record), that no marker was seen in the clear, and that at
    /// least one new connection to `tunnel_port` was opened; returns a
    /// summary of what was seen.
    pub fn only_tls(&self, tunnel_port: u16, tls_ports: &[u16]) -> Result<String, String> {
        let port_of = |end: &str| end.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
        let mut tunnels = 0;
        let mut tunnel_bytes = 0;
        for f in self.flows.iter().filter(|f| f.bytes > 0) {
            let (from, to) = f.flow.split_once('>').unwrap_or((&f.flow, ""));
            let ports = [port_of(from), port_of(to)];
            if !ports.iter().flatten().any(|p| tls_ports.contains(p)) {
                return Err(format!(
                    "{} carried {} bytes outside TLS ports",
                    f.flow, f.bytes
                ));
            }
            // A TLS handshake record: type 22, version 3.x.
            if f.syn && !f.first.starts_with("1603") {
                return Err(format!(
                    "{} did not start with a TLS record (first bytes {})",
                    f.flow, f.first
                ));
            }
            if ports.contains(&Some(tunnel_port)) {
                tunnel_bytes += f.bytes;
                if f.syn && port_of(to) == Some(tunnel_port) {
                    tunnels += 1;
                }
            }
        }
        if self.marker_hits > 0 {
            return Err(format!(
                "{} packets carried the payload in the clear",
                self.marker_hits
            ));
        }
        if tunnels == 0 {
            return Err(format!(
                "no new connection to port {tunnel_port} was seen ({} packets)",
                self.packets
            ));
        }
        Ok(format!(
            "{} packets, {tunnels} new TLS connection(s) to :{tunnel_port} ({tunnel_bytes} bytes), no plaintext payload",
            self.packets
        ))
    }
}

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

/// What the lab builds from the manifests.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    pub nodes: Vec<LabNode>,
    pub pods: Vec<LabPod>,
    /// Load-balancer ingress and external IPs of services: the outside
    /// client routes them through the first node, as a cloud load balancer
    /// would hand them to a node.
    pub published: Vec<Ipv4Addr>,
}

/// Reads nodes, pods and published service addresses from the manifests
/// (YAML documents).
pub fn read_topology(dir: &Path) -> anyhow::Result<Topology> {
    let mut nodes = Vec::new();
    let mut pods = Vec::new();
    let mut published = Vec::new();
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
                "Service" => {
                    let ingress = field(&v, &["status", "loadBalancer", "ingress"])
                        .and_then(|i| i.as_sequence())
                        .into_iter()
                        .flatten()
                        .filter_map(|i| i.get("ip")?.as_str()?.parse::<Ipv4Addr>().ok());
                    let external = field(&v, &["spec", "externalIPs"])
                        .and_then(|i| i.as_sequence())
                        .into_iter()
                        .flatten()
                        .filter_map(|i| i.as_str()?.parse::<Ipv4Addr>().ok());
                    published.extend(ingress.chain(external));
                }
                _ => {}
            }
        }
    }
    published.sort();
    published.dedup();
    for node in &mut nodes {
        let pod = pods.iter().find(|p| p.node == node.name).with_context(|| {
            format!(
                "node {} has no pod: cannot infer its pod network",
                node.name
            )
        })?;
        node.gateway = gateway_of(pod.ip);
    }
    Ok(Topology {
        nodes,
        pods,
        published,
    })
}

/// The name of the outside client's namespace in [`Lab::netns`], [`Lab::curl`].
pub const OUTSIDE: &str = "outside";

/// The outside client's address on the node network.
pub const OUTSIDE_HOST: u8 = 200;

impl Lab {
    /// Builds the lab for `manifests` with namespace names starting with `prefix`.
    pub fn up(manifests: &Path, prefix: &str) -> anyhow::Result<Self> {
        let Topology {
            nodes,
            pods,
            published,
        } = read_topology(manifests)?;
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
            // Pods reach each other through the node (their addresses are
            // /32): no redirects telling them to go around it.
            ns.exec("sysctl", &["-qw", "net.ipv4.conf.all.send_redirects=0"])?;
            ns.exec("sysctl", &["-qw", "net.ipv4.conf.br0.send_redirects=0"])?;
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
            // A /32 and a route through the node, as routed CNIs do: even
            // traffic between pods of one node crosses the node's stack,
            // where the capture rules see it.
            let gateway = node.gateway.to_string();
            ns.ip(&["addr", "add", &format!("{}/32", pod.ip), "dev", "eth0"])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
            ns.ip(&["route", "add", &gateway, "dev", "eth0", "scope", "link"])?;
            ns.ip(&["route", "add", "default", "via", &gateway, "dev", "eth0"])?;
            ns.set_resolv_conf(&format!(
                "nameserver {}\nsearch {}.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
                node.gateway, pod.namespace
            ))?;
            lab.namespaces
                .insert(format!("{}/{}", pod.namespace, pod.name), ns);
        }
        // A client outside the cluster on the node network; load-balancer
        // addresses are routed to the first node.
        {
            let outside = Netns::new(&format!("{prefix}-out"))?;
            outside.ip(&[
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                "out0",
                "netns",
                &lab.namespaces["net"].name,
            ])?;
            lab.namespaces["net"].ip(&["link", "set", "out0", "master", "sw0", "up"])?;
            let address = Ipv4Addr::new(base[0], base[1], base[2], OUTSIDE_HOST);
            outside.ip(&["addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
            outside.ip(&["link", "set", "eth0", "up"])?;
            for ip in &published {
                outside.ip(&[
                    "route",
                    "add",
                    &format!("{ip}/32"),
                    "via",
                    &nodes[0].ip.to_string(),
                ])?;
            }
            lab.namespaces.insert(OUTSIDE.into(), outside);
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
                    "--inbound-plaintext-listen",
                    "0.0.0.0:15006",
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
            "import socket,sys\ns=socket.create_connection(('{host}',{port}),timeout=5)\ns.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\nb=b''\nwhile not (b'\\r\\n\\r\\n' in b and b.endswith(b'\\n') and not b.endswith(b'\\r\\n\\r\\n')):\n    d=s.recv(4096)\n    if not d: break\n    b+=d\nprint('open', b.split(b'\\r\\n\\r\\n')[-1].decode().strip(), flush=True)\ns.settimeout({seconds})\ntry:\n    data=s.recv(4096)\n    print('closed' if not data else 'data', flush=True)\nexcept socket.timeout:\n    print('timeout', flush=True)\nexcept OSError:\n    print('closed', flush=True)\n"
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

    /// Captures the packets on a node's uplink while `traffic` runs; the
    /// payload should never show any of `markers` in the clear.
    pub fn capture_link(
        &self,
        node: &str,
        markers: &[&str],
        traffic: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<LinkReport> {
        let ns = self
            .namespaces
            .get(node)
            .with_context(|| format!("no node {node}"))?;
        let script = self.work.path().join("sniff.py");
        std::fs::write(&script, SNIFFER)?;
        let stop = self.work.path().join(format!("sniff-{node}.stop"));
        let _ = std::fs::remove_file(&stop);
        let (script, stop_arg) = (script.display().to_string(), stop.display().to_string());
        let mut args = vec![script.as_str(), "up0", stop_arg.as_str()];
        args.extend(markers);
        let mut sniffer = Process::start(
            "sniffer",
            Path::new("ip"),
            &ns.command("python3", &args),
            self.work.path().join(format!("sniff-{node}.log")),
        )?;
        wait_for("the link capture to start", Duration::from_secs(10), || {
            Ok(sniffer.log().contains("ready").then_some(()))
        })?;
        let ran = traffic();
        std::fs::write(&stop, b"")?;
        wait_for("the link capture to stop", Duration::from_secs(10), || {
            Ok((!sniffer.is_running()).then_some(()))
        })?;
        ran?;
        let log = sniffer.log();
        let line = log
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .with_context(|| format!("the capture printed no report: {log}"))?;
        Ok(serde_json::from_str(line)?)
    }

    /// Starts a long-running program in a pod (or node) namespace; it is
    /// stopped when the returned process drops.
    pub fn spawn_in(&self, name: &str, program: &str, args: &[&str]) -> anyhow::Result<Process> {
        let ns = self
            .namespaces
            .get(name)
            .with_context(|| format!("no namespace {name}"))?;
        Process::start(
            program,
            Path::new("ip"),
            &ns.command(program, args),
            self.work
                .path()
                .join(format!("{}-{program}.log", name.replace('/', "-"))),
        )
    }

    /// Runs a program to completion in a pod (or node) namespace.
    pub fn exec_in(&self, name: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let ns = self
            .namespaces
            .get(name)
            .with_context(|| format!("no namespace {name}"))?;
        ns.exec(program, args)
    }

    /// Runs `curl` in a pod; returns the body, or the error.
    pub fn curl(&self, pod: &str, url: &str) -> anyhow::Result<String> {
        let ns = self
            .namespaces
            .get(pod)
            .with_context(|| format!("no pod {pod}"))?;
        Ok(ns
            .exec("curl", &["-sSf", "-m", "5", url])?
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
        // First, while no tunnel is open yet: the link between the nodes
        // carries the cross-node request only inside TLS.
        let marker = format!("ferry-link-check-{}", std::process::id());
        let mut answered = String::new();
        let captured = self.capture_link("node-a", &[&marker, "shop/backend-2"], || {
            answered = self.curl(
                "shop/frontend",
                &format!("http://10.244.2.11:9090/{marker}"),
            )?;
            Ok(())
        });
        let (ok, saw) = match captured {
            Ok(report) => match report.only_tls(15008, &[15008, 15010]) {
                Ok(summary) => (
                    answered == "shop/backend-2",
                    format!("answered by {answered}; {summary}"),
                ),
                Err(problem) => (false, problem),
            },
            Err(e) => (false, format!("{e:#}")),
        };
        results.push(CheckResult {
            what: "the link between node-a and node-b carries only TLS: shop/frontend -> shop/backend-2".into(),
            ok,
            saw,
        });
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
            "ClusterIP by name, named targetPort, policy allows",
            "shop/frontend",
            "http://backend.shop.svc.cluster.local/",
            &|b| b.starts_with("shop/backend-"),
        );
        expect(
            "ClusterIP by address, same node (selector-less, internalTrafficPolicy Local)",
            "shop/frontend",
            "http://10.96.0.30/",
            &|b| b == "shop/backend-1",
        );
        expect(
            "ClusterIP by address across nodes (client outside the mesh, policed inbound)",
            "default/client",
            "http://10.96.0.10/",
            &|b| b == "shop/frontend",
        );
        expect(
            "pod across nodes by address (HBONE)",
            "shop/frontend",
            "http://10.244.2.12:9091/",
            &|b| b == "shop/backend-3",
        );
        expect(
            "pod in no service, by address (outside the mesh: plaintext)",
            "shop/frontend",
            "http://10.244.2.30:8080/",
            &|b| b == "default/client",
        );
        expect(
            "ExternalName through DNS (CNAME to a service)",
            "shop/frontend",
            "http://backend-alias.shop/",
            &|b| b.starts_with("shop/backend-"),
        );
        expect(
            "policy denies (backend admits only the frontend)",
            "default/client",
            "http://backend.shop/",
            &|b| b.is_empty(),
        );
        expect(
            "service across nodes by short name (client outside the mesh, policed inbound)",
            "default/client",
            "http://frontend.shop/",
            &|b| b == "shop/frontend",
        );
        expect(
            "headless service through DNS",
            "default/client",
            "http://db.shop:5432/",
            &|b| b == "shop/db-0",
        );
        let node_a = self
            .nodes
            .first()
            .map(|n| n.ip.to_string())
            .unwrap_or_default();
        expect(
            "NodePort from outside the cluster",
            OUTSIDE,
            &format!("http://{node_a}:30080/"),
            &|b| b == "shop/frontend",
        );
        if let Some(node_b) = self.nodes.get(1) {
            expect(
                "NodePort with externalTrafficPolicy Local on a node without the pod: refused",
                OUTSIDE,
                &format!("http://{}:30080/", node_b.ip),
                &|b| b.is_empty(),
            );
        }
        expect(
            "LoadBalancer address from outside the cluster",
            OUTSIDE,
            "http://192.0.2.10/",
            &|b| b == "shop/frontend",
        );
        let mut seen = std::collections::BTreeSet::new();
        let mut failures = 0;
        for _ in 0..6 {
            match self.curl("shop/frontend", "http://api.shop/") {
                Ok(body) => {
                    seen.insert(body);
                }
                Err(_) => failures += 1,
            }
        }
        results.push(CheckResult {
            what: "round robin over both nodes: shop/frontend -> http://api.shop/ x6".into(),
            ok: failures == 0 && seen.len() == 3,
            saw: format!(
                "answered by {}; {failures} failed",
                seen.into_iter().collect::<Vec<_>>().join(", ")
            ),
        });
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
