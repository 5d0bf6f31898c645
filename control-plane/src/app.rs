//! Wires the control plane from its [`Config`]: the source, the translator
//! feeding the versioned cache, the mesh CA and the gRPC server, and the
//! metrics endpoint.
//!
//! Nothing is served until the initial load is translated: a proxy
//! resyncing against an empty cache would be told to drop everything it
//! holds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::authn::{Authenticator, TokenReviewer};
use crate::ca::secret::{load_or_create_ca, publish_root};
use crate::ca::{MeshCa, NodeAccounts};
use crate::config::{ClusterCa, Config, Pki, Source};
use crate::metrics::Metrics;
use crate::push::{ConfigCache, ConfigDiscoveryService};
use crate::source::kube::KubeSource;
use crate::source::manifests::ManifestSource;
use crate::source::SourceEvent;
use crate::translate::{Change, Translator};

/// The mesh CA with the server's TLS and how proxies authenticate.
struct MeshPki {
    authority: ferry_pki::Authority,
    tls: tonic::transport::ServerTlsConfig,
    auth: Authenticator,
}

/// A control plane with its initial configuration loaded and its
/// listeners bound, ready to [`run`](App::run).
pub struct App {
    config: Config,
    listener: tokio::net::TcpListener,
    cache: Arc<ConfigCache>,
    accounts: Arc<NodeAccounts>,
    metrics: Arc<Metrics>,
    pki: Option<MeshPki>,
    /// The source; it ends only on failure.
    watch: JoinHandle<anyhow::Result<()>>,
    /// Translates every later batch of the source into the cache.
    translating: JoinHandle<()>,
    metrics_task: JoinHandle<()>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("listen", &self.config.listen)
            .field("revision", &self.cache.revision())
            .finish_non_exhaustive()
    }
}

/// Applies one batch from the source: translated, committed to the cache,
/// followed by the CA's node index, measured.
fn apply(
    translator: &mut Translator,
    batch: Vec<SourceEvent>,
    cache: &ConfigCache,
    accounts: &NodeAccounts,
    metrics: &Metrics,
) -> usize {
    let started = Instant::now();
    let changes: Vec<Change> = translator.apply(batch);
    metrics.translation.observe(started.elapsed().as_secs_f64());
    accounts.update(&changes);
    let changed = changes.len();
    cache.commit(changes);
    metrics.revision.set(cache.revision() as i64);
    changed
}

