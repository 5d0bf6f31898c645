//! A multi-node cluster made of network namespaces, built from a folder of
//! manifests (nodes with their InternalIP, pods with node and IP).
//!
//! - `<p>-net`: the network between nodes (a bridge) and the control plane;
//! - `<p>-<node>`: one namespace per node: an uplink on the node network
//!   with the node's InternalIP, its pods wired as a CNI would ([`cni`]:
//!   a bridge `cni0`, routed veths or point-to-point veths; gateway: the
//!   `.1` of the pods' /24), routes to the other nodes' pod networks, and
//!   the node proxy with capture (the interface found from the routes),
//!   DNS and HBONE;
//! - one namespace per pod: `eth0` wired to its node, a default route to
//!   the node, the node proxy as resolver, and an HTTP server on each
//!   container port that answers with the pod's name.
//!
//! Options ([`LabOptions`]): the CNI style, a kube-proxy stand-in beside
//! the proxies ([`kube_proxy`]), the daemons run from the container image
//! ([`image`]).
//!
//! No namespace has a link to the machine's interfaces. Everything is torn
//! down when the [`Lab`] drops.
//!
//! `ferryctl lab up` ([`cli`]) runs it; the end-to-end tests build it with
//! [`Lab::up`]. The binaries (`ferry-control-plane`, `ferry-proxy`,
//! `ferry-certs`) are taken from next to the running executable
//! ([`binary`]).

pub mod addresses;
pub mod checks;
pub mod cli;
pub mod cni;
pub mod faults;
pub mod handover;
pub mod image;
pub mod kube_proxy;
pub mod netns;
pub mod probes;
pub mod process;
pub mod topology;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use self::netns::Netns;
use self::probes::{LinkReport, SERVER, SNIFFER};
pub use self::process::{binary, copy_dir, wait_for, Process};
pub use self::topology::{read_topology, Topology};

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
    /// The first control plane replica's address (Prometheus runs there).
    pub control_plane_ip: Ipv4Addr,
    /// Every replica's address, in order: replica 1 is the daemon
    /// `control-plane`, replica N > 1 `control-plane-N`.
    pub control_plane_ips: Vec<Ipv4Addr>,
    // Drop order: processes first, then namespaces, then the work folder.
    processes: Vec<Process>,
    /// Proxies replaced by [`Lab::upgrade`], draining until they exit, with
    /// the moment their successor started.
    retired: Vec<(Process, std::time::Instant)>,
    /// How each daemon (the control plane, each node's proxy) was started:
    /// the `ip netns exec` arguments and its log, to start it again.
    daemons: BTreeMap<String, (Vec<String>, PathBuf)>,
    namespaces: BTreeMap<String, Netns>,
    /// The image the daemons run from, if any.
    image: Option<image::Image>,
    /// How the pods are wired.
    pub cni: cni::Cni,
    /// The lab's record for `ferryctl --lab` ([`crate::live::lab`]),
    /// removed first when the lab goes down.
    record: Option<crate::live::lab::RecordGuard>,
    /// The lab's name: the prefix of its namespaces.
    pub name: String,
    pub work: tempfile::TempDir,
}

/// How to build a lab.
#[derive(Debug, Clone, Default)]
pub struct LabOptions {
    /// Lifetime of workload certificates (the fault suite rotates them
    /// during a transfer); default: the control plane's.
    pub workload_cert_ttl: Option<Duration>,
    /// Run a stand-in for kube-proxy in every node ([`kube_proxy`]) and
    /// have the proxies leave the Services of pods outside the mesh to it
    /// (`--kube-proxy-replacement=false`, the chart's default). Off (the
    /// lab's default: it has no kube-proxy), the proxies serve Service
    /// addresses for every pod.
    pub kube_proxy: bool,
    /// Run the control plane, the proxies and `ferry-certs` from this
    /// container image (`LAYOUT:TAG`, as scripts/image.sh prints it) rather
    /// than the build folder: see [`image`].
    pub image: Option<String>,
    /// Build the cluster and start its apps only: the control plane and
    /// the proxies are the caller's to start ([`Lab::run_container`]).
    pub no_daemons: bool,
    /// How pods are wired to their node ([`cni::Cni`]).
    pub cni: cni::Cni,
    /// `--capture-interface` of the proxies (default `auto`).
    pub capture_interface: Option<String>,
    /// Also run Prometheus, scraping every proxy and the control plane
    /// ([`Lab::start_prometheus`]).
    pub prometheus: bool,
    /// Control plane replicas, each from its own copy of the manifests
    /// watch, at its own address (0: one). Every proxy is given all of
    /// them, as the chart's replicas behind one Service.
    pub control_plane_replicas: usize,
}

