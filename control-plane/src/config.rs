//! The control plane's configuration: every flag (each with an environment
//! variable), and the [`Config`] built from them, in which every timeout
//! and limit is a named, documented field. [`crate::app`] wires the control
//! plane from a `Config`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ferry_process::admin::{AdminFlags, AdminLimits};
use ferry_process::{parse_duration as duration, LogFormat};

use crate::authn::ReviewLimits;
use crate::ca::TtlBounds;
use crate::source::kube::Batching;
use crate::source::manifests::Settle;
use crate::translate::TranslateOptions;

/// Where Kubernetes objects come from (`--source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceKind {
    /// A folder of manifests (`--manifests DIR`).
    Manifests,
    /// The Kubernetes API (in-cluster configuration, else KUBECONFIG).
    Kubernetes,
}

/// The command line (and environment) of `ferry-control-plane`.
#[derive(Debug, Clone, Parser)]
#[command(version = ferry_api::build::LONG_VERSION, about = "Ferry control plane")]
pub struct Args {
    /// Where Kubernetes objects come from.
    #[arg(long, env = "FERRY_SOURCE", value_enum, default_value = "manifests")]
    pub source: SourceKind,
    /// Folder of Kubernetes manifests (multi-document YAML), watched for
    /// changes; required with `--source manifests`.
    #[arg(long, env = "FERRY_MANIFESTS", required_if_eq("source", "manifests"))]
    pub manifests: Option<PathBuf>,
    /// How often the manifest folder is read again even without a change
    /// notification (some file systems send none).
    #[arg(long, env = "FERRY_MANIFEST_RESCAN", default_value = "2s", value_parser = duration)]
    pub manifest_rescan: Duration,
    /// A changed manifest file is read once it has not changed for this
    /// long (it may still be being written).
    #[arg(long, env = "FERRY_MANIFEST_SETTLE", default_value = "100ms", value_parser = duration)]
    pub manifest_settle: Duration,
    /// A manifest file that held objects and is now empty is taken as
    /// emptied only after staying empty this long (an in-place edit
    /// truncates first, then writes).
    #[arg(long, env = "FERRY_MANIFEST_EMPTIED_AFTER", default_value = "2s", value_parser = duration)]
    pub manifest_emptied_after: Duration,
    /// Address of the config stream (gRPC) that proxies connect to.
    #[arg(long, env = "FERRY_LISTEN", default_value = "127.0.0.1:15010")]
    pub listen: SocketAddr,
    /// HTTP/2 keepalive PING interval on proxies' connections.
    #[arg(long, env = "FERRY_HTTP2_KEEPALIVE", default_value = "10s", value_parser = duration)]
    pub http2_keepalive: Duration,
    /// How long an unanswered keepalive PING may wait before the proxy's
    /// connection is closed.
    #[arg(long, env = "FERRY_HTTP2_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = duration)]
    pub http2_keepalive_timeout: Duration,
    /// Largest message accepted from a proxy, in bytes (its first request
    /// lists every resource it holds).
    #[arg(long, env = "FERRY_MAX_REQUEST_BYTES", default_value_t = 64 << 20)]
    pub max_request_bytes: usize,
    /// Entries of the change log; a proxy further behind is compared in
    /// full instead.
    #[arg(long, env = "FERRY_CHANGE_LOG_ENTRIES", default_value_t = crate::push::LOG_CAPACITY)]
    pub change_log_entries: usize,
    /// `--source kubernetes`: watch events arriving within this window
    /// are translated together...
    #[arg(long, env = "FERRY_KUBE_BATCH_WINDOW", default_value = "50ms", value_parser = duration)]
    pub kube_batch_window: Duration,
    /// ...up to this many.
    #[arg(long, env = "FERRY_KUBE_BATCH_MAX", default_value_t = 2_000)]
    pub kube_batch_max: usize,
    /// Longest a client may take to complete its TLS handshake.
    #[arg(long, env = "FERRY_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub tls_handshake_timeout: Duration,
    /// Concurrent HTTP/2 streams per client connection (a proxy needs its
    /// config stream and a few certificate requests).
    #[arg(long, env = "FERRY_MAX_STREAMS_PER_CONNECTION", default_value_t = 32)]
    pub max_streams_per_connection: u32,
    /// On SIGTERM: how long open requests may take to finish after the
    /// proxies' streams are closed, before the process exits regardless.
    #[arg(long, env = "FERRY_DRAIN_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub drain_timeout: Duration,
    /// Cluster DNS domain.
    #[arg(long, env = "FERRY_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Whether pods without a `ferry.dev/mesh` label (on them or their namespace) are in the mesh.
    #[arg(long, env = "FERRY_MESH_BY_DEFAULT", default_value_t = true, action = clap::ArgAction::Set)]
    pub mesh_by_default: bool,
    /// Port of the node proxies' HBONE listener.
    #[arg(long, env = "FERRY_HBONE_PORT", default_value_t = ferry_api::model::HBONE_PORT)]
    pub hbone_port: u16,
    /// Folder with the mesh PKI (`ferry-certs init`): ca.pem, ca-key.pem,
    /// control-plane.pem, control-plane-key.pem. With it the control plane
    /// serves over mTLS, authenticates proxies by node credential and signs
    /// workload certificates; without it, it serves plaintext config only.
    #[arg(long, env = "FERRY_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Longest lifetime of a workload certificate, in seconds.
    #[arg(long, env = "FERRY_WORKLOAD_CERT_TTL", default_value_t = 86_400)]
    pub workload_cert_ttl: u64,
    /// Shortest lifetime of a workload certificate a proxy may ask for;
    /// shorter requests are refused.
    #[arg(long, env = "FERRY_WORKLOAD_CERT_MIN_TTL", default_value = "60s", value_parser = duration)]
    pub workload_cert_min_ttl: Duration,
    #[arg(long, env = "FERRY_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// How this replica names itself in the status API (`ferryctl
    /// status`); the chart passes the pod's name. Default: the host name.
    #[arg(long, env = "FERRY_REPLICA_NAME")]
    pub replica_name: Option<String>,
    /// Prometheus metrics and readiness (`/metrics`, `/healthz/ready`).
    #[arg(long, env = "FERRY_METRICS_LISTEN", default_value = "127.0.0.1:15014")]
    pub metrics_listen: SocketAddr,
    #[command(flatten)]
    pub admin_flags: AdminFlags,
    /// In a cluster: the Secret (in --namespace) holding the mesh CA
    /// (`ca.pem`, `ca-key.pem`). Proxies then authenticate with service
    /// account tokens (TokenReview) instead of node certificates.
    #[arg(long, env = "FERRY_CA_SECRET", conflicts_with = "tls_dir")]
    pub ca_secret: Option<String>,
    /// Generate the CA Secret when it is absent (else it must be supplied).
    #[arg(long, env = "FERRY_CA_SECRET_CREATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub ca_secret_create: bool,
    /// The control plane's namespace (Secret, ConfigMap, proxy service account).
    #[arg(long, env = "FERRY_NAMESPACE", default_value = "ferry-system")]
    pub namespace: String,
    /// ConfigMap (in --namespace) where the CA root is published for proxies.
    #[arg(long, env = "FERRY_CA_ROOT_CONFIGMAP", default_value = "ferry-ca-root")]
    pub ca_root_configmap: String,
    /// DNS name proxies use for the control plane (its serving certificate);
    /// default `ferry-control-plane.<namespace>.svc`.
    #[arg(long, env = "FERRY_SERVER_NAME")]
    pub server_name: Option<String>,
    /// Lifetime of the serving certificate issued at start with --ca-secret.
    #[arg(long, env = "FERRY_SERVING_CERT_LIFETIME", default_value = "365d", value_parser = duration)]
    pub serving_cert_lifetime: Duration,
    /// Audience of the proxies' projected service account tokens.
    #[arg(long, env = "FERRY_TOKEN_AUDIENCE", default_value = "ferry")]
    pub token_audience: String,
    /// The proxies' service account (in --namespace); only its tokens may
    /// speak for a node.
    #[arg(
        long,
        env = "FERRY_PROXY_SERVICE_ACCOUNT",
        default_value = "ferry-proxy"
    )]
    pub proxy_service_account: String,
    /// How long an accepted token is trusted before it is reviewed again.
    #[arg(long, env = "FERRY_TOKEN_CACHE", default_value = "60s", value_parser = duration)]
    pub token_cache: Duration,
    /// How long a refused token is refused before it is reviewed again.
    #[arg(long, env = "FERRY_TOKEN_REFUSAL_CACHE", default_value = "10s", value_parser = duration)]
    pub token_refusal_cache: Duration,
    /// TokenReviews in flight at most (unknown tokens cannot flood the API server).
    #[arg(long, env = "FERRY_TOKEN_REVIEWS", default_value_t = 8)]
    pub token_reviews: usize,
    /// Lifetime of a CA generated for --ca-secret.
    #[arg(long, env = "FERRY_GENERATED_CA_LIFETIME", default_value = "3650d", value_parser = duration)]
    pub generated_ca_lifetime: Duration,
    /// Trust domain of a CA generated for --ca-secret.
    #[arg(long, env = "FERRY_TRUST_DOMAIN", default_value = ferry_api::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
}

