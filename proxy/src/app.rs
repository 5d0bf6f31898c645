//! Wiring: every part of the proxy built from one [`Config`], the
//! listeners bound, then [`App::run`] until a shutdown signal.
//!
//! The order matters: mesh credentials first (they decide the trust domain
//! the store names identities in), then the store and the config client,
//! telemetry, the HBONE pool, the outbound path, and finally the
//! listeners, bound before anything is served so that a port in use fails
//! the start with a clear error.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use ferry_core::state::ConfigStore;
use tokio::net::{TcpListener, UdpSocket};

use crate::admin::{Admin, Surface};
use crate::capture::interface::InterfaceSetting;
use crate::capture::returns::ReturnRouting;
use crate::capture::{CaptureRules, ClientAddress, Family};
use crate::config::{Config, Credentials};
use crate::dns::DnsServer;
use crate::handover::{self, Inherited, Offer};
use crate::hbone::pool::PoolTimeouts;
use crate::hbone::{HbonePool, HboneServer};
use crate::identity::token::TokenFile;
use crate::identity::IdentityManager;
use crate::inbound::{Inbound, PlaintextInbound};
use crate::net::transparent::SourceAddresses;
use crate::outbound::Outbound;
use crate::saved::StateDir;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::trace::Tracing;
use crate::telemetry::Telemetry;
use crate::tracker::ConnectionTracker;
use crate::xds::{control_plane_channel, control_plane_endpoints, XdsClient};

/// The TLS settings towards the control plane (trusting `ca_pem`, with the
/// node's client certificate when it has one) and the identity manager that
/// fetches workload certificates from the mesh CA.
fn mesh_credentials(
    config: &Config,
    ca_pem: &str,
    ca_path: &std::path::Path,
    client: Option<tonic::transport::Identity>,
) -> anyhow::Result<(tonic::transport::ClientTlsConfig, Arc<IdentityManager>)> {
    let trust_domain = ferry_pki::ca_trust_domain(ca_pem, ca_path)?;
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem));
    if let Some(identity) = client {
        tls = tls.identity(identity);
    }
    let roots = crate::identity::root_store(ca_pem)?;
    let ca_channel = control_plane_channel(
        control_plane_endpoints(&config.xds, Some(tls.clone())).context("--control-plane")?,
    );
    let identities = IdentityManager::new(
        &config.node,
        trust_domain,
        roots,
        Some(ca_channel),
        config.certificates.clone(),
    );
    Ok((tls, identities))
}

/// Loads the credentials `config` names.
fn credentials(
    config: &Config,
) -> anyhow::Result<Option<(tonic::transport::ClientTlsConfig, Arc<IdentityManager>)>> {
    match &config.credentials {
        Credentials::Files { dir } => {
            let ca_path = dir.join(ferry_pki::files::CA_CERT);
            let ca_pem = ferry_pki::read_pem(&ca_path)
                .with_context(|| format!("--certs {}", dir.display()))?;
            let (cert, key) = ferry_pki::files::node(&config.node);
            let node = ferry_pki::Credential::load(&dir.join(cert), &dir.join(key)).with_context(
                || {
                    format!(
                        "--certs {}: the credential of node {}",
                        dir.display(),
                        config.node
                    )
                },
            )?;
            let identity = tonic::transport::Identity::from_pem(&node.cert_pem, &node.key_pem);
            mesh_credentials(config, &ca_pem, &ca_path, Some(identity)).map(Some)
        }
        Credentials::Token {
            ca_root,
            token_file,
        } => {
            let ca_pem = ferry_pki::read_pem(ca_root)
                .with_context(|| format!("--ca-root {}", ca_root.display()))?;
            let (tls, identities) = mesh_credentials(config, &ca_pem, ca_root, None)?;
            identities.use_token(TokenFile::new(token_file));
            Ok(Some((tls, identities)))
        }
        Credentials::None => {
            tracing::warn!(
                "no --certs or --ca-root: no mesh identity, so no HBONE; config and direct connections only"
            );
            Ok(None)
        }
    }
}