/// Most control plane replicas a lab runs (their addresses are .2 to .9 of
/// the node network).
pub const MAX_CONTROL_PLANE_REPLICAS: usize = 8;

/// The lab's name of control plane replica `replica` (1-based).
pub fn control_plane_daemon(replica: usize) -> String {
    if replica <= 1 {
        "control-plane".to_string()
    } else {
        format!("control-plane-{replica}")
    }
}

/// Where the control plane replicas serve gRPC (config, CA, status).
pub const CONTROL_PLANE_PORT: u16 = 15010;

/// Where each proxy serves its admin endpoints, on its node's loopback.
pub const PROXY_ADMIN_PORT: u16 = 15000;

/// Where each proxy serves `/metrics` on its node's address (as the
/// chart's 15020).
pub const PROXY_METRICS_PORT: u16 = 15020;

/// Where the control plane serves `/metrics` on its lab address.
pub const CONTROL_PLANE_METRICS_PORT: u16 = 15014;

/// Where the lab's Prometheus ([`Lab::start_prometheus`]) listens, on the
/// control plane's address.
pub const PROMETHEUS_PORT: u16 = 9090;

/// The name of the outside client's namespace in [`Lab::netns`], [`Lab::curl`].
pub const OUTSIDE: &str = "outside";

/// The outside client's address on the node network.
pub const OUTSIDE_HOST: u8 = 200;

impl Lab {
    /// Builds the lab for `manifests` with namespace names starting with `prefix`.
    pub fn up(manifests: &Path, prefix: &str) -> anyhow::Result<Self> {
        Self::up_with(manifests, prefix, LabOptions::default())
    }

    /// [`Lab::up`] with options.
    pub fn up_with(manifests: &Path, prefix: &str, options: LabOptions) -> anyhow::Result<Self> {
        let Topology {
            nodes,
            pods,
            published,
        } = read_topology(manifests)?;
        if nodes.is_empty() {
            bail!("{}: no nodes in the manifests", manifests.display());
        }
        let replicas = options.control_plane_replicas.max(1);
        if replicas > MAX_CONTROL_PLANE_REPLICAS {
            bail!("control plane replicas: {replicas} is more than the lab's {MAX_CONTROL_PLANE_REPLICAS}");
        }
        let work = tempfile::tempdir()?;
        let mut lab = Self {
            control_plane_ip: Ipv4Addr::UNSPECIFIED,
            control_plane_ips: Vec::new(),
            nodes: nodes.clone(),
            pods: pods.clone(),
            processes: Vec::new(),
            retired: Vec::new(),
            daemons: BTreeMap::new(),
            namespaces: BTreeMap::new(),
            image: None,
            cni: options.cni,
            record: None,
            name: prefix.to_string(),
            work,
        };
        if let Some(reference) = &options.image {
            lab.image = Some(image::Image::unpack(reference, lab.work.path())?);
        }
        // The node network and the control plane's address on it.
        let net = Netns::new(&format!("{prefix}-net"))?;
        net.ip(&["link", "add", "sw0", "type", "bridge"])?;
        net.ip(&["link", "set", "sw0", "up"])?;
        let base = nodes[0].ip.octets();
        for replica in 0..replicas {
            // At most 8: .2 to .9.
            let host = 2 + u8::try_from(replica).unwrap_or(0);
            let cp = Ipv4Addr::new(base[0], base[1], base[2], host);
            if nodes.iter().any(|n| n.ip == cp) {
                bail!(
                    "control plane replica {}: {cp} is a node's address",
                    replica + 1
                );
            }
            net.ip(&["addr", "add", &format!("{cp}/24"), "dev", "sw0"])?;
            lab.control_plane_ips.push(cp);
        }
        lab.control_plane_ip = lab.control_plane_ips[0];
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
            options.cni.wire_node(&ns, node.gateway)?;
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
            options
                .cni
                .wire_pod(&lab.namespaces[&node.name], &ns, i, pod.ip, node.gateway)?;
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
        copy_dir(manifests, &copy)?;
        lab.start(&copy, &options)?;
        if !options.no_daemons {
            lab.record = Some(lab.record(&copy).publish()?);
        }
        if options.prometheus && !options.no_daemons {
            lab.start_prometheus()?;
        }
        Ok(lab)
    }