/// Where Kubernetes objects come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A folder of manifests, watched, and read again every `rescan`;
    /// changed files are read once settled.
    Manifests {
        dir: PathBuf,
        rescan: Duration,
        settle: Settle,
    },
    /// The Kubernetes API, its events translated in batches.
    Kubernetes { batching: Batching },
}

/// The mesh CA in a cluster: its Secret, where its root is published, and
/// how proxies authenticate (service account tokens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterCa {
    /// The control plane's namespace.
    pub namespace: String,
    /// Secret with `ca.pem` and `ca-key.pem`.
    pub secret: String,
    /// Generate the Secret when it is absent.
    pub create: bool,
    /// Trust domain of a generated CA.
    pub trust_domain: String,
    /// Lifetime of a generated CA.
    pub generated_lifetime: Duration,
    /// ConfigMap the root is published in.
    pub root_configmap: String,
    /// The name in the serving certificate.
    pub server_name: String,
    /// Lifetime of the serving certificate issued at start.
    pub serving_cert_lifetime: Duration,
    /// Audience of the proxies' tokens.
    pub token_audience: String,
    /// The proxies' service account (in `namespace`).
    pub proxy_service_account: String,
    pub token_review: ReviewLimits,
}

/// The mesh CA, the server's TLS and how proxies prove their node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pki {
    /// Plaintext config, no certificates: for trying things on loopback.
    None,
    /// A `ferry-certs init` folder; proxies present node credentials.
    Files { dir: PathBuf },
    /// A Secret in the cluster; proxies present service account tokens.
    Cluster(Box<ClusterCa>),
}

