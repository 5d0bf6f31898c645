//! The proxy's configuration: every flag (each with an environment
//! variable), and the [`Config`] built from them, in which every timeout
//! and limit is a named, documented field (some are set here rather than
//! by a flag: the xDS and certificate timings, DNS TTLs). [`crate::app`]
//! wires the proxy from a `Config`; `/config_dump` shows it (all but the
//! log format).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ferry_process::admin::{AdminFlags, AdminLimits};
use ferry_process::{parse_duration as duration, LogFormat};
use serde::Serialize;

use crate::capture::interface::InterfaceSetting;
use crate::capture::{parse_mark, Backend, CaptureSettings, ClientAddress};
use crate::dns::DnsSettings;
use crate::hbone::H2Settings;
use crate::identity::CertificateSettings;
use crate::xds::XdsSettings;

/// The command line (and environment) of `ferry-proxy`.
#[derive(Debug, Clone, Parser)]
#[command(version = ferry_api::build::LONG_VERSION, about = "Ferry node proxy")]
pub struct Args {
    /// Name of the node this proxy serves (as in the Node object).
    #[arg(long, env = "FERRY_NODE_NAME")]
    pub node: String,
    /// Control plane URL (https:// when --certs is given); several,
    /// comma-separated, for replicas: the proxy streams from one and moves
    /// to the next when its stream ends (CSRs are spread over all).
    #[arg(
        long,
        env = "FERRY_CONTROL_PLANE",
        default_value = "http://127.0.0.1:15010"
    )]
    pub control_plane: String,
    /// Fault injection, for drills of NACK handling and alerting
    /// (`ferryctl status`, the NACK alert): refuse these resources
    /// (NACK) as if they failed validation, keeping their last good
    /// version. `KIND/NAME`, comma-separated: `service/default/web`,
    /// `policy/shop/deny-all`, `node/node-a`. Never needed otherwise.
    #[arg(long, env = "FERRY_REFUSE_RESOURCES", value_delimiter = ',')]
    pub refuse_resources: Vec<String>,
    /// Mesh PKI folder (`ferry-certs init`): ca.pem and nodes/<node>.pem,
    /// nodes/<node>-key.pem. Without it the proxy has no mesh identity:
    /// config only, no HBONE.
    #[arg(long, env = "FERRY_CERTS", conflicts_with = "ca_root")]
    pub certs: Option<PathBuf>,
    /// In a cluster: the mesh CA root (the control plane publishes it in a
    /// ConfigMap). The proxy then proves its node with --token-file.
    #[arg(long, env = "FERRY_CA_ROOT", requires = "token_file")]
    pub ca_root: Option<PathBuf>,
    /// A projected service account token with the control plane's audience
    /// (re-read for every request: the kubelet rotates it).
    #[arg(long, env = "FERRY_TOKEN_FILE", requires = "ca_root")]
    pub token_file: Option<PathBuf>,
    /// Folder where the last good configuration and the workload
    /// certificates are kept (mode 0600), so that a restart while the
    /// control plane is away keeps enforcing policy and presenting
    /// identities. Without it a restarted proxy refuses every connection
    /// until the control plane answers.
    #[arg(long, env = "FERRY_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Admin HTTP address (readiness, config dump, metrics).
    #[arg(long, env = "FERRY_ADMIN", default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// Metrics and health listener (`/metrics`, `/healthz/ready`,
    /// `/healthz/live`) for scrapers and probes on the node's network,
    /// while `--admin` (which also dumps the configuration) stays on
    /// loopback. Off unless set.
    #[arg(long, env = "FERRY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub admin_flags: AdminFlags,
    /// HBONE (mTLS tunnel) listener.
    #[arg(long, env = "FERRY_HBONE", default_value = "0.0.0.0:15008")]
    pub hbone: SocketAddr,
    /// Explicit outbound listener (SOCKS5). Keep it on loopback unless every
    /// client that can reach it may use the mesh as any pod of this node.
    #[arg(long, env = "FERRY_SOCKS5", default_value = "127.0.0.1:15080")]
    pub socks5: SocketAddr,
    /// Transparent capture listener (iptables REDIRECT target). Off unless
    /// set. `[::]:PORT` captures IPv4 and IPv6, `0.0.0.0:PORT` IPv4 only.
    #[arg(long, env = "FERRY_CAPTURE_LISTEN")]
    pub capture_listen: Option<SocketAddr>,
    /// Install redirect rules for the pods behind this interface (`cni0`),
    /// or interfaces with this prefix (`cali+`), kept in step with the
    /// configuration and removed on shutdown; `auto`: the interface the
    /// node routes its pods to, found once they are known. Pods routed
    /// elsewhere are reported. Needs --capture-listen and CAP_NET_ADMIN.
    #[arg(long, env = "FERRY_CAPTURE_INTERFACE", requires = "capture_listen")]
    pub capture_interface: Option<InterfaceSetting>,
    /// Serve Service addresses (cluster, node port, load-balancer and
    /// external IPs) for every pod of the node, as kube-proxy does: for
    /// clusters without kube-proxy. Off, only connections with a mesh
    /// workload at one end are captured (everything a mesh pod sends, and
    /// connections to a mesh pod or to a Service with an endpoint in the
    /// mesh); every other Service is left to kube-proxy.
    #[arg(long, env = "FERRY_KUBE_PROXY_REPLACEMENT", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub kube_proxy_replacement: bool,
    /// The iptables the capture rules are written with: `auto` uses the
    /// backend the host's rules are in (nf_tables or legacy), as the
    /// kubelet's and kube-proxy's images decide.
    #[arg(
        long,
        env = "FERRY_IPTABLES_BACKEND",
        value_enum,
        default_value = "auto"
    )]
    pub iptables_backend: Backend,
    /// How often the capture jumps are checked to still come first in the
    /// nat PREROUTING chain (kube-proxy or a CNI may insert ahead of them).
    #[arg(long, env = "FERRY_CAPTURE_RECHECK_INTERVAL", default_value = "10s", value_parser = duration)]
    pub capture_recheck_interval: Duration,
    /// Whether a server sees its client's address (`keep`: connections to
    /// pods and beyond are made from the client's address, with the reply
    /// routing this needs; where the node cannot, the node's address, with
    /// a warning and `ferry_client_address_fallbacks_total`) or the node's
    /// (`node`). Needs capture (--capture-interface).
    #[arg(long, env = "FERRY_CLIENT_ADDRESS", value_enum, default_value = "keep")]
    pub client_address: ClientAddress,
    /// The packet mark (MARK/MASK) of connections made from clients'
    /// addresses; its bits must be free of the CNI's and kube-proxy's.
    #[arg(long, env = "FERRY_CLIENT_ADDRESS_MARK", default_value = "0x539/0xfff", value_parser = parse_mark)]
    pub client_address_mark: (u32, u32),
    /// The routing table that delivers those connections' replies locally.
    #[arg(long, env = "FERRY_CLIENT_ADDRESS_TABLE", default_value_t = 133)]
    pub client_address_table: u32,
    /// Inbound plaintext listener: plaintext to this node's mesh pods that
    /// did not come through a tunnel is redirected here, policed and passed
    /// through. Off unless set.
    #[arg(long, env = "FERRY_INBOUND_PLAINTEXT_LISTEN")]
    pub inbound_plaintext_listen: Option<SocketAddr>,
    /// DNS listener (UDP and TCP) answering for services; off unless set.
    #[arg(long, env = "FERRY_DNS_LISTEN")]
    pub dns_listen: Option<SocketAddr>,
    /// Resolver for names outside the mesh (default: the nameservers of
    /// /etc/resolv.conf).
    #[arg(long, env = "FERRY_DNS_UPSTREAM")]
    pub dns_upstream: Option<SocketAddr>,
    /// Cluster DNS domain.
    #[arg(long, env = "FERRY_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Requested workload certificate lifetime in seconds (0: the CA's maximum).
    #[arg(long, env = "FERRY_CERT_TTL", default_value_t = 0)]
    pub cert_ttl: u64,
    /// Concurrent streams per pooled HBONE connection.
    #[arg(long, env = "FERRY_HBONE_STREAMS", default_value_t = 100)]
    pub hbone_streams: u32,
    /// Longest a TCP connection (to a pod, an address outside the mesh or
    /// another node's proxy) may take to open.
    #[arg(long, env = "FERRY_CONNECT_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub connect_timeout: Duration,
    /// Longest a client of the HBONE listener may take to finish its TLS
    /// handshake (and the HBONE client to finish its own).
    #[arg(long, env = "FERRY_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub tls_handshake_timeout: Duration,
    /// The HBONE listener closes a connection with no open stream for
    /// this long.
    #[arg(long, env = "FERRY_HBONE_IDLE_TIMEOUT", default_value = "10m", value_parser = duration)]
    pub hbone_idle_timeout: Duration,
    /// The HBONE client closes a pooled connection with no open stream
    /// for this long (shorter than the listener's, so the client closes
    /// first).
    #[arg(long, env = "FERRY_HBONE_POOL_IDLE", default_value = "5m", value_parser = duration)]
    pub hbone_pool_idle: Duration,
    /// How often an HBONE connection is PINGed, by the client (its pooled
    /// connections) and by the listener (connections from other nodes).
    #[arg(long, env = "FERRY_HBONE_KEEPALIVE_INTERVAL", default_value = "10s", value_parser = duration)]
    pub hbone_keepalive_interval: Duration,
    /// How long the answer to a PING may take before the connection is
    /// taken for dead.
    #[arg(long, env = "FERRY_HBONE_KEEPALIVE_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub hbone_keepalive_timeout: Duration,
    /// On SIGTERM: how long open connections may go on (the listeners are
    /// closed at once) before the proxy exits regardless.
    #[arg(long, env = "FERRY_DRAIN_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub drain_timeout: Duration,
    /// Longest a SOCKS5 client may take to say where it goes.
    #[arg(long, env = "FERRY_SOCKS5_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub socks5_handshake_timeout: Duration,
    /// How long a new HBONE connection waits for its source workload's
    /// first certificate (a pod that has just started).
    #[arg(long, env = "FERRY_CERTIFICATE_WAIT", default_value = "5s", value_parser = duration)]
    pub certificate_wait: Duration,
    /// Forwarded DNS queries in flight at most; beyond, SERVFAIL at once.
    #[arg(long, env = "FERRY_DNS_MAX_FORWARDS", default_value_t = 256)]
    pub dns_max_forwards: usize,
    /// Longest a forwarded DNS query may wait for the upstream resolver.
    #[arg(long, env = "FERRY_DNS_UPSTREAM_TIMEOUT", default_value = "2s", value_parser = duration)]
    pub dns_upstream_timeout: Duration,
    #[arg(long, env = "FERRY_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Access log lines per second at most (one per finished connection,
    /// target `ferry::access`, in the --log-format); 0 turns them off.
    #[arg(long, env = "FERRY_ACCESS_LOG_RATE", default_value_t = 100)]
    pub access_log_rate: u32,
    /// Connections the flow log keeps (the last ones, carried or refused;
    /// `ferryctl flows`, admin `/flows`); 0 turns it off.
    #[arg(long, env = "FERRY_FLOW_HISTORY", default_value_t = 1024)]
    pub flow_history: usize,
    /// Also export Istio's standard TCP metrics (`istio_tcp_*` with Istio's
    /// labels and byte directions), for Kiali and the Istio dashboards.
    #[arg(
        long,
        env = "FERRY_ISTIO_METRICS",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub istio_metrics: bool,
    /// Threads that run the data path. One is the most efficient per byte
    /// and per connection (no hand-offs between threads: see
    /// docs/benchmarks.md) and leaves the node's other cores to its pods;
    /// raise it on nodes whose traffic needs more than one core.
    #[arg(long, env = "FERRY_WORKER_THREADS", default_value_t = 1)]
    pub worker_threads: usize,
}