/// The listener `name` handed over by the proxy this one replaces, else a
/// new one bound at `addr`.
async fn listen(
    inherited: &mut Inherited,
    name: &str,
    addr: std::net::SocketAddr,
    flag: &str,
) -> anyhow::Result<TcpListener> {
    if let Some(listener) = inherited.tcp(name, addr) {
        listener.set_nonblocking(true)?;
        return Ok(TcpListener::from_std(listener)?);
    }
    bind(addr, flag).await
}

async fn bind(addr: std::net::SocketAddr, flag: &str) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        // `[::]:PORT` on a node with IPv6 turned off: IPv4 only, said once.
        Err(e) if addr.ip() == std::net::Ipv6Addr::UNSPECIFIED => {
            let v4 = std::net::SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, addr.port()));
            let listener = TcpListener::bind(v4)
                .await
                .with_context(|| format!("--{flag} {addr} (and {v4}): cannot bind"))?;
            tracing::warn!(flag, %addr, error = %e, "no IPv6 on this node: listening on {v4}, IPv4 only");
            Ok(listener)
        }
        other => other.with_context(|| format!("--{flag} {addr}: cannot bind")),
    }
}

/// Whether a listener is bound to an IPv6 address (and so takes IPv6).
fn bound_v6(listener: Option<&TcpListener>) -> bool {
    listener
        .and_then(|l| l.local_addr().ok())
        .is_some_and(|a| a.is_ipv6())
}

/// A built proxy, its listeners bound.
#[derive(Debug)]
pub struct App {
    config: Config,
    store: Arc<ConfigStore>,
    xds: XdsClient,
    identities: Option<Arc<IdentityManager>>,
    tracker: Arc<ConnectionTracker>,
    outbound: Arc<Outbound>,
    admin: (Arc<Admin>, TcpListener),
    /// The metrics and health listener, if any.
    stats: Option<TcpListener>,
    /// The line to the proxy this one replaces, if any.
    inherited: Inherited,
    /// The listeners offered to a successor, and the socket it asks on.
    handover: Option<(Offer, tokio::net::UnixListener)>,
    socks5: TcpListener,
    hbone: Option<(HboneServer, TcpListener)>,
    capture: Option<TcpListener>,
    capture_rules: Option<(Arc<CaptureRules>, Vec<String>, Option<ReturnRouting>)>,
    plaintext: Option<(PlaintextInbound, TcpListener)>,
    dns: Option<(DnsServer, UdpSocket, TcpListener)>,
    saved: Option<Arc<StateDir>>,
    /// Set on shutdown: HBONE connections are sent GOAWAY.
    stopping: tokio::sync::watch::Sender<bool>,
}

/// Applies the configuration saved in `dir`, if any, to the empty store.
fn restore(dir: &StateDir, store: &ConfigStore) {
    match dir.load_config() {
        Ok(Some(saved)) => {
            let revision = saved.revision;
            let report = store.apply(saved);
            for rejected in &report.rejected {
                tracing::warn!(resource = %rejected.key, reason = %rejected.message, "saved resource skipped");
            }
            tracing::info!(
                revision,
                resources = report.applied,
                "started from the saved configuration; the control plane will bring it up to date"
            );
        }
        Ok(None) => tracing::info!(
            "no saved configuration: refusing connections until the control plane answers"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "the saved configuration is unusable: refusing connections until the control plane answers")
        }
    }
}

