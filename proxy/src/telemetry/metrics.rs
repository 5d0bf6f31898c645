//! The proxy's Prometheus metrics (served on the admin port at `/metrics`).
//!
//! Connection metrics carry the labels of [`ConnectionLabels`]; their
//! values come from the config store, built once per resource version
//! ([`ferry_core::state::PeerLabels`]), so counting a connection clones a few
//! reference counts and allocates nothing. Cardinality is bounded by the
//! pairs of (app, namespace, identity) that actually talk, times the
//! services between them, times the reporter and mode (see
//! docs/observability.md).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;

/// Which side of a connection reports it.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Reporter {
    /// The proxy of the client's node.
    Source,
    /// The proxy of the server's node.
    Destination,
}

impl Reporter {
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// How a connection is carried.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Carried {
    /// Inside an HBONE tunnel (mutual TLS).
    Hbone,
    /// Directly to a pod of the same node.
    Direct,
    /// In plaintext to a destination outside the mesh, or from a source outside it.
    Passthrough,
    /// Plaintext arriving for a mesh pod (inbound plaintext capture).
    Plaintext,
}

impl Carried {
    pub fn as_str(self) -> &'static str {
        match self {
            Carried::Hbone => "hbone",
            Carried::Direct => "direct",
            Carried::Passthrough => "passthrough",
            Carried::Plaintext => "plaintext",
        }
    }

    /// Whether the connection is protected by mutual TLS on the wire.
    pub fn mtls(self) -> bool {
        matches!(self, Carried::Hbone)
    }
}

impl From<ferry_core::route::Mode> for Carried {
    fn from(mode: ferry_core::route::Mode) -> Self {
        match mode {
            ferry_core::route::Mode::Hbone => Carried::Hbone,
            ferry_core::route::Mode::Direct => Carried::Direct,
            _ => Carried::Passthrough,
        }
    }
}

/// Why a connection could not be made.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum FailureReason {
    /// The service has no eligible endpoint, or the port is not served.
    NoEndpoints,
    /// Refused by this proxy's policy decision.
    PolicyDenied,
    /// Refused by the destination's proxy (its policy, answered 403 on the
    /// tunnel): that proxy counts the denial as `policy_denied`, so one
    /// denial is counted once as a denial.
    DeniedByDestination,
    /// The mutual TLS handshake failed (either side).
    TlsFailure,
    /// The upstream (pod or peer proxy) could not be reached, or refused.
    ConnectError,
    /// A name could not be resolved.
    Unresolved,
    /// Refused by the mesh for another reason (no identity, unknown target...).
    Refused,
    /// Refused because the proxy has no configuration yet (fail closed).
    NotConfigured,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::NoEndpoints => "no_endpoints",
            FailureReason::PolicyDenied => "policy_denied",
            FailureReason::DeniedByDestination => "denied_by_destination",
            FailureReason::TlsFailure => "tls_failure",
            FailureReason::ConnectError => "connect_error",
            FailureReason::Unresolved => "unresolved",
            FailureReason::Refused => "refused",
            FailureReason::NotConfigured => "not_configured",
        }
    }
}

/// Label values of the enums: their `as_str`.
macro_rules! label_value {
    ($($kind:ty),*) => {$(
        impl EncodeLabelValue for $kind {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                EncodeLabelValue::encode(&self.as_str(), encoder)
            }
        }
    )*};
}

label_value!(Reporter, Carried, FailureReason);

/// The labels of a proxied connection. Unknown parties are empty strings
/// (encoded as `""`): a source or destination outside the mesh has no
/// principal, an address that is no pod has no workload.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub reporter: Reporter,
    pub source_workload: Arc<str>,
    pub source_namespace: Arc<str>,
    pub source_principal: Arc<str>,
    pub destination_workload: Arc<str>,
    pub destination_namespace: Arc<str>,
    pub destination_principal: Arc<str>,
    pub destination_service: Arc<str>,
    pub mode: Carried,
}

/// The labels of a failed connection.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub reporter: Reporter,
    pub source_workload: Arc<str>,
    pub source_namespace: Arc<str>,
    pub source_principal: Arc<str>,
    pub destination_workload: Arc<str>,
    pub destination_namespace: Arc<str>,
    pub destination_service: Arc<str>,
    pub reason: FailureReason,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdentityLabel {
    pub identity: String,
}