/// How the proxy proves its node to the control plane and obtains
/// workload certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Credentials {
    /// No mesh identity: config and direct connections only, no HBONE.
    None,
    /// A `ferry-certs init` folder: the CA root and this node's credential.
    Files { dir: PathBuf },
    /// In a cluster: the CA root, and a service account token.
    Token {
        ca_root: PathBuf,
        token_file: PathBuf,
    },
}

/// The listeners; `None`: off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listeners {
    pub admin: SocketAddr,
    /// Metrics and health only.
    pub metrics: Option<SocketAddr>,
    pub hbone: SocketAddr,
    pub socks5: SocketAddr,
    pub capture: Option<SocketAddr>,
    pub inbound_plaintext: Option<SocketAddr>,
    pub dns: Option<SocketAddr>,
}

/// Timeouts of the data path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Timeouts {
    /// Opening a TCP connection (pods, outside addresses, other proxies).
    pub connect: Duration,
    /// The TLS and HTTP/2 handshakes on either side of HBONE.
    pub tls_handshake: Duration,
    /// A SOCKS5 client's greeting and request.
    pub socks5_handshake: Duration,
    /// A new HBONE connection waiting for its source's first certificate.
    pub certificate_wait: Duration,
    /// An HBONE connection without open streams, at the listener.
    pub hbone_idle: Duration,
    /// A pooled HBONE connection without open streams.
    pub hbone_pool_idle: Duration,
    /// PING interval and PONG deadline on pooled HBONE connections.
    pub hbone_keepalive_interval: Duration,
    pub hbone_keepalive_timeout: Duration,
}