impl App {
    /// Builds every part and binds every listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        // Mesh credentials: the node credential (or, in a cluster, a service
        // account token) authenticates to the control plane (config stream
        // and CA); workload certificates carry HBONE.
        let credentials = credentials(&config)?;
        let (tls, identities) = match credentials {
            Some((tls, identities)) => (Some(tls), Some(identities)),
            None => (None, None),
        };
        let trust_domain = identities
            .as_ref()
            .map_or(ferry_api::identity::DEFAULT_TRUST_DOMAIN.to_string(), |i| {
                i.trust_domain().to_string()
            });
        let store = Arc::new(ConfigStore::for_trust_domain(&trust_domain));
        // The last good configuration and certificates, when kept: a
        // restart while the control plane is away goes on enforcing
        // policy and presenting identities (without them, it fails
        // closed until the control plane answers).
        let saved = match &config.state {
            Some(state) => {
                let dir = Arc::new(
                    StateDir::open(&state.dir, &config.node)
                        .with_context(|| format!("--state-dir {}", state.dir.display()))?,
                );
                restore(&dir, &store);
                if let Some(identities) = &identities {
                    identities.use_state_dir(dir.clone());
                }
                Some(dir)
            }
            None => None,
        };
        let endpoints = control_plane_endpoints(&config.xds, tls).context("--control-plane")?;
        let token = match &config.credentials {
            Credentials::Token { token_file, .. } => Some(TokenFile::new(token_file)),
            _ => None,
        };
        let xds = XdsClient::new(endpoints, &config.node, store.clone(), config.xds.clone())
            .with_token(token);

        let metrics = if config.istio_metrics {
            Metrics::new().with_istio()
        } else {
            Metrics::new()
        };
        // Telemetry never stops the data path: a tracing setting that
        // cannot be honoured is logged once and tracing is off.
        let tracing_pipeline = match Tracing::from_env(
            &config.node,
            metrics.spans_exported.clone(),
            metrics.spans_dropped.clone(),
        ) {
            Ok(pipeline) => pipeline,
            Err(e) => {
                tracing::warn!(error = %e, "OpenTelemetry (OTEL_* variables) cannot be honoured: tracing is off");
                None
            }
        };
        if tracing_pipeline.is_some() {
            tracing::info!("exporting connection spans over OTLP");
        }
        let telemetry = Telemetry::new(
            metrics,
            tracing_pipeline,
            config.access_log_rate,
            config.flow_history,
        );
        let pool = identities.as_ref().map(|i| {
            Arc::new(HbonePool::new(
                i.clone(),
                config.h2,
                PoolTimeouts {
                    connect: config.timeouts.connect,
                    handshake: config.timeouts.tls_handshake,
                    certificate: config.timeouts.certificate_wait,
                    keepalive_interval: config.timeouts.hbone_keepalive_interval,
                    keepalive_timeout: config.timeouts.hbone_keepalive_timeout,
                    idle: config.timeouts.hbone_pool_idle,
                },
            ))
        });
        let tracker = ConnectionTracker::new();
        // Whether servers see their clients' addresses: switched on once
        // the reply routing is installed (with the capture rules below).
        let sources = Arc::new(SourceAddresses::new(
            telemetry.metrics.client_address_fallbacks.clone(),
        ));
        // One resolver for names outside the mesh: the DNS forwarder's and
        // the outbound path's.
        let resolver = crate::dns::upstream_resolver(&config.dns);
        let outbound = Arc::new(
            Outbound::new(
                &config.node,
                trust_domain,
                store.clone(),
                pool.clone(),
                tracker.clone(),
                telemetry.clone(),
                config.timeouts.connect,
            )
            .with_resolver(resolver.clone())
            .with_sources(sources.clone()),
        );
        let inbound = Arc::new(Inbound {
            node: config.node.clone(),
            store: store.clone(),
            tracker: tracker.clone(),
            telemetry: telemetry.clone(),
            connect_timeout: config.timeouts.connect,
            sources: sources.clone(),
        });