/// Everything the control plane runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: Source,
    /// The config stream and the CA (gRPC).
    pub listen: SocketAddr,
    /// `/metrics` and `/healthz/ready`.
    pub metrics_listen: SocketAddr,
    /// What one client of `metrics_listen` may hold.
    pub admin_limits: AdminLimits,
    /// HTTP/2 keepalive PING interval on proxies' connections...
    pub http2_keepalive: Duration,
    /// ...and how long its answer may take.
    pub http2_keepalive_timeout: Duration,
    /// Largest message accepted from a proxy.
    pub max_request_bytes: usize,
    /// Entries of the change log.
    pub change_log_entries: usize,
    /// A client's TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Concurrent streams per client connection.
    pub max_streams_per_connection: u32,
    /// On SIGTERM: the longest wait for open requests after the streams
    /// are closed.
    pub drain_timeout: Duration,
    pub translate: TranslateOptions,
    pub pki: Pki,
    /// Lifetimes of workload certificates.
    pub workload_cert_ttl: TtlBounds,
    pub log_format: LogFormat,
    /// This replica's name in the status API.
    pub replica_name: String,
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
        let invalid = |flag, message: String| ConfigError { flag, message };
        for (flag, value) in [
            ("manifest-rescan", args.manifest_rescan),
            ("http2-keepalive", args.http2_keepalive),
            ("serving-cert-lifetime", args.serving_cert_lifetime),
            ("tls-handshake-timeout", args.tls_handshake_timeout),
            ("http2-keepalive-timeout", args.http2_keepalive_timeout),
            ("generated-ca-lifetime", args.generated_ca_lifetime),
        ] {
            if value.is_zero() {
                return Err(invalid(flag, "must be longer than zero".into()));
            }
        }
        if args.workload_cert_ttl == 0 {
            return Err(invalid(
                "workload-cert-ttl",
                "must be at least 1 second".into(),
            ));
        }
        let admin_limits = args
            .admin_flags
            .limits()
            .map_err(|(flag, message)| invalid(flag, message.into()))?;
        if args.max_streams_per_connection == 0 {
            return Err(invalid(
                "max-streams-per-connection",
                "must be at least 1".into(),
            ));
        }
        if args.token_reviews == 0 {
            return Err(invalid("token-reviews", "must be at least 1".into()));
        }
        let source = match (args.source, args.manifests) {
            (SourceKind::Manifests, Some(dir)) if dir.is_dir() => Source::Manifests {
                dir,
                rescan: args.manifest_rescan,
                settle: Settle {
                    quiet: args.manifest_settle,
                    emptied: args.manifest_emptied_after,
                },
            },
            (SourceKind::Manifests, Some(dir)) => {
                return Err(invalid(
                    "manifests",
                    format!("{}: not a readable folder", dir.display()),
                ))
            }
            (SourceKind::Manifests, None) => {
                return Err(invalid(
                    "manifests",
                    "--source manifests needs a folder".into(),
                ))
            }
            (SourceKind::Kubernetes, _) => Source::Kubernetes {
                batching: Batching {
                    window: args.kube_batch_window,
                    max: args.kube_batch_max,
                },
            },
        };
        let pki = match (args.tls_dir, args.ca_secret) {
            (Some(dir), _) => Pki::Files { dir },
            (None, Some(_)) if !matches!(source, Source::Kubernetes { .. }) => {
                return Err(invalid(
                    "ca-secret",
                    "needs --source kubernetes (the Secret is read from the cluster)".into(),
                ))
            }
            (None, Some(secret)) => Pki::Cluster(Box::new(ClusterCa {
                server_name: args
                    .server_name
                    .unwrap_or_else(|| format!("ferry-control-plane.{}.svc", args.namespace)),
                namespace: args.namespace,
                secret,
                create: args.ca_secret_create,
                trust_domain: args.trust_domain,
                generated_lifetime: args.generated_ca_lifetime,
                root_configmap: args.ca_root_configmap,
                serving_cert_lifetime: args.serving_cert_lifetime,
                token_audience: args.token_audience,
                proxy_service_account: args.proxy_service_account,
                token_review: ReviewLimits {
                    accepted_for: args.token_cache,
                    refused_for: args.token_refusal_cache,
                    in_flight: args.token_reviews,
                    ..ReviewLimits::default()
                },
            })),
            (None, None) => Pki::None,
        };
        Ok(Self {
            source,
            listen: args.listen,
            metrics_listen: args.metrics_listen,
            admin_limits,
            http2_keepalive: args.http2_keepalive,
            http2_keepalive_timeout: args.http2_keepalive_timeout,
            max_request_bytes: args.max_request_bytes,
            change_log_entries: args.change_log_entries,
            tls_handshake_timeout: args.tls_handshake_timeout,
            max_streams_per_connection: args.max_streams_per_connection,
            drain_timeout: args.drain_timeout,
            translate: TranslateOptions {
                cluster_domain: args.cluster_domain,
                mesh_by_default: args.mesh_by_default,
                hbone_port: args.hbone_port,
            },
            pki,
            workload_cert_ttl: TtlBounds {
                min: args.workload_cert_min_ttl,
                max: Duration::from_secs(args.workload_cert_ttl),
            },
            log_format: args.log_format,
            replica_name: match args.replica_name {
                Some(name) if name.trim().is_empty() => {
                    return Err(invalid("replica-name", "must not be empty".into()))
                }
                Some(name) => name,
                None => host_name(),
            },
        })
    }
}

