//! `ferry-proxy`: the node proxy.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ferry_api::process::{init_tracing, shutdown_signal, LogFormat};
use ferry_proxy::admin::{self, Admin};
use ferry_proxy::auth::TokenFile;
use ferry_proxy::capture::Family;
use ferry_proxy::identity::IdentityManager;
use ferry_proxy::inbound::Inbound;
use ferry_proxy::outbound::Outbound;
use ferry_proxy::state::ConfigStore;
use ferry_proxy::tunnel::HbonePool;
use ferry_proxy::xds::{control_plane_endpoint, XdsClient};

#[derive(Debug, Parser)]
#[command(version, about = "Ferry node proxy")]
struct Args {
    /// Name of the node this proxy serves (as in the Node object).
    #[arg(long, env = "FERRY_NODE_NAME")]
    node: String,
    /// Control plane URL (https:// when --certs is given).
    #[arg(
        long,
        env = "FERRY_CONTROL_PLANE",
        default_value = "http://127.0.0.1:15010"
    )]
    control_plane: String,
    /// Mesh PKI folder (`ferry-certs init`): ca.pem and nodes/<node>.pem,
    /// nodes/<node>-key.pem. Without it the proxy has no mesh identity:
    /// config only, no HBONE.
    #[arg(long, env = "FERRY_CERTS", conflicts_with = "ca_root")]
    certs: Option<PathBuf>,
    /// In a cluster: the mesh CA root (the control plane publishes it in a
    /// ConfigMap). The proxy then proves its node with --token-file.
    #[arg(long, env = "FERRY_CA_ROOT", requires = "token_file")]
    ca_root: Option<PathBuf>,
    /// A projected service account token with the control plane's audience
    /// (re-read for every request: the kubelet rotates it).
    #[arg(long, env = "FERRY_TOKEN_FILE", requires = "ca_root")]
    token_file: Option<PathBuf>,
    /// Admin HTTP address (readiness, config dump).
    #[arg(long, env = "FERRY_ADMIN", default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// HBONE (mTLS tunnel) listener.
    #[arg(long, env = "FERRY_HBONE", default_value = "0.0.0.0:15008")]
    hbone: SocketAddr,
    /// Explicit outbound listener (SOCKS5). Keep it on loopback unless every
    /// client that can reach it may use the mesh as any pod of this node.
    #[arg(long, env = "FERRY_SOCKS5", default_value = "127.0.0.1:15080")]
    socks5: SocketAddr,
    /// Transparent capture listener (iptables REDIRECT target). Off unless
    /// set. `[::]:PORT` captures IPv4 and IPv6, `0.0.0.0:PORT` IPv4 only.
    #[arg(long, env = "FERRY_CAPTURE_LISTEN")]
    capture_listen: Option<SocketAddr>,
    /// Install redirect rules for the pods behind this interface (the
    /// pod-facing bridge), kept in step with the configuration and removed
    /// on shutdown. Needs --capture-listen and CAP_NET_ADMIN.
    #[arg(long, env = "FERRY_CAPTURE_INTERFACE", requires = "capture_listen")]
    capture_interface: Option<String>,
    /// Inbound plaintext listener: plaintext to this node's mesh pods that
    /// did not come through a tunnel is redirected here, policed and passed
    /// through. Off unless set.
    #[arg(long, env = "FERRY_INBOUND_PLAINTEXT_LISTEN")]
    inbound_plaintext_listen: Option<SocketAddr>,
    /// DNS listener (UDP) answering for services; off unless set.
    #[arg(long, env = "FERRY_DNS_LISTEN")]
    dns_listen: Option<SocketAddr>,
    /// Resolver for names outside the mesh (default: the first nameserver
    /// of /etc/resolv.conf).
    #[arg(long, env = "FERRY_DNS_UPSTREAM")]
    dns_upstream: Option<SocketAddr>,
    /// Cluster DNS domain.
    #[arg(long, env = "FERRY_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// Requested workload certificate lifetime in seconds (0: the CA's maximum).
    #[arg(long, env = "FERRY_CERT_TTL", default_value_t = 0)]
    cert_ttl: u64,
    /// Concurrent streams per pooled HBONE connection.
    #[arg(long, env = "FERRY_HBONE_STREAMS", default_value_t = 100)]
    hbone_streams: usize,
    #[arg(long, env = "FERRY_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Access log lines per second at most (one per finished connection,
    /// target `ferry::access`, in the --log-format); 0 turns them off.
    #[arg(long, env = "FERRY_ACCESS_LOG_RATE", default_value_t = 100)]
    access_log_rate: u32,
}