        // A proxy already running on this node (an upgrade, a restart)
        // hands its listening sockets over: no connection is refused or
        // accepted unprotected while the process changes (`handover`).
        let mut inherited = match &config.state {
            Some(state) => handover::take_over(&state.dir.join(handover::SOCKET), HANDOVER_TIMEOUT)
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "taking over from the running proxy failed: binding anew");
                    Inherited::default()
                }),
            None => Inherited::default(),
        };
        let listeners = &config.listeners;
        // Tells the HBONE listener's connections that the proxy stops.
        let stopping = tokio::sync::watch::Sender::new(false);
        let i = &mut inherited;
        let admin_listener = listen(i, "admin", listeners.admin, "admin").await?;
        let stats = match listeners.metrics {
            Some(addr) => Some(listen(i, "metrics", addr, "metrics-listen").await?),
            None => None,
        };
        let socks5 = listen(i, "socks5", listeners.socks5, "socks5").await?;
        let hbone = match &identities {
            Some(identities) => Some((
                HboneServer {
                    tls: Arc::new(crate::identity::tls::server_config(identities.clone())?),
                    settings: config.h2,
                    handshake_timeout: config.timeouts.tls_handshake,
                    idle_timeout: config.timeouts.hbone_idle,
                    keepalive_interval: config.timeouts.hbone_keepalive_interval,
                    keepalive_timeout: config.timeouts.hbone_keepalive_timeout,
                    stopping: stopping.subscribe(),
                    inbound: inbound.clone(),
                },
                listen(i, "hbone", listeners.hbone, "hbone").await?,
            )),
            None => None,
        };
        let capture = match listeners.capture {
            Some(addr) => Some(listen(i, "capture", addr, "capture-listen").await?),
            None => None,
        };
        let plaintext = match listeners.inbound_plaintext {
            Some(addr) => Some((
                PlaintextInbound {
                    inbound: inbound.clone(),
                },
                listen(i, "inbound-plaintext", addr, "inbound-plaintext-listen").await?,
            )),
            None => None,
        };
        let dns = match listeners.dns {
            Some(addr) => {
                let udp = match i.udp("dns-udp", addr) {
                    Some(udp) => {
                        udp.set_nonblocking(true)?;
                        UdpSocket::from_std(udp)?
                    }
                    None => UdpSocket::bind(addr)
                        .await
                        .with_context(|| format!("--dns-listen {addr}: cannot bind (UDP)"))?,
                };
                let tcp = listen(i, "dns-tcp", addr, "dns-listen").await?;
                Some((
                    DnsServer::new(store.clone(), &config.dns, resolver),
                    udp,
                    tcp,
                ))
            }
            None => None,
        };
        let capture_rules = match (&config.capture.interface, listeners.capture) {
            (Some(setting), Some(addr)) => {
                if let InterfaceSetting::Named(name) = setting {
                    // Not fatal: a bridge CNI creates its bridge with the
                    // node's first pod; the routes to the pods are checked
                    // once they are known.
                    if !crate::capture::interface::present(name) {
                        tracing::warn!(interface = %name, "--capture-interface: no such interface on this node (yet); pods behind other interfaces are reported once known");
                    }
                }
                let mut rules = CaptureRules {
                    node: config.node.clone(),
                    setting: setting.clone(),
                    interface: CaptureRules::interface_for(setting),
                    capture_port: addr.port(),
                    inbound_port: listeners.inbound_plaintext.map(|a| a.port()),
                    hbone_port: listeners.hbone.port(),
                    // An IPv4 listener cannot take redirected IPv6
                    // connections: IPv6 is captured only when every
                    // listener can (as bound: `[::]` falls back to IPv4
                    // on a node without IPv6).
                    families: if bound_v6(capture.as_ref())
                        && plaintext.as_ref().is_none_or(|(_, l)| bound_v6(Some(l)))
                    {
                        vec![Family::V4, Family::V6]
                    } else {
                        vec![Family::V4]
                    },
                    kube_proxy_replacement: config.capture.kube_proxy_replacement,
                    backend: config.capture.iptables_backend.resolve(),
                    recheck: config.capture.recheck,
                    outside: telemetry.metrics.capture_pods_outside_interface.clone(),
                    shared_subnets: sources.shared_subnets.clone(),
                };
                let state = store.snapshot();
                rules.install(&state).context("installing capture rules")?;
                let applied = rules.rendered(&state);
                let returns = match config.capture.client_address {
                    ClientAddress::Keep => {
                        let returns = ReturnRouting {
                            mark: config.capture.client_address_mark.0,
                            mask: config.capture.client_address_mark.1,
                            table: config.capture.client_address_table,
                            backend: rules.backend,
                            families: rules.families.clone(),
                        };
                        match returns.install() {
                            Ok(()) => {
                                sources.keep(returns.mark);
                                Some(returns)
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot route replies to connections made from clients' addresses: servers see the node's address");
                                // What went in before the failure (one
                                // family, some chains) is not left behind.
                                returns.remove();
                                sources.unavailable();
                                None
                            }
                        }
                    }
                    ClientAddress::Node => None,
                };
                Some((Arc::new(rules), applied, returns))
            }
            _ => None,
        };
        // What a successor will be handed, and where it asks.
        let handover = match &config.state {
            Some(state) => {
                let mut offer = Offer::default();
                offer.add("admin", &admin_listener)?;
                if let Some(l) = &stats {
                    offer.add("metrics", l)?;
                }
                offer.add("socks5", &socks5)?;
                if let Some((_, l)) = &hbone {
                    offer.add("hbone", l)?;
                }
                if let Some(l) = &capture {
                    offer.add("capture", l)?;
                }
                if let Some((_, l)) = &plaintext {
                    offer.add("inbound-plaintext", l)?;
                }
                if let Some((_, udp, tcp)) = &dns {
                    offer.add("dns-udp", udp)?;
                    offer.add("dns-tcp", tcp)?;
                }
                let path = state.dir.join(handover::SOCKET);
                let socket = handover::bind(&path).context("the handover socket")?;
                Some((offer, socket))
            }
            None => None,
        };
        let admin = Admin {
            node: config.node.clone(),
            store: store.clone(),
            xds: xds.clone(),
            identities: identities.clone(),
            pool,
            tracker: tracker.clone(),
            telemetry,
            settings: Arc::new(serde_json::to_value(&config).context("the settings as JSON")?),
        };
        Ok(Self {
            config,
            store,
            xds,
            identities,
            tracker,
            outbound,
            admin: (Arc::new(admin), admin_listener),
            stats,
            socks5,
            hbone,
            capture,
            capture_rules,
            plaintext,
            dns,
            saved,
            stopping,
            inherited,
            handover,
        })
    }

    /// Serves until a shutdown signal, then removes the capture rules.
    ///
    /// Each long-running part (the control-plane stream, every listener,
    /// the identity and capture-rule keepers, the signal) is a task of its
    /// own: a wake-up polls only the part it is for, and each is polled on
    /// a small stack frame of its own (one `select!` over all of them was
    /// one function with a 170 KiB frame, and every accepted connection
    /// polled all fifteen). Serving ends when the first of them ends.
    pub async fn run(self) -> anyhow::Result<()> {
        let config = &self.config;
        tracing::info!(version = ferry_api::build::LONG_VERSION, node = %config.node, admin = %config.listeners.admin, socks5 = %config.listeners.socks5, hbone = %config.listeners.hbone, control_plane = %config.xds.urls.join(","), mtls = self.identities.is_some(), "proxy starting");
        let store = self.store.clone();
        let mut services = Services::default();
        let connects = self.xds.connects();
        let xds = self.xds;
        services.spawn(Service::ControlPlane, move || xds.run());
        let mut inherited = self.inherited;
        let mut ended = None;
        if inherited.from_predecessor() && !store.is_ready() {
            // Taking over with no saved configuration (the predecessor had
            // not saved it yet): the predecessor goes on serving until the
            // control plane has configured this process, which accepts
            // nothing before (its listener tasks have not started), so no
            // connection meets a proxy that would refuse it.
            let mut changes = store.subscribe();
            let configured = async {
                while !store.is_ready() {
                    if changes.changed().await.is_err() {
                        return;
                    }
                }
            };
            tokio::select! {
                first = services.first_ended() => ended = Some(first),
                _ = configured => tracing::info!("configured by the control plane: taking over"),
                // Shorter than the predecessor waits for `SERVING`.
                _ = tokio::time::sleep(HANDOVER_TIMEOUT * 4) => {
                    tracing::warn!("no configuration yet: taking over anyway (failing closed until it comes)");
                }
            }
        }
        // Every listener is served from here on: the proxy this one
        // replaces (if any) stops accepting and drains.
        inherited.serving();
        let (admin, admin_listener) = self.admin;
        let limits = config.admin_limits;
        let admin_too = admin.clone();
        services.spawn(Service::Admin, move || {
            admin_too.serve(admin_listener, Surface::Admin, limits)
        });
        if let Some(listener) = self.stats {
            services.spawn(Service::Stats, move || {
                admin.serve(listener, Surface::Stats, limits)
            });
        }
        let (socks5, outbound) = (self.socks5, self.outbound.clone());
        let handshake = config.timeouts.socks5_handshake;
        services.spawn(Service::Socks5, move || {
            crate::outbound::socks5::serve(socks5, outbound, handshake)
        });
        if let Some(identities) = self.identities {
            let store = store.clone();
            services.spawn(Service::Identity, move || identities.run(store, connects));
        }
        if let Some((dir, settings)) = self.saved.zip(config.state.as_ref()) {
            let (store, settle) = (store.clone(), settings.save_settle);
            services.spawn(Service::Save, move || dir.follow(store, settle));
        }
        if let Some((server, listener)) = self.hbone {
            services.spawn(Service::Hbone, move || server.serve(listener));
        }
        let outbound = self.outbound.clone();
        let every = config.affinity_sweep;
        services.spawn(Service::AffinitySweep, move || async move {
            loop {
                tokio::time::sleep(every).await;
                outbound.load_balancer().sweep(std::time::Instant::now());
            }
        });
        if let Some(listener) = self.capture {
            let outbound = self.outbound.clone();
            services.spawn(Service::Capture, move || {
                crate::capture::serve(listener, outbound)
            });
        }
        if let Some((rules, applied, _)) = &self.capture_rules {
            let (rules, applied, store) = (rules.clone(), applied.clone(), store.clone());
            services.spawn(Service::CaptureRules, move || async move {
                rules.follow(store, applied).await
            });
        }
        if let Some((inbound, listener)) = self.plaintext {
            services.spawn(Service::Plaintext, move || inbound.serve(listener));
        }
        if let Some((server, udp, tcp)) = self.dns {
            services.spawn(Service::Dns, move || server.serve(udp, tcp));
        }
        if let Some((offer, socket)) = self.handover {
            services.spawn(Service::Handover, move || {
                offer.serve(socket, HANDOVER_TIMEOUT)
            });
        }
        let tracker = self.tracker.clone();
        services.spawn(Service::Tracker, move || tracker.run(store));
        services.spawn(Service::Signal, ferry_process::shutdown_signal);
        let ended = match ended {
            Some(ended) => ended,
            None => services.first_ended().await,
        };
        match &ended {
            Ok(Service::Handover) => {
                tracing::info!("a successor serves on this node: no longer accepting; draining");
            }
            Ok(Service::Signal) => tracing::info!("proxy stopping"),
            Ok(service) => tracing::info!(task = ?service, "a serving task ended: proxy stopping"),
            Err(e) => tracing::error!(error = %e, "a serving task failed: proxy stopping"),
        }
        let handed_over = matches!(ended, Ok(Service::Handover));
        // The listeners are closed (their tasks are gone); connections
        // already open run in their own tasks: peers are told to open new
        // streams elsewhere (GOAWAY), and what is open may finish, up to
        // the drain timeout.
        services.stop().await;
        self.stopping.send_replace(true);
        drain(&self.tracker, config.drain_timeout).await;
        // The successor keeps the rules; removed only when no one takes
        // over (stopped for good).
        if handed_over {
            tracing::info!("handed over: capture rules left to the successor");
        } else if let Some((rules, _, returns)) = &self.capture_rules {
            if let Some(returns) = returns {
                returns.remove();
            }
            if let Err(e) = rules.remove() {
                tracing::warn!(error = %e, "removing capture rules failed; the next start repairs them");
            }
        }
        ended
            .map(drop)
            .map_err(|e| anyhow::anyhow!(e).context("a serving task failed"))
    }
}