/// The host's name (`/proc/sys/kernel/hostname`), else `control-plane`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "control-plane".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(flags: &[&str]) -> Result<Config, String> {
        let args = Args::try_parse_from(
            std::iter::once("ferry-control-plane").chain(flags.iter().copied()),
        )
        .map_err(|e| e.to_string())?;
        Config::from_args(args).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap();
        let config = parse(&["--manifests", path, "--manifest-rescan", "500ms"]).unwrap();
        assert_eq!(
            config.source,
            Source::Manifests {
                dir: dir.path().to_path_buf(),
                rescan: Duration::from_millis(500),
                settle: Settle::default(),
            }
        );
        assert_eq!(config.pki, Pki::None);
        assert_eq!(config.http2_keepalive, Duration::from_secs(10));
        assert_eq!(config.workload_cert_ttl.max, Duration::from_secs(86_400));
        assert_eq!(config.workload_cert_ttl.min, Duration::from_secs(60));
        assert!(config.translate.mesh_by_default);
    }

    #[test]
    fn cluster_ca_defaults_its_server_name_and_review_limits() {
        let config = parse(&[
            "--source",
            "kubernetes",
            "--ca-secret",
            "ferry-ca",
            "--namespace",
            "mesh",
            "--token-cache",
            "2m",
        ])
        .unwrap();
        let Pki::Cluster(ca) = config.pki else {
            panic!("expected the cluster CA, got {:?}", config.pki)
        };
        assert_eq!(ca.server_name, "ferry-control-plane.mesh.svc");
        assert_eq!(ca.token_review.accepted_for, Duration::from_secs(120));
        assert_eq!(ca.token_review.in_flight, 8);
        assert_eq!(ca.serving_cert_lifetime, Duration::from_secs(365 * 86_400));
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap();
        let missing = dir.path().join("absent");
        let cases: [(&[&str], &str); 5] = [
            (&["--manifests", missing.to_str().unwrap()], "--manifests: "),
            (
                &["--manifests", path, "--http2-keepalive", "0s"],
                "--http2-keepalive: must be longer than zero",
            ),
            (
                &["--manifests", path, "--ca-secret", "x"],
                "--ca-secret: needs --source kubernetes",
            ),
            (
                &["--manifests", path, "--token-reviews", "0"],
                "--token-reviews: must be at least 1",
            ),
            (
                &["--manifests", path, "--manifest-rescan", "soon"],
                "\"soon\"",
            ),
        ];
        for (flags, expected) in cases {
            let err = parse(flags).unwrap_err();
            assert!(err.contains(expected), "{flags:?}: {err}");
        }
    }
}