impl App {
    /// Starts the source, translates its initial load, sets up the mesh CA
    /// and binds the listeners.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let kube_client = match (&config.source, &config.pki) {
            (Source::Kubernetes { .. }, _) | (_, Pki::Cluster(_)) => Some(
                kube::Client::try_default().await.context(
                    "--source kubernetes: Kubernetes client configuration (in-cluster or KUBECONFIG)",
                )?,
            ),
            _ => None,
        };
        let (events_tx, mut events_rx) = mpsc::channel(16);
        let mut watch: JoinHandle<anyhow::Result<()>> = match (&config.source, &kube_client) {
            (
                Source::Manifests {
                    dir,
                    rescan,
                    settle,
                },
                _,
            ) => {
                let (source, rescan, settle) = (ManifestSource::new(dir), *rescan, *settle);
                tokio::spawn(async move { Ok(source.watch(events_tx, rescan, settle).await?) })
            }
            (Source::Kubernetes { batching }, Some(client)) => {
                let source = KubeSource::new(client.clone()).with_batching(*batching);
                tokio::spawn(async move {
                    source.watch(events_tx).await;
                    Ok(())
                })
            }
            (Source::Kubernetes { .. }, None) => anyhow::bail!("--source kubernetes: no client"),
        };

        let cache = ConfigCache::with_log_capacity(config.change_log_entries);
        let metrics = Arc::new(Metrics::new());
        let accounts = NodeAccounts::new();
        let mut translator = Translator::new(config.translate.clone());
        let initial = tokio::select! {
            batch = events_rx.recv() => batch,
            watched = &mut watch => {
                watched.context("source panicked")?.context("source stopped")?;
                None
            }
        };
        let initial = initial.context("the source stopped before the initial load")?;
        apply(&mut translator, initial, &cache, &accounts, &metrics);
        tracing::info!(
            revision = cache.revision(),
            resources = cache.len(),
            "initial configuration loaded"
        );
        let translating = {
            let (cache, accounts, metrics) = (cache.clone(), accounts.clone(), metrics.clone());
            tokio::spawn(async move {
                while let Some(batch) = events_rx.recv().await {
                    let started = Instant::now();
                    let changed = apply(&mut translator, batch, &cache, &accounts, &metrics);
                    tracing::info!(
                        changed,
                        revision = cache.revision(),
                        resources = cache.len(),
                        elapsed_us = started.elapsed().as_micros() as u64,
                        "configuration updated"
                    );
                }
            })
        };

        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("--listen {}: cannot bind", config.listen))?;
        let metrics_listener = tokio::net::TcpListener::bind(config.metrics_listen)
            .await
            .with_context(|| format!("--metrics-listen {}: cannot bind", config.metrics_listen))?;
        let metrics_task =
            tokio::spawn(metrics.clone().serve(metrics_listener, config.admin_limits));
        let pki = match &config.pki {
            Pki::None => {
                tracing::warn!(
                    "no --tls-dir or --ca-secret: serving config in plaintext, no certificates are issued"
                );
                None
            }
            Pki::Files { dir } => Some(files_pki(dir, &config)?),
            Pki::Cluster(ca) => {
                let client = kube_client.as_ref().context("--ca-secret: no client")?;
                Some(cluster_pki(client, ca).await?)
            }
        };
        Ok(Self {
            config,
            listener,
            cache,
            accounts,
            metrics,
            pki,
            watch,
            translating,
            metrics_task,
        })
    }

    /// Serves proxies until a shutdown signal, or until the source fails.
    pub async fn run(self) -> anyhow::Result<()> {
        let App {
            config,
            listener,
            cache,
            accounts,
            metrics,
            pki,
            mut watch,
            mut translating,
            metrics_task,
        } = self;
        tracing::info!(version = ferry_api::build::LONG_VERSION, listen = %listener.local_addr()?, source = ?config.source, "control plane serving");
        let mut builder = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(config.http2_keepalive))
            .http2_keepalive_timeout(Some(config.http2_keepalive_timeout))
            .max_concurrent_streams(config.max_streams_per_connection);
        let board = crate::status::StatusBoard::new();
        let mut discovery = ConfigDiscoveryService::new(cache.clone())
            .with_metrics(metrics.clone())
            .with_max_request_bytes(config.max_request_bytes)
            .with_status_board(board.clone());
        let mut status_auth = Arc::new(Authenticator::None);
        let ca = match pki {
            Some(MeshPki {
                authority,
                tls,
                auth,
            }) => {
                builder = builder
                    .tls_config(tls.timeout(config.tls_handshake_timeout))
                    .context("configuring TLS")?;
                let auth = Arc::new(auth);
                discovery = discovery.with_authenticator(auth.clone());
                status_auth = auth.clone();
                Some(
                    MeshCa::new(
                        Arc::new(authority),
                        accounts.clone(),
                        config.workload_cert_ttl,
                    )
                    .with_authenticator(auth)
                    .with_metrics(metrics)
                    .with_status_board(board.clone()),
                )
            }
            None => None,
        };
        let status = crate::status::MeshStatusService::new(
            board,
            cache,
            status_auth,
            accounts,
            crate::status::Replica {
                name: config.replica_name.clone(),
                started_at: std::time::SystemTime::now(),
                ca: ca.is_some(),
            },
        );
        // SIGTERM: stop accepting, close every proxy stream (they
        // reconnect, to another replica if there is one), let open
        // requests finish within the drain timeout, then exit.
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let discovery = discovery.with_shutdown(stopping.clone());
        let signal = async move {
            ferry_process::shutdown_signal().await;
            tracing::info!("control plane stopping: closing proxy streams");
            let _ = stop.send(true);
        };
        let server = builder
            .add_service(discovery.into_server())
            .add_optional_service(ca.map(MeshCa::into_server))
            .add_service(status.into_server())
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                signal,
            );
        let drain_timeout = config.drain_timeout;
        let mut stopping = stopping;
        let deadline = async move {
            let _ = stopping.wait_for(|stop| *stop).await;
            tokio::time::sleep(drain_timeout).await;
        };
        let outcome = tokio::select! {
            // The translator before the source: when it panics, the source
            // sees its events' receiver gone and ends without an error of
            // its own.
            biased;
            served = server => served.context("config server failed"),
            // It ends cleanly only after the source (its events end there).
            Err(e) = &mut translating => Err(anyhow::anyhow!("the translator failed: {e}")),
            watched = &mut watch => watched
                .context("source panicked")
                .and_then(|w| w.context("source stopped")),
            () = deadline => {
                tracing::warn!(timeout = ?drain_timeout, "drain timeout passed with requests still open: exiting");
                Ok(())
            }
        };
        translating.abort();
        metrics_task.abort();
        watch.abort();
        tracing::info!("control plane stopped");
        outcome
    }
}

