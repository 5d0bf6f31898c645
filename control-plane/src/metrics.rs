//! The control plane's Prometheus metrics (`--metrics-listen`, `/metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// Every metric the control plane exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub connected_proxies: Gauge,
    pub pushes: Counter,
    pub push_resources: Counter,
    pub nacks: Counter,
    pub push_latency: Histogram,
    pub csr: Family<OutcomeLabel, Counter>,
    pub translation: Histogram,
    pub revision: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ferry_cp");
        // 10 µs to ~40 s.
        let latency = || Histogram::new(exponential_buckets(0.000_01, 4.0, 12));
        let metrics = Self {
            registry: Registry::default(),
            connected_proxies: Gauge::default(),
            pushes: Counter::default(),
            push_resources: Counter::default(),
            nacks: Counter::default(),
            push_latency: latency(),
            csr: Family::default(),
            translation: latency(),
            revision: Gauge::default(),
        };
        registry.register(
            "connected_proxies",
            "Proxies with an open config stream",
            metrics.connected_proxies.clone(),
        );
        registry.register(
            "pushes",
            "Delta responses sent to proxies",
            metrics.pushes.clone(),
        );
        registry.register(
            "push_resources",
            "Resources sent in delta responses",
            metrics.push_resources.clone(),
        );
        registry.register(
            "nacks",
            "Resources proxies refused (NACK)",
            metrics.nacks.clone(),
        );
        registry.register(
            "push_latency_seconds",
            "From a change being committed to its delta being handed to a proxy's stream",
            metrics.push_latency.clone(),
        );
        registry.register(
            "csr",
            "Workload certificate requests, by outcome (signed, refused)",
            metrics.csr.clone(),
        );
        registry.register(
            "translation_seconds",
            "Time to translate one batch of source changes",
            metrics.translation.clone(),
        );
        registry.register(
            "revision",
            "Revision of the configuration cache",
            metrics.revision.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// Serves `/metrics` and `/healthz/ready` until the task is dropped.
    pub async fn serve(
        self: std::sync::Arc<Self>,
        listener: tokio::net::TcpListener,
        limits: ferry_process::admin::AdminLimits,
    ) {
        use ferry_process::admin::reply;
        use http::StatusCode;
        ferry_process::admin::serve(listener, limits, move |req| match req.uri().path() {
            "/metrics" => ferry_process::admin::metrics_reply(
                self.encode(),
                ferry_process::self_metrics::Build {
                    version: ferry_api::build::VERSION,
                    commit: ferry_api::build::GIT_COMMIT,
                },
            ),
            "/healthz/ready" => reply(StatusCode::OK, "text/plain", "ready\n".into()),
            "/healthz/live" => reply(StatusCode::OK, "text/plain", "live\n".into()),
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found; try /metrics, /healthz/ready or /healthz/live\n".into(),
            ),
        })
        .await
    }
}
