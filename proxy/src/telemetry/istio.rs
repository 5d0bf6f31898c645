//! Istio's standard TCP metrics (`--istio-metrics`): the names, labels
//! and byte directions of Istio's `istio_tcp_*`, so that Kiali and the
//! Istio dashboards read Ferry's proxies as they read ztunnel. The mapping
//! is in docs/observability.md.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::metrics::Reporter;

/// Istio's `source_cluster`/`destination_cluster` (Istio's default
/// cluster ID: Ferry runs in one cluster).
pub const ISTIO_CLUSTER: &str = "Kubernetes";

/// The labels of Istio's standard TCP metrics, with Istio's names and
/// meanings (docs/observability.md has the mapping). Unknown parties are
/// `unknown`, as Istio writes them.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IstioLabels {
    pub reporter: Reporter,
    pub source_workload: Arc<str>,
    pub source_canonical_service: Arc<str>,
    pub source_canonical_revision: Arc<str>,
    pub source_workload_namespace: Arc<str>,
    pub source_principal: Arc<str>,
    pub source_app: Arc<str>,
    pub source_version: Arc<str>,
    pub source_cluster: &'static str,
    pub destination_service: Arc<str>,
    pub destination_service_namespace: Arc<str>,
    pub destination_service_name: Arc<str>,
    pub destination_workload: Arc<str>,
    pub destination_canonical_service: Arc<str>,
    pub destination_canonical_revision: Arc<str>,
    pub destination_workload_namespace: Arc<str>,
    pub destination_principal: Arc<str>,
    pub destination_app: Arc<str>,
    pub destination_version: Arc<str>,
    pub destination_cluster: &'static str,
    pub request_protocol: &'static str,
    pub response_flags: &'static str,
    pub connection_security_policy: &'static str,
}

/// Istio's standard TCP metrics (`istio_tcp_*`), for Kiali and the Istio
/// dashboards: `--istio-metrics`.
#[derive(Debug)]
pub struct IstioMetrics {
    pub connections_opened: Family<IstioLabels, Counter>,
    pub connections_closed: Family<IstioLabels, Counter>,
    /// Response bytes: server to client.
    pub sent_bytes: Family<IstioLabels, Counter>,
    /// Request bytes: client to server.
    pub received_bytes: Family<IstioLabels, Counter>,
}

impl IstioMetrics {
    pub(super) fn new() -> Self {
        Self {
            connections_opened: Family::default(),
            connections_closed: Family::default(),
            sent_bytes: Family::default(),
            received_bytes: Family::default(),
        }
    }

    /// Registers the metrics in `registry` (prefixed `istio_tcp`).
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "connections_opened",
            "Total TCP connections opened (Istio's standard metric)",
            self.connections_opened.clone(),
        );
        registry.register(
            "connections_closed",
            "Total TCP connections closed (Istio's standard metric)",
            self.connections_closed.clone(),
        );
        registry.register(
            "sent_bytes",
            "Bytes sent in responses, server to client (Istio's standard metric)",
            self.sent_bytes.clone(),
        );
        registry.register(
            "received_bytes",
            "Bytes received in requests, client to server (Istio's standard metric)",
            self.received_bytes.clone(),
        );
    }
}