/// The proxy's long-running parts, each a task of its own
/// ([`App::run`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    ControlPlane,
    Handover,
    Admin,
    Stats,
    Socks5,
    Identity,
    Save,
    Hbone,
    AffinitySweep,
    Capture,
    CaptureRules,
    Plaintext,
    Dns,
    Tracker,
    Signal,
}

/// The tasks of [`App::run`]; dropping it aborts them.
#[derive(Debug, Default)]
struct Services(tokio::task::JoinSet<Service>);

impl Services {
    /// Spawns the future `task` makes. It is made here, not in
    /// [`App::run`]: each is built in this frame and moved to the heap
    /// before the next is made, so `run` does not hold all of them on its
    /// stack at once.
    #[inline(never)]
    fn spawn<F>(&mut self, service: Service, task: impl FnOnce() -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let task = task();
        self.0.spawn(async move {
            task.await;
            service
        });
    }

    /// Waits for the first task to end: which one it was, or why it
    /// failed (a panic). The signal task never leaves the set empty; an
    /// empty set is taken as the signal.
    async fn first_ended(&mut self) -> Result<Service, tokio::task::JoinError> {
        self.0.join_next().await.unwrap_or(Ok(Service::Signal))
    }

    /// Aborts every task still running and waits until each is gone (its
    /// listener closed).
    async fn stop(&mut self) {
        self.0.shutdown().await;
    }
}