/// Everything the proxy runs with.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub node: String,
    pub credentials: Credentials,
    pub listeners: Listeners,
    pub capture: CaptureSettings,
    pub xds: XdsSettings,
    pub certificates: CertificateSettings,
    pub timeouts: Timeouts,
    pub h2: H2Settings,
    pub dns: DnsSettings,
    /// How often expired ClientIP affinity entries are swept.
    pub affinity_sweep: Duration,
    /// On SIGTERM: the longest wait for open connections to finish.
    pub drain_timeout: Duration,
    #[serde(skip)]
    pub log_format: LogFormat,
    /// Access log lines per second at most; 0: none.
    pub access_log_rate: u32,
    /// Connections the flow log keeps; 0: none.
    pub flow_history: usize,
    /// Istio's standard TCP metrics as well.
    pub istio_metrics: bool,
    /// Threads of the runtime.
    pub worker_threads: usize,
    /// What one admin client may hold.
    pub admin_limits: AdminLimits,
    /// Where state is kept across restarts; `None`: nowhere.
    pub state: Option<StateSettings>,
}

/// The state folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateSettings {
    pub dir: PathBuf,
    /// The configuration is saved once changes have been quiet this long
    /// (and so at most this often).
    pub save_settle: Duration,
}

/// `KIND/NAME` (`service/default/web`) as a resource key.
fn parse_resource_key(text: &str) -> Option<ferry_api::ResourceKey> {
    let (kind, name) = text.trim().split_once('/')?;
    let kind = ferry_api::Kind::ALL
        .into_iter()
        .find(|k| k.as_str() == kind)?;
    (!name.is_empty()).then(|| ferry_api::ResourceKey::new(kind, name))
}