/// The exemplar of a connection-duration observation: the trace of the
/// connection (OpenMetrics exemplars, for a jump from a latency panel to
/// the trace).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceLabel {
    pub trace_id: String,
}

/// The connection-duration histogram, with the trace of a recent
/// connection per bucket as its exemplar.
pub type DurationHistogram = HistogramWithExemplars<TraceLabel>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    pub reporter: Reporter,
    pub mode: Carried,
}

/// Every metric the proxy exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub connections_opened: Family<ConnectionLabels, Counter>,
    pub connections_closed: Family<ConnectionLabels, Counter>,
    /// Bytes from the client towards the server.
    pub sent_bytes: Family<ConnectionLabels, Counter>,
    /// Bytes from the server back to the client.
    pub received_bytes: Family<ConnectionLabels, Counter>,
    pub connection_failures: Family<FailureLabels, Counter>,
    pub connection_duration: Family<ModeLabels, DurationHistogram, fn() -> DurationHistogram>,
    pub open_connections: Family<ModeLabels, Gauge>,
    pub config_revision: Gauge,
    /// 1 while the configuration stream to the control plane is up.
    pub control_plane_connected: Gauge,
    pub config_updated: Gauge<f64, AtomicU64>,
    pub config_resources: Family<KindLabel, Gauge>,
    pub certificate_expiry: Family<IdentityLabel, Gauge>,
    pub hbone_connections: Gauge,
    pub hbone_streams: Gauge,
    pub hbone_handshakes: Gauge,
    pub spans_exported: Counter,
    pub spans_dropped: Counter,
    pub access_logs_suppressed: Counter,
    /// Pods of this node routed by an interface the capture rules do not
    /// cover (their traffic is not captured).
    pub capture_pods_outside_interface: Gauge,
    /// Connections made from the node's address although client
    /// addresses are kept, by reason (`net::transparent`).
    pub client_address_fallbacks: Family<crate::net::transparent::FallbackLabels, Counter>,
    /// Istio's standard TCP metrics, when on (`--istio-metrics`).
    pub istio: Option<super::istio::IstioMetrics>,
}