/// Warns when the mesh root has less than 30 days left: the certificates
/// it signs end with it (their lifetimes are cut to the root's), so the
/// mesh stops at its expiry unless the CA is rotated before.
fn warn_if_root_expires_soon(authority: &ferry_pki::Authority) {
    const SOON: Duration = Duration::from_secs(30 * 86_400);
    let left = authority
        .not_after()
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    if left < SOON {
        tracing::warn!(
            days_left = left.as_secs() / 86_400,
            "the mesh root CA expires soon: rotate it (workload certificates end with it)"
        );
    }
}

/// The mesh CA and server credential from a `ferry-certs init` folder;
/// proxies present node credentials.
fn files_pki(dir: &std::path::Path, config: &Config) -> anyhow::Result<MeshPki> {
    use ferry_pki::{files, Authority, Credential};
    let authority = Authority::load(dir)
        .with_context(|| format!("--tls-dir {}: loading the mesh CA", dir.display()))?;
    warn_if_root_expires_soon(&authority);
    let server = Credential::load(
        &dir.join(files::CONTROL_PLANE_CERT),
        &dir.join(files::CONTROL_PLANE_KEY),
    )
    .with_context(|| {
        format!(
            "--tls-dir {}: loading the control plane credential",
            dir.display()
        )
    })?;
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            &server.cert_pem,
            &server.key_pem,
        ))
        .client_ca_root(tonic::transport::Certificate::from_pem(
            authority.cert_pem(),
        ));
    let auth = Authenticator::NodeCertificate {
        trust_domain: authority.trust_domain().to_string(),
    };
    tracing::info!(
        trust_domain = authority.trust_domain(),
        max_ttl_seconds = config.workload_cert_ttl.max.as_secs(),
        min_ttl_seconds = config.workload_cert_ttl.min.as_secs(),
        "mesh CA enabled; proxies authenticate with node credentials"
    );
    Ok(MeshPki {
        authority,
        tls,
        auth,
    })
}

/// The mesh CA from its Secret (generated when allowed), the root
/// published for proxies, a serving certificate issued for the server
/// name; proxies present service account tokens.
async fn cluster_pki(client: &kube::Client, ca: &ClusterCa) -> anyhow::Result<MeshPki> {
    let ns = &ca.namespace;
    let authority = load_or_create_ca(
        client,
        ns,
        &ca.secret,
        ca.create,
        &ca.trust_domain,
        ca.generated_lifetime,
    )
    .await
    .context("--ca-secret")?;
    warn_if_root_expires_soon(&authority);
    publish_root(client, ns, &ca.root_configmap, authority.cert_pem())
        .await
        .context("--ca-root-configmap: publishing the CA root")?;
    let server = authority
        .issue_server(
            std::slice::from_ref(&ca.server_name),
            ca.serving_cert_lifetime,
        )
        .context("issuing the control plane's serving certificate")?;
    let tls = tonic::transport::ServerTlsConfig::new().identity(
        tonic::transport::Identity::from_pem(&server.cert_pem, &server.key_pem),
    );
    let auth = Authenticator::ServiceAccountToken(Box::new(TokenReviewer::new(
        client.clone(),
        &ca.token_audience,
        ns,
        &ca.proxy_service_account,
        ca.token_review,
    )));
    tracing::info!(
        trust_domain = authority.trust_domain(),
        server_name = %ca.server_name,
        audience = %ca.token_audience,
        proxies = %format!("{ns}/{}", ca.proxy_service_account),
        "mesh CA from Secret {ns}/{}; proxies authenticate with service account tokens",
        ca.secret
    );
    Ok(MeshPki {
        authority,
        tls,
        auth,
    })
}