/// A flag that cannot be used as given.
#[derive(Debug, thiserror::Error)]
#[error("--{flag}: {message}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub message: String,
}

impl Config {
    /// Checks the flags and builds the configuration.
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        let invalid = |flag, message: &str| ConfigError {
            flag,
            message: message.to_string(),
        };
        if args.node.is_empty() {
            return Err(invalid("node", "must not be empty"));
        }
        let admin_limits = args
            .admin_flags
            .limits()
            .map_err(|(flag, message)| invalid(flag, message))?;
        if args.dns_max_forwards == 0 {
            return Err(invalid("dns-max-forwards", "must be at least 1"));
        }
        if args.worker_threads == 0 {
            return Err(invalid("worker-threads", "must be at least 1"));
        }
        if args.hbone_streams == 0 {
            return Err(invalid("hbone-streams", "must be at least 1"));
        }
        let urls: Vec<String> = args
            .control_plane
            .split(',')
            .map(|u| u.trim().to_string())
            .collect();
        if let Some(bad) = urls
            .iter()
            .find(|u| !(u.starts_with("http://") || u.starts_with("https://")))
        {
            return Err(ConfigError {
                flag: "control-plane",
                message: format!("{bad:?} is not an http:// or https:// URL"),
            });
        }
        let refuse = args
            .refuse_resources
            .iter()
            .map(|r| {
                parse_resource_key(r).ok_or_else(|| ConfigError {
                    flag: "refuse-resources",
                    message: format!(
                        "{r:?} is not KIND/NAME (kinds: workload, service, node, policy, peer_group)"
                    ),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (flag, value) in [
            ("connect-timeout", args.connect_timeout),
            ("tls-handshake-timeout", args.tls_handshake_timeout),
            ("socks5-handshake-timeout", args.socks5_handshake_timeout),
            ("dns-upstream-timeout", args.dns_upstream_timeout),
            ("hbone-idle-timeout", args.hbone_idle_timeout),
            ("hbone-pool-idle", args.hbone_pool_idle),
            ("hbone-keepalive-interval", args.hbone_keepalive_interval),
            ("hbone-keepalive-timeout", args.hbone_keepalive_timeout),
            ("capture-recheck-interval", args.capture_recheck_interval),
        ] {
            if value.is_zero() {
                return Err(invalid(flag, "must be longer than zero"));
            }
        }
        let credentials = match (args.certs, args.ca_root, args.token_file) {
            (Some(dir), _, _) => Credentials::Files { dir },
            (None, Some(ca_root), Some(token_file)) => Credentials::Token {
                ca_root,
                token_file,
            },
            _ => Credentials::None,
        };
        Ok(Self {
            node: args.node,
            credentials,
            listeners: Listeners {
                admin: args.admin,
                metrics: args.metrics_listen,
                hbone: args.hbone,
                socks5: args.socks5,
                capture: args.capture_listen,
                inbound_plaintext: args.inbound_plaintext_listen,
                dns: args.dns_listen,
            },
            capture: CaptureSettings {
                interface: args.capture_interface,
                kube_proxy_replacement: args.kube_proxy_replacement,
                iptables_backend: args.iptables_backend,
                recheck: args.capture_recheck_interval,
                client_address: args.client_address,
                client_address_mark: args.client_address_mark,
                client_address_table: args.client_address_table,
            },
            xds: XdsSettings {
                urls,
                connect_timeout: Duration::from_secs(3),
                keepalive_interval: Duration::from_secs(10),
                keepalive_timeout: Duration::from_secs(5),
                reconnect_initial: Duration::from_millis(100),
                reconnect_max: Duration::from_secs(5),
                max_message_bytes: 512 << 20,
                refuse,
            },
            certificates: CertificateSettings {
                ttl: Duration::from_secs(args.cert_ttl),
                retry_initial: Duration::from_millis(500),
                retry_max: Duration::from_secs(30),
                review_interval: Duration::from_secs(30),
                request_timeout: Duration::from_secs(10),
            },
            timeouts: Timeouts {
                connect: args.connect_timeout,
                tls_handshake: args.tls_handshake_timeout,
                socks5_handshake: args.socks5_handshake_timeout,
                certificate_wait: args.certificate_wait,
                hbone_idle: args.hbone_idle_timeout,
                hbone_pool_idle: args.hbone_pool_idle,
                hbone_keepalive_interval: args.hbone_keepalive_interval,
                hbone_keepalive_timeout: args.hbone_keepalive_timeout,
            },
            h2: H2Settings {
                max_streams: args.hbone_streams,
                ..H2Settings::default()
            },
            dns: DnsSettings {
                cluster_domain: args.cluster_domain,
                upstream: args.dns_upstream,
                upstream_timeout: args.dns_upstream_timeout,
                ttl: 5,
                tcp_idle_timeout: Duration::from_secs(5),
                max_forwards: args.dns_max_forwards,
            },
            affinity_sweep: Duration::from_secs(60),
            drain_timeout: args.drain_timeout,
            log_format: args.log_format,
            access_log_rate: args.access_log_rate,
            flow_history: args.flow_history,
            istio_metrics: args.istio_metrics,
            worker_threads: args.worker_threads,
            admin_limits,
            state: args.state_dir.map(|dir| StateSettings {
                dir,
                save_settle: Duration::from_secs(1),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(flags: &[&str]) -> Result<Config, String> {
        let args =
            Args::try_parse_from(std::iter::once("ferry-proxy").chain(flags.iter().copied()))
                .map_err(|e| e.to_string())?;
        Config::from_args(args).map_err(|e| e.to_string())
    }

    #[test]
    fn refused_resources_are_kind_and_name() {
        let config = parse(&[
            "--node",
            "n1",
            "--refuse-resources",
            "service/default/web,peer_group/shop/0123",
        ])
        .unwrap();
        assert_eq!(
            config.xds.refuse,
            [
                ferry_api::ResourceKey::new(ferry_api::Kind::Service, "default/web"),
                ferry_api::ResourceKey::new(ferry_api::Kind::PeerGroup, "shop/0123"),
            ]
        );
        for bad in ["web", "svc/default/web", "service/"] {
            let error = parse(&["--node", "n1", "--refuse-resources", bad]).unwrap_err();
            assert!(
                error.contains("--refuse-resources") && error.contains(bad),
                "{error}"
            );
        }
    }

    #[test]
    fn defaults_and_durations() {
        let config = parse(&["--node", "n1", "--connect-timeout", "750ms"]).unwrap();
        assert_eq!(config.timeouts.connect, Duration::from_millis(750));
        assert_eq!(config.timeouts.tls_handshake, Duration::from_secs(10));
        assert_eq!(config.h2.max_streams, 100);
        assert_eq!(config.credentials, Credentials::None);
        assert_eq!(config.listeners.capture, None);
        assert_eq!(config.xds.urls, ["http://127.0.0.1:15010"]);
        let replicas = parse(&[
            "--node",
            "n1",
            "--control-plane",
            "https://10.0.0.2:15010, https://10.0.0.3:15010",
        ])
        .unwrap();
        assert_eq!(
            replicas.xds.urls,
            ["https://10.0.0.2:15010", "https://10.0.0.3:15010"]
        );
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let cases = [
            (vec!["--node", ""], "--node: must not be empty"),
            (
                vec!["--node", "n1", "--hbone-streams", "0"],
                "--hbone-streams",
            ),
            (
                vec!["--node", "n1", "--connect-timeout", "0s"],
                "--connect-timeout",
            ),
            (vec!["--node", "n1", "--connect-timeout", "soon"], "soon"),
            (vec!["--node", "n1", "--ca-root", "/ca.pem"], "--token-file"),
            (
                vec![
                    "--node",
                    "n1",
                    "--control-plane",
                    "https://a:1,,https://b:1",
                ],
                r#"--control-plane: "" is not an http:// or https:// URL"#,
            ),
        ];
        for (flags, want) in cases {
            let err = parse(&flags).unwrap_err();
            assert!(err.contains(want), "{flags:?}: {err}");
        }
    }

    #[test]
    fn credentials_from_certs_or_a_token() {
        let files = parse(&["--node", "n1", "--certs", "/pki"]).unwrap();
        assert_eq!(files.credentials, Credentials::Files { dir: "/pki".into() });
        let token = parse(&["--node", "n1", "--ca-root", "/ca.pem", "--token-file", "/t"]).unwrap();
        assert_eq!(
            token.credentials,
            Credentials::Token {
                ca_root: "/ca.pem".into(),
                token_file: "/t".into()
            }
        );
    }
}