    /// What `ferryctl --lab` needs to reach this lab.
    fn record(&self, manifests: &Path) -> crate::live::lab::LabRecord {
        use crate::live::lab::{LabNodeRecord, LabPodRecord, LabRecord, LabReplica};
        LabRecord {
            name: self.name.clone(),
            pid: std::process::id(),
            pki: self.work.path().join("pki"),
            control_plane_netns: self.namespaces["net"].name.clone(),
            replicas: self
                .control_plane_ips
                .iter()
                .enumerate()
                .map(|(i, ip)| LabReplica {
                    name: control_plane_daemon(i + 1),
                    address: std::net::SocketAddr::from((*ip, CONTROL_PLANE_PORT)),
                    metrics: std::net::SocketAddr::from((*ip, CONTROL_PLANE_METRICS_PORT)),
                })
                .collect(),
            nodes: self
                .nodes
                .iter()
                .map(|n| LabNodeRecord {
                    name: n.name.clone(),
                    netns: self.namespaces[&n.name].name.clone(),
                    address: n.ip,
                    admin: std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, PROXY_ADMIN_PORT)),
                    gateway: n.gateway,
                })
                .collect(),
            pods: self
                .pods
                .iter()
                .map(|p| LabPodRecord {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    node: p.node.clone(),
                    netns: self.namespaces[&format!("{}/{}", p.namespace, p.name)]
                        .name
                        .clone(),
                    ip: p.ip,
                })
                .collect(),
            manifests: manifests.to_path_buf(),
            work: self.work.path().to_path_buf(),
            cni: self.cni,
        }
    }

    fn start(&mut self, manifests: &Path, options: &LabOptions) -> anyhow::Result<()> {
        if !options.no_daemons {
            self.start_daemons(manifests, options)?;
        }
        self.start_apps(manifests, options)
    }

    /// The control plane (mesh CA, manifests) and one proxy per node.
    fn start_daemons(&mut self, manifests: &Path, options: &LabOptions) -> anyhow::Result<()> {
        let work = self.work.path().to_path_buf();
        let pki = work.join("pki");
        let mut args = vec![
            "init".to_string(),
            "--out".into(),
            pki.display().to_string(),
        ];
        for ip in &self.control_plane_ips {
            args.push("--san".into());
            args.push(ip.to_string());
        }
        for n in &self.nodes {
            args.push("--node".into());
            args.push(n.name.clone());
        }
        let out = match &self.image {
            None => Command::new(binary("ferry-certs")?).args(&args).output()?,
            Some(image) => {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                Command::new("unshare")
                    .arg("-m")
                    .arg("sh")
                    .args(image.command("ferry-certs", &args))
                    .output()?
            }
        };
        if !out.status.success() {
            bail!("ferry-certs: {}", String::from_utf8_lossy(&out.stderr));
        }
        let pki_arg = pki.display().to_string();
        let net = &self.namespaces["net"];
        let mut urls = Vec::new();
        let mut replicas = Vec::new();
        for (i, ip) in self.control_plane_ips.iter().enumerate() {
            let listen = format!("{ip}:{CONTROL_PLANE_PORT}");
            let mut cp_args = vec![
                "--manifests".to_string(),
                manifests.display().to_string(),
                "--listen".into(),
                listen.clone(),
                "--tls-dir".into(),
                pki_arg.clone(),
            ];
            if let Some(ttl) = options.workload_cert_ttl {
                cp_args.extend([
                    "--workload-cert-ttl".into(),
                    ttl.as_secs().to_string(),
                    "--workload-cert-min-ttl".into(),
                    format!("{}s", ttl.as_secs()),
                ]);
            }
            // Metrics on the lab network, where the lab's Prometheus scrapes.
            cp_args.extend([
                "--metrics-listen".into(),
                format!("{ip}:{CONTROL_PLANE_METRICS_PORT}"),
                "--replica-name".into(),
                control_plane_daemon(i + 1),
            ]);
            let cp_args: Vec<&str> = cp_args.iter().map(String::as_str).collect();
            let command = self.daemon_command(net, "ferry-control-plane", &cp_args)?;
            let name = control_plane_daemon(i + 1);
            let log = work.join(format!("{name}.log"));
            replicas.push((name, command, log));
            urls.push(format!("https://{listen}"));
        }
        for (name, command, log) in replicas {
            self.start_daemon(&name, command, log)?;
        }
        let control_plane = urls.join(",");
        for node in self.nodes.clone() {
            let hbone = format!("{}:15008", node.ip);
            let metrics = format!("{}:{PROXY_METRICS_PORT}", node.ip);
            let admin = format!("127.0.0.1:{PROXY_ADMIN_PORT}");
            let dns = format!("{}:53", node.gateway);
            let state = work
                .join(format!("state-{}", node.name))
                .display()
                .to_string();
            let ns = &self.namespaces[&node.name];
            let command = self.daemon_command(
                ns,
                "ferry-proxy",
                &[
                    "--node",
                    &node.name,
                    "--control-plane",
                    &control_plane,
                    "--certs",
                    &pki_arg,
                    "--admin",
                    &admin,
                    "--metrics-listen",
                    &metrics,
                    "--socks5",
                    "127.0.0.1:15080",
                    "--hbone",
                    &hbone,
                    "--capture-listen",
                    "0.0.0.0:15001",
                    "--capture-interface",
                    options.capture_interface.as_deref().unwrap_or("auto"),
                    "--inbound-plaintext-listen",
                    "0.0.0.0:15006",
                    "--dns-listen",
                    &dns,
                    // Kept across restarts: the fault suite restarts a
                    // proxy while the control plane is away.
                    "--state-dir",
                    &state,
                    // Lab links answer in microseconds: fail over fast.
                    "--connect-timeout",
                    "2s",
                    "--tls-handshake-timeout",
                    "2s",
                    if options.kube_proxy {
                        "--kube-proxy-replacement=false"
                    } else {
                        "--kube-proxy-replacement=true"
                    },
                    // The kube-proxy stand-in inserts its jump ahead of
                    // the capture jumps: moved back within a second.
                    "--capture-recheck-interval",
                    "1s",
                    // A replaced proxy lets a long transfer finish
                    // (`Lab::upgrade`).
                    "--drain-timeout",
                    "120s",
                ],
            )?;
            self.start_daemon(
                &node.name,
                command,
                work.join(format!("proxy-{}.log", node.name)),
            )?;
        }
        Ok(())
    }

    /// The pods' servers; then waits for the proxies (if the lab started
    /// them) and for every server to answer.
    fn start_apps(&mut self, manifests: &Path, options: &LabOptions) -> anyhow::Result<()> {
        let work = self.work.path().to_path_buf();
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
        for node in self.nodes.iter().filter(|_| !options.no_daemons) {
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
        if options.kube_proxy {
            let state = crate::mesh::proxy_state(manifests)
                .map_err(|e| anyhow::anyhow!("the kube-proxy stand-in: {e}"))?;
            let rules = kube_proxy::render(&state);
            let file = work.join("kube-proxy.rules");
            std::fs::write(&file, &rules)?;
            let file = file.display().to_string();
            for node in &self.nodes {
                let ns = &self.namespaces[&node.name];
                ns.exec(
                    "sh",
                    &["-c", &format!("iptables-restore --noflush < {file}")],
                )?;
                ns.exec("iptables", &kube_proxy::JUMP)?;
            }
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

    /// The `ip` arguments that run the daemon `binary` with `args` in
    /// `ns`: from the build folder, or chrooted into the image.
    fn daemon_command(
        &self,
        ns: &Netns,
        binary: &str,
        args: &[&str],
    ) -> anyhow::Result<Vec<String>> {
        Ok(match &self.image {
            None => {
                let path = self::binary(binary)?.display().to_string();
                ns.command(&path, args)
                    .into_iter()
                    .map(String::from)
                    .collect()
            }
            Some(image) => {
                let mut command: Vec<String> = ns
                    .command("sh", &[])
                    .into_iter()
                    .map(String::from)
                    .collect();
                command.extend(image.command(binary, args));
                command
            }
        })
    }

    /// Starts `container` in the namespace `netns` (a node's name, `net`
    /// for the control plane's network) from the lab's image, as its pod
    /// spec would run it ([`image::Image::container`]); a daemon named
    /// `name` from then on ([`Lab::stop`], [`Lab::restart`], [`Lab::pid`]).
    pub fn run_container(
        &mut self,
        name: &str,
        netns: &str,
        container: &image::Container,
    ) -> anyhow::Result<()> {
        let image = self
            .image
            .as_ref()
            .context("running a container needs the lab's image (LabOptions::image)")?;
        let ns = self
            .namespaces
            .get(netns)
            .with_context(|| format!("no namespace {netns}"))?;
        let env: Vec<String> = container
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut command: Vec<String> = ns
            .command("env", &[])
            .into_iter()
            .map(String::from)
            .collect();
        command.extend(env);
        command.push("sh".into());
        command.extend(image.container(container)?);
        let log = self.work.path().join(format!("{name}.log"));
        self.start_daemon(name, command, log)
    }

    /// Starts a daemon (`ip` with `command`), remembered for [`Lab::restart`].
    fn start_daemon(
        &mut self,
        name: &str,
        command: Vec<String>,
        log: PathBuf,
    ) -> anyhow::Result<()> {
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        self.processes
            .push(Process::start(name, Path::new("ip"), &args, log.clone())?);
        self.daemons.insert(name.to_string(), (command, log));
        Ok(())
    }

    fn daemon(&mut self, name: &str) -> anyhow::Result<&mut Process> {
        self.processes
            .iter_mut()
            .find(|p| p.name() == name)
            .with_context(|| format!("no daemon {name}"))
    }

    /// The PID of a daemon: `control-plane`, or a node's name for its proxy.
    pub fn pid(&mut self, name: &str) -> anyhow::Result<u32> {
        self.daemon(name)?
            .pid()
            .with_context(|| format!("{name} is not running"))
    }

    /// The PID of a running daemon, read without changing the lab (for a
    /// thread that shares it).
    pub fn daemon_pid(&self, name: &str) -> Option<u32> {
        self.processes
            .iter()
            .find(|p| p.name() == name)
            .and_then(|p| p.pid())
    }

    /// Sends `signal` (`STOP`, `CONT`, `KILL`...) to a daemon.
    pub fn signal(&mut self, name: &str, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid(name)?.to_string();
        netns::run("kill", &[&format!("-{signal}"), &pid]).map(|_| ())
    }

    /// Stops a daemon (SIGTERM, then SIGKILL after 10 s).
    pub fn stop(&mut self, name: &str) -> anyhow::Result<()> {
        self.daemon(name)?.terminate(Duration::from_secs(10));
        Ok(())
    }

    /// Replaces the proxy of `node` (or another daemon) with a new process
    /// of the same command while it runs, as an upgrade does: the new
    /// process takes the listeners over (`ferry_proxy::handover`). Returns
    /// once the old process has stopped accepting; it goes on draining its
    /// connections in the background ([`Lab::wait_retired`]).
    pub fn upgrade(&mut self, name: &str) -> anyhow::Result<Duration> {
        let (command, index, log) = self.next_run(name)?;
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        let started = std::time::Instant::now();
        let new = Process::start(name, Path::new("ip"), &args, log)?;
        let old = std::mem::replace(&mut self.processes[index], new);
        wait_for(
            &format!("{name}: the new process serving, the old one draining"),
            Duration::from_secs(30),
            || {
                Ok(old
                    .log()
                    .contains("a successor serves on this node")
                    .then_some(()))
            },
        )
        .map_err(|e| {
            e.context(format!(
                "--- old {name} ---\n{}\n--- new {name} ---\n{}",
                old.log(),
                self.processes[index].log()
            ))
        })?;
        let took = started.elapsed();
        self.retired.push((old, started));
        Ok(took)
    }

    /// Waits (up to `timeout`) for every process [`Lab::upgrade`] replaced
    /// to exit; for each, the time from its successor's start to its exit.
    pub fn wait_retired(&mut self, timeout: Duration) -> anyhow::Result<Vec<Duration>> {
        let deadline = std::time::Instant::now() + timeout;
        let mut exited: Vec<Option<Duration>> = vec![None; self.retired.len()];
        while exited.iter().any(Option::is_none) {
            for ((process, started), exit) in self.retired.iter_mut().zip(exited.iter_mut()) {
                if exit.is_none() && !process.is_running() {
                    *exit = Some(started.elapsed());
                }
            }
            if std::time::Instant::now() >= deadline {
                let waiting: Vec<String> = self
                    .retired
                    .iter()
                    .zip(&exited)
                    .filter(|(_, e)| e.is_none())
                    .map(|((p, _), _)| format!("{}:\n{}", p.name(), p.log()))
                    .collect();
                bail!("replaced processes did not exit: {}", waiting.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.retired.clear();
        Ok(exited.into_iter().flatten().collect())
    }

    /// What starting daemon `name` again takes: the command it was first
    /// started with, its place in the processes, and a new log file beside
    /// the first ([`next_free`]).
    fn next_run(&self, name: &str) -> anyhow::Result<(Vec<String>, usize, PathBuf)> {
        let (command, log) = self
            .daemons
            .get(name)
            .cloned()
            .with_context(|| format!("no daemon {name}"))?;
        let index = self
            .processes
            .iter()
            .position(|p| p.name() == name)
            .with_context(|| format!("no daemon {name}"))?;
        Ok((command, index, next_free(&log, "log")))
    }

    /// Starts a daemon again with the command it was first started with
    /// (stopping it first if it runs); its log goes on in a new file.
    pub fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        let (command, index, log) = self.next_run(name)?;
        self.processes[index].terminate(Duration::from_secs(10));
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        self.processes[index] = Process::start(name, Path::new("ip"), &args, log)?;
        Ok(())
    }

    /// Starts a daemon again with `extra` arguments after those it was
    /// first started with (a fault to inject, say); [`Lab::restart`] goes
    /// back to the first command. Not for labs run from an image.
    pub fn restart_with(&mut self, name: &str, extra: &[&str]) -> anyhow::Result<()> {
        if self.image.is_some() {
            bail!(
                "restart_with: {name} runs from an image, whose command takes no extra arguments"
            );
        }
        let (mut command, index, log) = self.next_run(name)?;
        command.extend(extra.iter().map(|a| a.to_string()));
        self.processes[index].terminate(Duration::from_secs(10));
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        self.processes[index] = Process::start(name, Path::new("ip"), &args, log)?;
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
        let capture = self.start_link_capture(node, markers)?;
        let ran = traffic();
        let report = capture.finish();
        ran?;
        report
    }

    /// Starts capturing the packets on a node's uplink ([`LinkCapture::finish`]
    /// stops and reports).
    pub fn start_link_capture(&self, node: &str, markers: &[&str]) -> anyhow::Result<LinkCapture> {
        let ns = self
            .namespaces
            .get(node)
            .with_context(|| format!("no node {node}"))?;
        LinkCapture::start(&ns.name, self.work.path(), node, markers)
    }

    /// Starts a long-running program in a pod (or node) namespace; it is
    /// stopped when the returned process drops.
    pub fn spawn_in(&self, name: &str, program: &str, args: &[&str]) -> anyhow::Result<Process> {
        let ns = self
            .namespaces
            .get(name)
            .with_context(|| format!("no namespace {name}"))?;
        // A log of its own, also for a second program in the same pod.
        let first = self
            .work
            .path()
            .join(format!("{}-{program}.log", name.replace('/', "-")));
        let log = if first.exists() {
            next_free(&first, "log")
        } else {
            first
        };
        Process::start(program, Path::new("ip"), &ns.command(program, args), log)
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

    /// Runs Prometheus (Debian's `prometheus`) in the lab's network,
    /// scraping every proxy and the control plane each second (job
    /// `ferry-proxy` with a `node` label, job `ferry-control-plane`), with
    /// exemplar storage on; waits until every target is up. Stopped with
    /// the lab. Returns its address.
    pub fn start_prometheus(&mut self) -> anyhow::Result<std::net::SocketAddr> {
        let work = self.work.path().to_path_buf();
        let mut config = String::from(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: ferry-proxy
    static_configs:
",
        );
        for node in &self.nodes {
            config.push_str(&format!(
                "      - targets: ['{}:{PROXY_METRICS_PORT}']
        labels: {{node: {}}}
",
                node.ip, node.name
            ));
        }
        let targets: Vec<String> = self
            .control_plane_ips
            .iter()
            .map(|ip| format!("'{ip}:{CONTROL_PLANE_METRICS_PORT}'"))
            .collect();
        config.push_str(&format!(
            "  - job_name: ferry-control-plane
    static_configs:
      - targets: [{}]
",
            targets.join(", ")
        ));
        let file = work.join("prometheus.yml");
        std::fs::write(&file, config)?;
        let address = std::net::SocketAddr::from((self.control_plane_ip, PROMETHEUS_PORT));
        let args = [
            format!("--config.file={}", file.display()),
            format!("--storage.tsdb.path={}", work.join("prometheus").display()),
            format!("--web.listen-address={address}"),
            "--enable-feature=exemplar-storage".to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let command = self.namespaces["net"].command("prometheus", &args);
        self.processes.push(Process::start(
            "prometheus",
            Path::new("ip"),
            &command,
            work.join("prometheus.log"),
        )?);
        let targets = self.nodes.len() + 1;
        wait_for(
            "Prometheus scraping every proxy and the control plane",
            Duration::from_secs(60),
            || {
                let up = self.prometheus_query("sum(up)").unwrap_or_default();
                Ok(up
                    .first()
                    .filter(|(_, v)| *v as usize == targets)
                    .map(|_| ()))
            },
        )
        .with_context(|| self.logs())?;
        Ok(address)
    }

    /// Evaluates a PromQL expression (instant query, now) with the lab's
    /// Prometheus: each series' labels and value.
    pub fn prometheus_query(
        &self,
        expr: &str,
    ) -> anyhow::Result<Vec<(BTreeMap<String, String>, f64)>> {
        let url = format!(
            "http://{}:{PROMETHEUS_PORT}/api/v1/query",
            self.control_plane_ip
        );
        let body = self.namespaces["net"].exec(
            "curl",
            &[
                "-sS",
                "-m",
                "10",
                "--data-urlencode",
                &format!("query={expr}"),
                &url,
            ],
        )?;
        let reply: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("Prometheus answered {body}"))?;
        if reply["status"] != "success" {
            bail!("{expr}: {}", reply["error"]);
        }
        let result = &reply["data"]["result"];
        let value = |v: &serde_json::Value| -> Option<f64> { v[1].as_str()?.parse().ok() };
        Ok(match reply["data"]["resultType"].as_str() {
            Some("vector") => result
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|series| {
                    let labels = series["metric"]
                        .as_object()?
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect();
                    Some((labels, value(&series["value"])?))
                })
                .collect(),
            Some("scalar") => value(result)
                .map(|v| (BTreeMap::new(), v))
                .into_iter()
                .collect(),
            other => bail!("{expr}: unexpected result type {other:?}"),
        })
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

/// The first of `path.1.EXT`, `path.2.EXT`... that does not exist yet
/// (`proxy-node-a.log` → `proxy-node-a.1.log`).
fn next_free(path: &Path, extension: &str) -> PathBuf {
    (1..)
        .map(|n| path.with_extension(format!("{n}.{extension}")))
        .find(|candidate| !candidate.exists())
        .unwrap_or_else(|| path.to_path_buf())
}

/// A capture of a node's uplink ([`Lab::start_link_capture`]).
#[derive(Debug)]
pub struct LinkCapture {
    sniffer: Process,
    stop: PathBuf,
}

impl LinkCapture {
    /// Starts capturing the packets on the uplink (`up0`) of the node
    /// namespace `netns` (named `node`), with its files in `work`.
    pub fn start(netns: &str, work: &Path, node: &str, markers: &[&str]) -> anyhow::Result<Self> {
        let script = work.join("sniff.py");
        std::fs::write(&script, SNIFFER)?;
        let stop = work.join(format!("sniff-{node}.stop"));
        let _ = std::fs::remove_file(&stop);
        let (script, stop_arg) = (script.display().to_string(), stop.display().to_string());
        let mut args = vec![
            "netns",
            "exec",
            netns,
            "python3",
            script.as_str(),
            "up0",
            stop_arg.as_str(),
        ];
        args.extend(markers);
        let log = work.join(format!("sniff-{node}.log"));
        let log = if log.exists() {
            next_free(&log, "log")
        } else {
            log
        };
        let sniffer = Process::start("sniffer", Path::new("ip"), &args, log)?;
        wait_for("the link capture to start", Duration::from_secs(10), || {
            Ok(sniffer.log().contains("ready").then_some(()))
        })?;
        Ok(Self { sniffer, stop })
    }

    /// Stops the capture; what it saw.
    pub fn finish(mut self) -> anyhow::Result<LinkReport> {
        std::fs::write(&self.stop, b"")?;
        wait_for("the link capture to stop", Duration::from_secs(10), || {
            Ok((!self.sniffer.is_running()).then_some(()))
        })?;
        let log = self.sniffer.log();
        let line = log
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .with_context(|| format!("the capture printed no report: {log}"))?;
        Ok(serde_json::from_str(line)?)
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