/// How long each step of a handover may take (the successor's build, up
/// to `SERVING`, may take six times this).
const HANDOVER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits until no connection is open (tracked, or accepted and still being
/// set up), or `timeout` has passed.
async fn drain(tracker: &ConnectionTracker, timeout: std::time::Duration) {
    let open = || tracker.open_connections() + ferry_process::accept::in_flight();
    if open() == 0 {
        return;
    }
    tracing::info!(open = open(), timeout = ?timeout, "draining open connections");
    let deadline = tokio::time::Instant::now() + timeout;
    while open() > 0 {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                open = tracker.open_connections(),
                accepted = ferry_process::accept::in_flight(),
                "drain timeout: closing the connections still open"
            );
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tracing::info!("every connection finished");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drops a flag when dropped: tells whether a task's future is gone.
    struct Dropped(Arc<std::sync::atomic::AtomicBool>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn the_first_task_to_end_is_named_and_the_others_are_gone_after_stop() {
        let mut services = Services::default();
        let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let guard = Dropped(gone.clone());
        services.spawn(Service::Admin, move || async move {
            let _guard = guard;
            std::future::pending::<()>().await
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        services.spawn(Service::Signal, move || async move {
            let _ = rx.await;
        });
        tx.send(()).ok();
        assert_eq!(services.first_ended().await.ok(), Some(Service::Signal));
        assert!(!gone.load(std::sync::atomic::Ordering::SeqCst));
        services.stop().await;
        assert!(gone.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_panicking_task_is_reported_as_a_failure() {
        let mut services = Services::default();
        services.spawn(Service::Admin, std::future::pending::<()>);
        services.spawn(Service::Dns, || async { panic!("DNS task failed") });
        let ended = services.first_ended().await;
        assert!(ended.is_err_and(|e| e.is_panic()));
        services.stop().await;
    }

    #[tokio::test]
    async fn an_empty_set_ends_as_the_signal_would() {
        let mut services = Services::default();
        assert_eq!(services.first_ended().await.ok(), Some(Service::Signal));
    }
}