/// The TLS settings towards the control plane (trusting `ca_pem`, with
/// the node's client certificate when it has one) and the identity manager
/// that fetches workload certificates from the mesh CA.
fn mesh_credentials(
    args: &Args,
    ca_pem: &str,
    ca_path: &std::path::Path,
    client: Option<tonic::transport::Identity>,
) -> anyhow::Result<(
    Option<tonic::transport::ClientTlsConfig>,
    Option<Arc<IdentityManager>>,
)> {
    let trust_domain = ferry_certs::ca_trust_domain(ca_pem, ca_path)?;
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem));
    if let Some(identity) = client {
        tls = tls.identity(identity);
    }
    let roots = ferry_proxy::identity::root_store(ca_pem)?;
    let ca_channel = control_plane_endpoint(&args.control_plane, Some(tls.clone()))
        .context("--control-plane")?
        .connect_lazy();
    let identities = IdentityManager::new(
        &args.node,
        trust_domain,
        roots,
        Some(ca_channel),
        Duration::from_secs(args.cert_ttl),
    );
    Ok((Some(tls), Some(identities)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_format);
    anyhow::ensure!(!args.node.is_empty(), "--node must not be empty");

    // Mesh credentials: the node credential (or, in a cluster, a service
    // account token) authenticates to the control plane (config stream and
    // CA); workload certificates carry HBONE.
    let (tls, identities) = match (&args.certs, &args.ca_root, &args.token_file) {
        (Some(dir), _, _) => {
            let ca_path = dir.join(ferry_certs::files::CA_CERT);
            let ca_pem = ferry_certs::read_pem(&ca_path)
                .with_context(|| format!("--certs {}", dir.display()))?;
            let (cert, key) = ferry_certs::files::node(&args.node);
            let node = ferry_certs::Credential::load(&dir.join(cert), &dir.join(key))
                .with_context(|| {
                    format!(
                        "--certs {}: the credential of node {}",
                        dir.display(),
                        args.node
                    )
                })?;
            let identity = tonic::transport::Identity::from_pem(&node.cert_pem, &node.key_pem);
            mesh_credentials(&args, &ca_pem, &ca_path, Some(identity))?
        }
        (None, Some(root), Some(token)) => {
            let ca_pem = ferry_certs::read_pem(root)
                .with_context(|| format!("--ca-root {}", root.display()))?;
            let (tls, identities) = mesh_credentials(&args, &ca_pem, root, None)?;
            if let Some(identities) = &identities {
                identities.use_token(TokenFile::new(token));
            }
            (tls, identities)
        }
        _ => {
            tracing::warn!(
                "no --certs or --ca-root: no mesh identity, so no HBONE; config and direct connections only"
            );
            (None, None)
        }
    };
    let trust_domain = identities
        .as_ref()
        .map_or(ferry_api::identity::DEFAULT_TRUST_DOMAIN.to_string(), |i| {
            i.trust_domain().to_string()
        });
    let store = Arc::new(ConfigStore::for_trust_domain(&trust_domain));
    let endpoint = control_plane_endpoint(&args.control_plane, tls).context("--control-plane")?;
    let xds = XdsClient::new(endpoint, &args.node, store.clone())
        .with_token(args.token_file.as_ref().map(TokenFile::new));

    let metrics = ferry_proxy::telemetry::metrics::Metrics::new();
    let tracing_pipeline = ferry_proxy::telemetry::trace::Tracing::from_env(
        &args.node,
        metrics.spans_exported.clone(),
        metrics.spans_dropped.clone(),
    )
    .context("OpenTelemetry (OTEL_* variables)")?;
    if tracing_pipeline.is_some() {
        tracing::info!("exporting connection spans over OTLP");
    }
    let telemetry =
        ferry_proxy::telemetry::Telemetry::new(metrics, tracing_pipeline, args.access_log_rate);
    let pool = identities.as_ref().map(|i| {
        Arc::new(HbonePool::new(
            i.clone(),
            args.hbone_streams,
            Duration::from_secs(5),
        ))
    });
    let tracker = ferry_proxy::policy::ConnectionTracker::new();
    let outbound = Arc::new(Outbound::new(
        &args.node,
        trust_domain,
        store.clone(),
        pool.clone(),
        tracker.clone(),
        telemetry.clone(),
    ));

    let admin_listener = admin::bind(args.admin)
        .await
        .with_context(|| format!("--admin {}: cannot bind", args.admin))?;
    let socks_listener = tokio::net::TcpListener::bind(args.socks5)
        .await
        .with_context(|| format!("--socks5 {}: cannot bind", args.socks5))?;
    let inbound = match &identities {
        Some(identities) => {
            let listener = tokio::net::TcpListener::bind(args.hbone)
                .await
                .with_context(|| format!("--hbone {}: cannot bind", args.hbone))?;
            let tls = ferry_proxy::tls::server_config(identities.clone())?;
            Some((
                listener,
                Inbound {
                    node: args.node.clone(),
                    store: store.clone(),
                    tls: Arc::new(tls),
                    tracker: tracker.clone(),
                    telemetry: telemetry.clone(),
                },
            ))
        }
        None => None,
    };
    let capture_listener = match args.capture_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--capture-listen {addr}: cannot bind"))?,
        ),
        None => None,
    };
    let plaintext_listener = match args.inbound_plaintext_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--inbound-plaintext-listen {addr}: cannot bind"))?,
        ),
        None => None,
    };
    let capture_rules = match (&args.capture_interface, args.capture_listen) {
        (Some(interface), Some(addr)) => {
            let mut rules = ferry_proxy::capture::CaptureRules {
                node: args.node.clone(),
                interface: interface.clone(),
                capture_port: addr.port(),
                inbound_port: args.inbound_plaintext_listen.map(|a| a.port()),
                hbone_port: args.hbone.port(),
                // An IPv4 listener cannot take redirected IPv6 connections:
                // IPv6 is captured only when every listener can.
                families: if addr.is_ipv6()
                    && args.inbound_plaintext_listen.is_none_or(|a| a.is_ipv6())
                {
                    vec![Family::V4, Family::V6]
                } else {
                    vec![Family::V4]
                },
            };
            let state = store.snapshot();
            rules.install(&state).context("installing capture rules")?;
            let applied = rules.rendered(&state);
            Some((rules, applied))
        }
        _ => None,
    };
    tracing::info!(node = %args.node, admin = %args.admin, socks5 = %args.socks5, hbone = %args.hbone, control_plane = %args.control_plane, mtls = identities.is_some(), "proxy starting");

    let admin = Admin {
        node: args.node.clone(),
        store: store.clone(),
        xds: xds.clone(),
        identities: identities.clone(),
        pool,
        tracker: tracker.clone(),
        telemetry: telemetry.clone(),
    };
    let identity_task = async {
        match identities {
            Some(identities) => identities.run(store.clone()).await,
            None => std::future::pending().await,
        }
    };
    let inbound_task = async {
        match inbound {
            Some((listener, inbound)) => inbound.serve(listener).await,
            None => std::future::pending().await,
        }
    };
    let dns_socket = match args.dns_listen {
        Some(addr) => Some(
            tokio::net::UdpSocket::bind(addr)
                .await
                .with_context(|| format!("--dns-listen {addr}: cannot bind"))?,
        ),
        None => None,
    };
    let dns_task = async {
        match dns_socket {
            Some(socket) => {
                let upstream = args.dns_upstream.or_else(|| {
                    std::fs::read_to_string("/etc/resolv.conf")
                        .ok()
                        .and_then(|t| ferry_proxy::dns::upstream_from_resolv_conf(&t))
                });
                ferry_proxy::dns::DnsServer {
                    store: store.clone(),
                    domain: args.cluster_domain.clone(),
                    upstream,
                }
                .serve(socket)
                .await
            }
            None => std::future::pending().await,
        }
    };
    let capture_task = async {
        match capture_listener {
            Some(listener) => ferry_proxy::capture::serve(listener, outbound.clone()).await,
            None => std::future::pending().await,
        }
    };
    let rules_task = async {
        match &capture_rules {
            Some((rules, applied)) => rules.follow(store.clone(), applied.clone()).await,
            None => std::future::pending().await,
        }
    };
    let plaintext_task = async {
        match plaintext_listener {
            Some(listener) => {
                ferry_proxy::inbound::PlaintextInbound {
                    node: args.node.clone(),
                    store: store.clone(),
                    tracker: tracker.clone(),
                    telemetry: telemetry.clone(),
                }
                .serve(listener)
                .await
            }
            None => std::future::pending().await,
        }
    };
    let sweeper = {
        let outbound = outbound.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                outbound.load_balancer().sweep(std::time::Instant::now());
            }
        }
    };
    tokio::select! {
        _ = xds.run() => {}
        _ = admin.serve(admin_listener) => {}
        _ = ferry_proxy::socks5::serve(socks_listener, outbound.clone()) => {}
        _ = identity_task => {}
        _ = inbound_task => {}
        _ = sweeper => {}
        _ = capture_task => {}
        _ = rules_task => {}
        _ = plaintext_task => {}
        _ = dns_task => {}
        _ = tracker.clone().run(store.clone()) => {}
        _ = shutdown_signal() => tracing::info!("proxy stopping"),
    }
    if let Some((rules, _)) = capture_rules {
        if let Err(e) = rules.remove() {
            tracing::warn!(error = %e, "removing capture rules failed; the next start repairs them");
        }
    }
    Ok(())
}