fn duration_histogram() -> DurationHistogram {
    // 1 ms to ~9 h.
    HistogramWithExemplars::new(exponential_buckets(0.001, 4.0, 13))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        // One root: Ferry's metrics under `ferry_`, Istio's (when on) under
        // `istio_tcp_`, encoded together.
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("ferry");
        let metrics = Self {
            connections_opened: Family::default(),
            connections_closed: Family::default(),
            sent_bytes: Family::default(),
            received_bytes: Family::default(),
            connection_failures: Family::default(),
            connection_duration: Family::new_with_constructor(duration_histogram),
            open_connections: Family::default(),
            config_revision: Gauge::default(),
            control_plane_connected: Gauge::default(),
            capture_pods_outside_interface: Gauge::default(),
            client_address_fallbacks: Family::default(),
            config_updated: Gauge::default(),
            config_resources: Family::default(),
            certificate_expiry: Family::default(),
            hbone_connections: Gauge::default(),
            hbone_streams: Gauge::default(),
            hbone_handshakes: Gauge::default(),
            spans_exported: Counter::default(),
            spans_dropped: Counter::default(),
            access_logs_suppressed: Counter::default(),
            istio: None,
            registry: Registry::default(),
        };
        let m = &metrics;
        registry.register(
            "connections_opened",
            "Connections proxied, counted when established",
            m.connections_opened.clone(),
        );
        registry.register(
            "connections_closed",
            "Proxied connections that have ended",
            m.connections_closed.clone(),
        );
        registry.register(
            "sent_bytes",
            "Bytes from the client towards the server, counted when a connection ends",
            m.sent_bytes.clone(),
        );
        registry.register(
            "received_bytes",
            "Bytes from the server back to the client, counted when a connection ends",
            m.received_bytes.clone(),
        );
        registry.register(
            "connection_failures",
            "Connections refused or failed before carrying data, by reason",
            m.connection_failures.clone(),
        );
        registry.register(
            "connection_duration_seconds",
            "How long proxied connections lasted",
            m.connection_duration.clone(),
        );
        registry.register(
            "open_connections",
            "Connections being proxied now",
            m.open_connections.clone(),
        );
        registry.register(
            "config_revision",
            "Control plane revision of the applied configuration",
            m.config_revision.clone(),
        );
        registry.register(
            "control_plane_connected",
            "1 while the configuration stream to the control plane is up; 0 while the proxy serves its last good configuration without it",
            m.control_plane_connected.clone(),
        );
        registry.register(
            "config_last_update_timestamp_seconds",
            "When the last configuration delta was applied (Unix time)",
            m.config_updated.clone(),
        );
        registry.register(
            "config_resources",
            "Resources in the applied configuration, by kind",
            m.config_resources.clone(),
        );
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When the workload certificate held for each identity expires (Unix time)",
            m.certificate_expiry.clone(),
        );
        registry.register(
            "hbone_pool_connections",
            "Pooled HBONE (mTLS HTTP/2) connections to other node proxies",
            m.hbone_connections.clone(),
        );
        registry.register(
            "client_address_fallbacks",
            "Connections made from the node's address although client addresses are kept, by reason",
            m.client_address_fallbacks.clone(),
        );
        registry.register(
            "capture_pods_outside_interface",
            "Pods of this node routed by an interface the capture rules do not cover (--capture-interface): their traffic is not captured",
            m.capture_pods_outside_interface.clone(),
        );
        registry.register(
            "hbone_pool_streams",
            "Open streams on pooled HBONE connections",
            m.hbone_streams.clone(),
        );
        registry.register(
            "hbone_pool_handshakes",
            "TLS handshakes made by the HBONE pool since start",
            m.hbone_handshakes.clone(),
        );
        registry.register(
            "trace_spans_exported",
            "Spans delivered to the OTLP collector",
            m.spans_exported.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Spans dropped: the export queue was full or the collector failed",
            m.spans_dropped.clone(),
        );
        registry.register(
            "access_logs_suppressed",
            "Access log lines left out by the rate limit",
            m.access_logs_suppressed.clone(),
        );
        Self {
            registry: root,
            ..metrics
        }
    }

    /// With Istio's standard TCP metrics as well.
    pub fn with_istio(mut self) -> Self {
        let istio = super::istio::IstioMetrics::new();
        istio.register(self.registry.sub_registry_with_prefix("istio_tcp"));
        Self {
            istio: Some(istio),
            ..self
        }
    }

    /// The text exposition (OpenMetrics text, which Prometheus reads):
    /// Ferry's metrics, and Istio's when on.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_metrics_are_encoded_with_ferrys_under_their_own_prefix() {
        let metrics = Metrics::new().with_istio();
        if let Some(istio) = &metrics.istio {
            istio
                .connections_opened
                .get_or_create(&crate::telemetry::istio::IstioLabels {
                    reporter: Reporter::Source,
                    source_workload: "a".into(),
                    source_canonical_service: "a".into(),
                    source_canonical_revision: "latest".into(),
                    source_workload_namespace: "ns".into(),
                    source_principal: "unknown".into(),
                    source_app: "a".into(),
                    source_version: "unknown".into(),
                    source_cluster: "Kubernetes",
                    destination_service: "unknown".into(),
                    destination_service_namespace: "unknown".into(),
                    destination_service_name: "unknown".into(),
                    destination_workload: "unknown".into(),
                    destination_canonical_service: "unknown".into(),
                    destination_canonical_revision: "unknown".into(),
                    destination_workload_namespace: "unknown".into(),
                    destination_principal: "unknown".into(),
                    destination_app: "unknown".into(),
                    destination_version: "unknown".into(),
                    destination_cluster: "Kubernetes",
                    request_protocol: "tcp",
                    response_flags: "-",
                    connection_security_policy: "none",
                })
                .inc();
        }
        let text = metrics.encode().unwrap();
        assert!(text.contains("\nferry_config_revision 0\n"), "{text}");
        assert!(
            text.contains("\nistio_tcp_connections_opened_total{"),
            "{text}"
        );
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert!(text.ends_with("# EOF\n"));
        let plain = Metrics::new().encode().unwrap();
        assert!(!plain.contains("istio_tcp"), "{plain}");
    }
}
