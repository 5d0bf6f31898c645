//! The command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(version = ferry_api::build::LONG_VERSION, about = "Ferry operator tool")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a folder of manifests as the control plane would; or,
    /// with --pre-install, whether this node can run Ferry's proxy (kernel,
    /// iptables, kube-proxy, CNI, ports, Kubernetes version), with a fix
    /// for each failure.
    Check {
        #[arg(
            long,
            required_unless_present = "pre_install",
            conflicts_with = "pre_install"
        )]
        manifests: Option<PathBuf>,
        /// Check this node's requirements instead.
        #[arg(long)]
        pre_install: bool,
        /// Where the CNI keeps its configuration.
        #[arg(long, default_value = "/etc/cni/net.d", requires = "pre_install")]
        cni_dir: PathBuf,
        /// With --pre-install.
        #[arg(long, value_enum, default_value = "table", requires = "pre_install")]
        output: Output,
    },
    /// The local multi-node mesh in network namespaces (needs root).
    Lab {
        #[command(subcommand)]
        command: LabCommand,
    },
    /// NetworkPolicy: reachability matrix and explanations.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The running mesh: control plane replicas, proxies connected, out of
    /// date or refusing configuration (NACK), certificates close to
    /// expiry. Exit 0 when healthy, 1 when a problem is found, 2 when the
    /// mesh cannot be reached.
    Status {
        #[command(flatten)]
        target: Live,
        /// A response unanswered for longer makes its proxy out of date.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        stale_after: std::time::Duration,
        /// A node credential with less left is reported.
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        credential_warning: std::time::Duration,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// The live configuration of one node's proxy.
    ProxyConfig {
        /// The node.
        node: String,
        #[arg(value_enum, default_value = "all")]
        section: ferryctl::live::proxy_config::Section,
        #[command(flatten)]
        target: Live,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Connections the proxies carried or refused (their flow logs): the
    /// last ones, then with --follow every new one as it ends.
    Flows {
        #[command(flatten)]
        target: Live,
        /// Keep showing new flows (until Ctrl-C, or --duration).
        #[arg(long)]
        follow: bool,
        /// With --follow: stop after this long.
        #[arg(long, value_parser = humantime::parse_duration, requires = "follow")]
        duration: Option<std::time::Duration>,
        /// Source pod, NAMESPACE/NAME.
        #[arg(long)]
        from: Option<String>,
        /// Destination: a pod or a service (NAMESPACE/NAME), or an IP.
        #[arg(long)]
        to: Option<String>,
        #[arg(long, value_parser = ["allowed", "denied", "failed"])]
        verdict: Option<String>,
        /// Only this node's proxy.
        #[arg(long)]
        node: Option<String>,
        /// How many of the flows already recorded to show first.
        #[arg(long, default_value_t = 20)]
        last: usize,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// One archive (.tar.gz) with the status, every proxy's config dump,
    /// metrics, flows and recent logs, and the control plane's, with
    /// secrets left out.
    BugReport {
        #[command(flatten)]
        target: Live,
        /// Where to write it (default: ferry-bug-report-<time>.tar.gz here).
        #[arg(long)]
        out: Option<PathBuf>,
        /// What was written: a table, or JSON/YAML.
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Checks through the live mesh with a pair of test workloads.
    Connectivity {
        #[command(subcommand)]
        command: ConnectivityCommand,
    },
    /// One object of the running mesh, as the mesh sees it.
    Describe {
        #[command(subcommand)]
        what: DescribeCommand,
    },
    /// Explain how a connection from a pod to HOST:PORT would be routed.
    Route {
        #[arg(long)]
        manifests: PathBuf,
        /// Source pod, NAMESPACE/NAME.
        #[arg(long)]
        from: String,
        /// Destination: a cluster IP, a service name, a node address with a
        /// node port, a load-balancer IP or a pod IP, with a port.
        #[arg(long)]
        to: String,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConnectivityCommand {
    /// Adds a client and a server pod (on two nodes), a service, a
    /// headless service and a NetworkPolicy in namespace
    /// ferry-connectivity; checks service by name and address, cross-node
    /// traffic, headless, policy allowed and denied, and mutual TLS on the
    /// link; removes them again. Exit 1 when a check fails.
    Test {
        #[command(flatten)]
        target: Live,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
pub enum DescribeCommand {
    /// A pod: enrolment, identity and certificate, the policies that
    /// select it and what they admit, the services it backs, and with
    /// --to what its outbound connection there would do.
    Pod {
        /// NAMESPACE/NAME.
        pod: String,
        /// A destination, HOST:PORT (as `ferryctl route --to`).
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        target: Live,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
}

pub use ferryctl::live::Live;

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build the cluster of a manifests folder as network namespaces (one
    /// per node and per pod), with the control plane, one proxy per node
    /// and the pods' servers; send real traffic through it and print what
    /// it saw; stay up until Ctrl-C.
    Up {
        #[arg(long, default_value = "deploy/examples")]
        manifests: PathBuf,
        /// Exit after the traffic checks (non-zero on any failure).
        #[arg(long)]
        check: bool,
        /// Then run the fault suite (control plane killed, a proxy
        /// restarted alone, a proxy frozen, floods) with its figures.
        #[arg(long)]
        faults: bool,
        /// Run a stand-in for kube-proxy in each node and leave the
        /// Services of pods outside the mesh to it, as on a cluster that
        /// runs kube-proxy (the chart's default); without it the proxies
        /// serve Service addresses for every pod.
        #[arg(long)]
        kube_proxy: bool,
        /// Run the control plane and the proxies from this container image
        /// (`LAYOUT:TAG`, as `scripts/image.sh` prints it), unpacked and
        /// chrooted into, instead of the build folder.
        #[arg(long)]
        image: Option<String>,
        /// How pods are wired to their node: a bridge (flannel), routed
        /// veths (Calico) or point-to-point veths (kindnet).
        #[arg(long, value_enum, default_value = "bridge")]
        cni: ferryctl::lab::cni::Cni,
        /// Also run Prometheus (Debian's `prometheus`) in the lab's network,
        /// scraping every proxy and the control plane each second.
        #[arg(long)]
        prometheus: bool,
        /// Control plane replicas (1 to 8), each at its own address; every
        /// proxy is given all of them and streams from one at a time.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=8))]
        control_plane_replicas: u8,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Whether each pod may connect to each pod, per port and protocol.
    Reachability {
        #[arg(long)]
        manifests: PathBuf,
        /// Ports to check (default: every container port of the pods, else 80).
        #[arg(long, value_delimiter = ',')]
        ports: Vec<u16>,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Which policies and rules decide one connection.
    Explain {
        #[arg(long)]
        manifests: PathBuf,
        /// Source pod, NAMESPACE/NAME.
        #[arg(long)]
        from: String,
        /// NAMESPACE/NAME:PORT[/PROTOCOL] (protocol TCP by default).
        #[arg(long)]
        to: String,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
}

pub use ferryctl::output::Output;
