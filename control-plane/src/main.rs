//! `ferry-control-plane`: watches a manifest folder, translates it, and
//! streams per-node deltas to the proxies.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use ferry_api::process::{init_tracing, shutdown_signal, LogFormat};
use ferry_control_plane::ca::{MeshCa, NodeAccounts};
use ferry_control_plane::identity::{
    load_or_create_ca, publish_root, Authenticator, TokenReviewer,
};
use ferry_control_plane::push::{ConfigCache, ConfigDiscoveryService};
use ferry_control_plane::source::kube::KubeSource;
use ferry_control_plane::source::manifests::ManifestSource;
use ferry_control_plane::translate::{TranslateOptions, Translator};
use tokio::sync::mpsc;

/// Where Kubernetes objects come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Source {
    /// A folder of manifests (`--manifests DIR`).
    Manifests,
    /// The Kubernetes API (in-cluster configuration, else KUBECONFIG).
    Kubernetes,
}

#[derive(Debug, Parser)]
#[command(version, about = "Ferry control plane")]
struct Args {
    /// Where Kubernetes objects come from.
    #[arg(long, env = "FERRY_SOURCE", value_enum, default_value = "manifests")]
    source: Source,
    /// Folder of Kubernetes manifests (multi-document YAML), watched for
    /// changes; required with `--source manifests`.
    #[arg(long, env = "FERRY_MANIFESTS", required_if_eq("source", "manifests"))]
    manifests: Option<PathBuf>,
    /// Address of the config stream (gRPC) that proxies connect to.
    #[arg(long, env = "FERRY_LISTEN", default_value = "127.0.0.1:15010")]
    listen: SocketAddr,
    /// Cluster DNS domain.
    #[arg(long, env = "FERRY_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// Whether pods without a `ferry.dev/mesh` label (on them or their namespace) are in the mesh.
    #[arg(long, env = "FERRY_MESH_BY_DEFAULT", default_value_t = true, action = clap::ArgAction::Set)]
    mesh_by_default: bool,
    /// Port of the node proxies' HBONE listener.
    #[arg(long, env = "FERRY_HBONE_PORT", default_value_t = ferry_api::model::HBONE_PORT)]
    hbone_port: u16,
    /// Folder with the mesh PKI (`ferry-certs init`): ca.pem, ca-key.pem,
    /// control-plane.pem, control-plane-key.pem. With it the control plane
    /// serves over mTLS, authenticates proxies by node credential and signs
    /// workload certificates; without it, it serves plaintext config only.
    #[arg(long, env = "FERRY_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// Longest lifetime of a workload certificate, in seconds.
    #[arg(long, env = "FERRY_WORKLOAD_CERT_TTL", default_value_t = 86_400)]
    workload_cert_ttl: u64,
    #[arg(long, env = "FERRY_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Prometheus metrics and readiness (`/metrics`, `/healthz/ready`).
    #[arg(long, env = "FERRY_METRICS_LISTEN", default_value = "127.0.0.1:15014")]
    metrics_listen: SocketAddr,
    /// In a cluster: the Secret (in --namespace) holding the mesh CA
    /// (`ca.pem`, `ca-key.pem`). Proxies then authenticate with service
    /// account tokens (TokenReview) instead of node certificates.
    #[arg(long, env = "FERRY_CA_SECRET", conflicts_with = "tls_dir")]
    ca_secret: Option<String>,
    /// Generate the CA Secret when it is absent (else it must be supplied).
    #[arg(long, env = "FERRY_CA_SECRET_CREATE", default_value_t = true, action = clap::ArgAction::Set)]
    ca_secret_create: bool,
    /// The control plane's namespace (Secret, ConfigMap, proxy service account).
    #[arg(long, env = "FERRY_NAMESPACE", default_value = "ferry-system")]
    namespace: String,
    /// ConfigMap (in --namespace) where the CA root is published for proxies.
    #[arg(long, env = "FERRY_CA_ROOT_CONFIGMAP", default_value = "ferry-ca-root")]
    ca_root_configmap: String,
    /// DNS name proxies use for the control plane (its serving certificate);
    /// default `ferry-control-plane.<namespace>.svc`.
    #[arg(long, env = "FERRY_SERVER_NAME")]
    server_name: Option<String>,
    /// Audience of the proxies' projected service account tokens.
    #[arg(long, env = "FERRY_TOKEN_AUDIENCE", default_value = "ferry")]
    token_audience: String,
    /// The proxies' service account (in --namespace); only its tokens may
    /// speak for a node.
    #[arg(
        long,
        env = "FERRY_PROXY_SERVICE_ACCOUNT",
        default_value = "ferry-proxy"
    )]
    proxy_service_account: String,
    /// Trust domain of a CA generated for --ca-secret.
    #[arg(long, env = "FERRY_TRUST_DOMAIN", default_value = ferry_api::identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_format);
    if let (Source::Manifests, Some(dir)) = (args.source, &args.manifests) {
        anyhow::ensure!(
            dir.is_dir(),
            "--manifests {}: not a readable folder",
            dir.display()
        );
    }
    let options = TranslateOptions {
        cluster_domain: args.cluster_domain.clone(),
        mesh_by_default: args.mesh_by_default,
        hbone_port: args.hbone_port,
    };

    let kube_client = match args.source {
        Source::Kubernetes => Some(kube::Client::try_default().await.context(
            "--source kubernetes: Kubernetes client configuration (in-cluster or KUBECONFIG)",
        )?),
        Source::Manifests => None,
    };
    let cache = ConfigCache::new();
    let metrics = Arc::new(ferry_control_plane::metrics::Metrics::new());
    let (events_tx, mut events_rx) = mpsc::channel(16);
    let mut watch: tokio::task::JoinHandle<anyhow::Result<()>> =
        match (args.source, &args.manifests) {
            (Source::Manifests, Some(dir)) => {
                let source = ManifestSource::new(dir);
                tokio::spawn(async move { Ok(source.watch(events_tx).await?) })
            }
            (Source::Manifests, None) => anyhow::bail!("--source manifests needs --manifests DIR"),
            (Source::Kubernetes, _) => {
                let source = KubeSource::new(
                    kube_client
                        .clone()
                        .context("--source kubernetes: no Kubernetes client")?,
                );
                tokio::spawn(async move {
                    source.watch(events_tx).await;
                    Ok(())
                })
            }
        };

    // Serve nothing until the initial load is translated: a proxy resyncing
    // against an empty cache would be told to drop everything it holds.
    let mut translator = Translator::new(options);
    let initial = tokio::select! {
        batch = events_rx.recv() => batch,
        watched = &mut watch => {
            watched.context("source panicked")?.context("source stopped")?;
            None
        }
    };
    let initial = initial.context("the source stopped before the initial load")?;
    let accounts = NodeAccounts::new();
    let started = std::time::Instant::now();
    let changes = translator.apply(initial);
    metrics.translation.observe(started.elapsed().as_secs_f64());
    accounts.update(&changes);
    cache.commit(changes);
    metrics.revision.set(cache.revision() as i64);
    tracing::info!(
        revision = cache.revision(),
        resources = cache.len(),
        "initial configuration loaded"
    );

    let translating = {
        let cache = Arc::clone(&cache);
        let accounts = Arc::clone(&accounts);
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            while let Some(batch) = events_rx.recv().await {
                let started = std::time::Instant::now();
                let changes = translator.apply(batch);
                metrics.translation.observe(started.elapsed().as_secs_f64());
                accounts.update(&changes);
                let changed = changes.len();
                cache.commit(changes);
                metrics.revision.set(cache.revision() as i64);
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

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, source = ?args.source, "control plane serving");
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)));
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("--metrics-listen {}: cannot bind", args.metrics_listen))?;
    let metrics_task = tokio::spawn(Arc::clone(&metrics).serve(metrics_listener));
    let mut discovery = ConfigDiscoveryService::new(cache).with_metrics(Arc::clone(&metrics));
    // The mesh CA, the server's TLS and how proxies prove their node: from
    // files (the lab), or from the cluster (a Secret and TokenReview).
    let mesh = match (&args.tls_dir, &args.ca_secret) {
        (Some(dir), _) => {
            let authority = ferry_certs::Authority::load(dir)
                .with_context(|| format!("--tls-dir {}: loading the mesh CA", dir.display()))?;
            let server = ferry_certs::Credential::load(
                &dir.join(ferry_certs::files::CONTROL_PLANE_CERT),
                &dir.join(ferry_certs::files::CONTROL_PLANE_KEY),
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
                max_ttl_seconds = args.workload_cert_ttl,
                "mesh CA enabled; proxies authenticate with node credentials"
            );
            Some((authority, tls, auth))
        }
        (None, Some(secret)) => {
            let client = kube_client
                .as_ref()
                .context("--ca-secret needs --source kubernetes")?;
            let ns = &args.namespace;
            let authority = load_or_create_ca(
                client,
                ns,
                secret,
                args.ca_secret_create,
                &args.trust_domain,
            )
            .await
            .context("--ca-secret")?;
            publish_root(client, ns, &args.ca_root_configmap, authority.cert_pem())
                .await
                .context("--ca-root-configmap: publishing the CA root")?;
            let name = args
                .server_name
                .clone()
                .unwrap_or_else(|| format!("ferry-control-plane.{ns}.svc"));
            let server = authority
                .issue_server(
                    std::slice::from_ref(&name),
                    std::time::Duration::from_secs(365 * 86_400),
                )
                .context("issuing the control plane's serving certificate")?;
            let tls = tonic::transport::ServerTlsConfig::new().identity(
                tonic::transport::Identity::from_pem(&server.cert_pem, &server.key_pem),
            );
            let auth = Authenticator::ServiceAccountToken(Box::new(TokenReviewer::new(
                client.clone(),
                &args.token_audience,
                ns,
                &args.proxy_service_account,
            )));
            tracing::info!(
                trust_domain = authority.trust_domain(),
                server_name = %name,
                audience = %args.token_audience,
                proxies = %format!("{ns}/{}", args.proxy_service_account),
                "mesh CA from Secret {ns}/{secret}; proxies authenticate with service account tokens"
            );
            Some((authority, tls, auth))
        }
        (None, None) => {
            tracing::warn!(
                "no --tls-dir or --ca-secret: serving config in plaintext, no certificates are issued"
            );
            None
        }
    };
    let ca = match mesh {
        Some((authority, tls, auth)) => {
            builder = builder.tls_config(tls).context("configuring TLS")?;
            let auth = Arc::new(auth);
            discovery = discovery.with_authenticator(Arc::clone(&auth));
            Some(
                MeshCa::new(
                    Arc::new(authority),
                    accounts,
                    std::time::Duration::from_secs(args.workload_cert_ttl),
                )
                .with_authenticator(auth)
                .with_metrics(Arc::clone(&metrics)),
            )
        }
        None => None,
    };
    let server = builder
        .add_service(discovery.into_server())
        .add_optional_service(ca.map(MeshCa::into_server))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown_signal(),
        );

    tokio::select! {
        served = server => served.context("config server failed")?,
        watched = &mut watch => {
            watched.context("source panicked")?.context("source stopped")?;
        }
    }
    translating.abort();
    metrics_task.abort();
    tracing::info!("control plane stopped");
    Ok(())
}
