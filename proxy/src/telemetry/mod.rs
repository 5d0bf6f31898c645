//! What the proxy tells operators about the connections it carries:
//! Prometheus metrics ([`metrics`]), OTLP traces ([`trace`]), access
//! logs ([`access`]) and the flow log ([`flows`], `ferryctl flows`), all fed from one place per connection
//! ([`Telemetry::begin`] and [`ConnectionTelemetry`], [`Telemetry::failure`]).

pub mod access;
pub mod flows;
pub mod istio;
pub mod metrics;
pub mod otlp;
pub mod trace;

use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use opentelemetry::trace::{Span as _, SpanKind, Status};
use opentelemetry::{Context, KeyValue, StringValue};

use ferry_core::state::{PeerLabels, ServiceLabels};
use istio::IstioLabels;
use metrics::{
    Carried, ConnectionLabels, FailureLabels, FailureReason, Metrics, ModeLabels, Reporter,
};

/// The telemetry of one proxy.
#[derive(Debug)]
pub struct Telemetry {
    pub metrics: Metrics,
    tracing: Option<trace::Tracing>,
    access: access::RateLimit,
    /// The last connections, for `ferryctl flows`.
    pub flows: flows::FlowLog,
    empty: Arc<str>,
    /// Istio's label values for what is not known.
    unknown: Arc<str>,
}

/// The parties of a connection as telemetry names them; `None` for an
/// address that is no known pod, or a connection to no service.
#[derive(Debug, Clone, Default)]
pub struct Parties {
    pub source: Option<Arc<PeerLabels>>,
    pub destination: Option<Arc<PeerLabels>>,
    pub service: Option<Arc<ServiceLabels>>,
}

impl Telemetry {
    /// `access_logs_per_second` 0 turns access logs off; the flow log keeps
    /// the last `flow_history` connections (0: off).
    pub fn new(
        metrics: Metrics,
        tracing: Option<trace::Tracing>,
        access_logs_per_second: u32,
        flow_history: usize,
    ) -> Arc<Self> {
        let suppressed = metrics.access_logs_suppressed.clone();
        Arc::new(Self {
            metrics,
            tracing,
            access: access::RateLimit::new(access_logs_per_second, suppressed),
            flows: flows::FlowLog::new(flow_history),
            empty: Arc::from(""),
            unknown: Arc::from("unknown"),
        })
    }

    /// Metrics only: no traces, no access logs, no flow log (tests,
    /// benchmarks).
    pub fn metrics_only() -> Arc<Self> {
        Self::new(Metrics::new(), None, 0, 0)
    }

    pub fn tracing_enabled(&self) -> bool {
        self.tracing.is_some()
    }

    fn part<'a>(
        &'a self,
        labels: Option<&'a Arc<PeerLabels>>,
    ) -> (&'a Arc<str>, &'a Arc<str>, &'a Arc<str>) {
        match labels {
            Some(l) => (&l.workload, &l.namespace, &l.principal),
            None => (&self.empty, &self.empty, &self.empty),
        }
    }

    fn labels(&self, reporter: Reporter, parties: &Parties, mode: Carried) -> ConnectionLabels {
        let (sw, sn, sp) = self.part(parties.source.as_ref());
        let (dw, dn, dp) = self.part(parties.destination.as_ref());
        ConnectionLabels {
            reporter,
            source_workload: sw.clone(),
            source_namespace: sn.clone(),
            source_principal: sp.clone(),
            destination_workload: dw.clone(),
            destination_namespace: dn.clone(),
            destination_principal: dp.clone(),
            destination_service: parties
                .service
                .as_ref()
                .map_or_else(|| self.empty.clone(), |s| s.host.clone()),
            mode,
        }
    }

    /// Istio's labels for a connection (when Istio's metrics are on).
    fn istio_labels(&self, reporter: Reporter, parties: &Parties, mode: Carried) -> IstioLabels {
        let u = &self.unknown;
        let peer = |p: Option<&Arc<PeerLabels>>| match p {
            Some(p) => [
                p.istio.workload.clone(),
                p.istio.canonical_service.clone(),
                p.istio.canonical_revision.clone(),
                p.namespace.clone(),
                if p.principal.is_empty() {
                    u.clone()
                } else {
                    p.principal.clone()
                },
                p.istio.app.clone(),
                p.istio.version.clone(),
            ],
            None => std::array::from_fn(|_| u.clone()),
        };
        let [sw, scs, scr, sn, sp, sa, sv] = peer(parties.source.as_ref());
        let [dw, dcs, dcr, dn, dp, da, dv] = peer(parties.destination.as_ref());
        let (service, service_name, service_namespace) = match &parties.service {
            Some(s) => (s.host.clone(), s.name.clone(), s.namespace.clone()),
            None => (u.clone(), u.clone(), u.clone()),
        };
        IstioLabels {
            reporter,
            source_workload: sw,
            source_canonical_service: scs,
            source_canonical_revision: scr,
            source_workload_namespace: sn,
            source_principal: sp,
            source_app: sa,
            source_version: sv,
            source_cluster: istio::ISTIO_CLUSTER,
            destination_service: service,
            destination_service_namespace: service_namespace,
            destination_service_name: service_name,
            destination_workload: dw,
            destination_canonical_service: dcs,
            destination_canonical_revision: dcr,
            destination_workload_namespace: dn,
            destination_principal: dp,
            destination_app: da,
            destination_version: dv,
            destination_cluster: istio::ISTIO_CLUSTER,
            request_protocol: "tcp",
            response_flags: "-",
            connection_security_policy: if mode.mtls() { "mutual_tls" } else { "none" },
        }
    }

    /// Counts and logs a connection that failed before carrying data.
    pub fn failure(
        &self,
        reporter: Reporter,
        parties: &Parties,
        reason: FailureReason,
        client: SocketAddr,
        target: &dyn Display,
        detail: &dyn Display,
    ) {
        let (sw, sn, sp) = self.part(parties.source.as_ref());
        let (dw, dn, dp) = self.part(parties.destination.as_ref());
        let service = parties.service.as_ref().map_or(&self.empty, |s| &s.host);
        self.flows.record(|seq| flows::Flow {
            seq,
            time_unix_ms: flows_now(),
            reporter: reporter.as_str(),
            verdict: match reason {
                FailureReason::PolicyDenied | FailureReason::DeniedByDestination => {
                    flows::Verdict::Denied
                }
                _ => flows::Verdict::Failed,
            },
            outcome: reason.as_str(),
            mode: None,
            source: flows::peer(flows::FlowAddress::Socket(client), sw, sn, sp),
            destination: flows::peer(flows::FlowAddress::Name(target.to_string()), dw, dn, dp),
            service: service.clone(),
            sent_bytes: 0,
            received_bytes: 0,
            duration_ms: 0,
            detail: Some(detail.to_string()),
        });
        self.metrics
            .connection_failures
            .get_or_create(&FailureLabels {
                reporter,
                source_workload: sw.clone(),
                source_namespace: sn.clone(),
                source_principal: sp.clone(),
                destination_workload: dw.clone(),
                destination_namespace: dn.clone(),
                destination_service: service.clone(),
                reason,
            })
            .inc();
        if let access::Admit::Write { suppressed } = self.access.admit() {
            tracing::info!(
                target: "ferry::access",
                reporter = reporter.as_str(),
                src = %client,
                src_workload = %sw,
                src_namespace = %sn,
                src_principal = %sp,
                dst = %target,
                dst_workload = %dw,
                dst_namespace = %dn,
                service = %service,
                outcome = "failed",
                reason = reason.as_str(),
                policy = if reason == FailureReason::PolicyDenied { "deny" } else { "allow" },
                detail = %detail,
                suppressed_before = suppressed,
                "connection failed"
            );
        }
    }

    /// Begins a connection's telemetry: its labels, built once, and its
    /// span when tracing (`parent` joins it to the other side's trace).
    /// [`ConnectionTelemetry::established`] counts it as opened; dropped
    /// before that (the connection failed, counted by
    /// [`Telemetry::failure`]), only its span ends.
    pub fn begin(
        self: &Arc<Self>,
        reporter: Reporter,
        parties: &Parties,
        mode: Carried,
        client: SocketAddr,
        target: SocketAddr,
        parent: Option<&Context>,
    ) -> ConnectionTelemetry {
        let labels = self.labels(reporter, parties, mode);
        let istio = self
            .metrics
            .istio
            .is_some()
            .then(|| Box::new(self.istio_labels(reporter, parties, mode)));
        let span = self
            .tracing
            .as_ref()
            .map(|tracing| Box::new(start_span(tracing, &labels, client, target, parent)));
        ConnectionTelemetry {
            telemetry: self.clone(),
            labels,
            istio,
            client,
            target,
            started: Instant::now(),
            span,
            established: false,
            done: false,
        }
    }
}

/// Now, in milliseconds since the Unix epoch.
fn flows_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The span of a connection, with its attributes.
fn start_span(
    tracing: &trace::Tracing,
    labels: &ConnectionLabels,
    client: SocketAddr,
    target: SocketAddr,
    parent: Option<&Context>,
) -> trace::Span {
    let (name, kind) = match labels.reporter {
        Reporter::Source => ("ferry.outbound", SpanKind::Client),
        Reporter::Destination => ("ferry.inbound", SpanKind::Server),
    };
    let text = |v: &Arc<str>| StringValue::from(v.clone());
    let client_address = client.ip().to_string();
    let attributes = vec![
        KeyValue::new("network.transport", "tcp"),
        KeyValue::new(
            "network.type",
            if client.is_ipv4() { "ipv4" } else { "ipv6" },
        ),
        KeyValue::new("network.peer.address", client_address.clone()),
        KeyValue::new("network.peer.port", i64::from(client.port())),
        KeyValue::new("client.address", client_address),
        KeyValue::new("client.port", i64::from(client.port())),
        KeyValue::new("server.address", target.ip().to_string()),
        KeyValue::new("server.port", i64::from(target.port())),
        KeyValue::new("ferry.reporter", labels.reporter.as_str()),
        KeyValue::new("ferry.mode", labels.mode.as_str()),
        KeyValue::new("ferry.mtls", labels.mode.mtls()),
        KeyValue::new("ferry.policy", "allow"),
        KeyValue::new("ferry.source.workload", text(&labels.source_workload)),
        KeyValue::new("ferry.source.namespace", text(&labels.source_namespace)),
        KeyValue::new("ferry.source.principal", text(&labels.source_principal)),
        KeyValue::new(
            "ferry.destination.workload",
            text(&labels.destination_workload),
        ),
        KeyValue::new(
            "ferry.destination.namespace",
            text(&labels.destination_namespace),
        ),
        KeyValue::new(
            "ferry.destination.principal",
            text(&labels.destination_principal),
        ),
        KeyValue::new(
            "ferry.destination.service",
            text(&labels.destination_service),
        ),
    ];
    let root = Context::new();
    tracing.start(name, kind, parent.unwrap_or(&root), attributes)
}

/// A connection's telemetry, from [`Telemetry::begin`];
/// [`ConnectionTelemetry::close`] records how an established connection
/// ended (dropping it records an aborted one).
#[derive(Debug)]
pub struct ConnectionTelemetry {
    telemetry: Arc<Telemetry>,
    labels: ConnectionLabels,
    /// Istio's labels, when Istio's metrics are on.
    /// Boxed, like the span: off, they cost a word each of every open
    /// connection's state, not their size.
    istio: Option<Box<IstioLabels>>,
    client: SocketAddr,
    target: SocketAddr,
    started: Instant,
    span: Option<Box<trace::Span>>,
    established: bool,
    done: bool,
}

impl ConnectionTelemetry {
    /// The `traceparent` naming this connection's span, when tracing.
    pub fn traceparent(&self) -> Option<http::HeaderValue> {
        self.span.as_deref().and_then(trace::traceparent)
    }

    /// The upstream answered: counts the connection as opened; its
    /// duration runs from now.
    pub fn established(&mut self) {
        if std::mem::replace(&mut self.established, true) {
            return;
        }
        let metrics = &self.telemetry.metrics;
        metrics.connections_opened.get_or_create(&self.labels).inc();
        if let (Some(istio), Some(labels)) = (&metrics.istio, &self.istio) {
            istio.connections_opened.get_or_create(labels).inc();
        }
        metrics
            .open_connections
            .get_or_create(&ModeLabels {
                reporter: self.labels.reporter,
                mode: self.labels.mode,
            })
            .inc();
        self.started = Instant::now();
    }

    /// Records the end: bytes each way and why it ended.
    pub fn close(mut self, sent: u64, received: u64, outcome: &'static str) {
        self.finish(sent, received, outcome);
    }

    fn finish(&mut self, sent: u64, received: u64, outcome: &'static str) {
        // Never established: the failure was counted already, and the
        // span ends when it drops.
        if std::mem::replace(&mut self.done, true) || !self.established {
            return;
        }
        let t = &self.telemetry;
        let l = &self.labels;
        let elapsed = self.started.elapsed();
        t.metrics.connections_closed.get_or_create(l).inc();
        t.metrics.sent_bytes.get_or_create(l).inc_by(sent);
        t.metrics.received_bytes.get_or_create(l).inc_by(received);
        if let (Some(istio), Some(labels)) = (&t.metrics.istio, &self.istio) {
            // Istio's convention: "received" is the request direction
            // (client to server), "sent" the response (server to client).
            istio.connections_closed.get_or_create(labels).inc();
            istio.received_bytes.get_or_create(labels).inc_by(sent);
            istio.sent_bytes.get_or_create(labels).inc_by(received);
        }
        let mode = ModeLabels {
            reporter: l.reporter,
            mode: l.mode,
        };
        // Only a sampled span is exported: an exemplar must lead to a
        // trace that exists.
        let trace_id = self
            .span
            .as_ref()
            .map(|span| span.span_context())
            .filter(|context| context.is_sampled())
            .map(|context| context.trace_id());
        t.metrics.connection_duration.get_or_create(&mode).observe(
            elapsed.as_secs_f64(),
            trace_id.map(|id| metrics::TraceLabel {
                trace_id: id.to_string(),
            }),
            None,
        );
        t.metrics.open_connections.get_or_create(&mode).dec();
        if let Some(span) = self.span.as_mut() {
            span.set_attribute(KeyValue::new("ferry.sent_bytes", sent as i64));
            span.set_attribute(KeyValue::new("ferry.received_bytes", received as i64));
            span.set_attribute(KeyValue::new("ferry.outcome", outcome));
            if outcome != "completed" {
                span.set_status(Status::error(outcome));
            }
            span.end();
        }
        t.flows.record(|seq| flows::Flow {
            seq,
            time_unix_ms: flows_now(),
            reporter: l.reporter.as_str(),
            verdict: flows::Verdict::Allowed,
            outcome,
            mode: Some(l.mode.as_str()),
            source: flows::peer(
                flows::FlowAddress::Socket(self.client),
                &l.source_workload,
                &l.source_namespace,
                &l.source_principal,
            ),
            destination: flows::peer(
                flows::FlowAddress::Socket(self.target),
                &l.destination_workload,
                &l.destination_namespace,
                &l.destination_principal,
            ),
            service: l.destination_service.clone(),
            sent_bytes: sent,
            received_bytes: received,
            duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            detail: None,
        });
        if let access::Admit::Write { suppressed } = t.access.admit() {
            tracing::info!(
                target: "ferry::access",
                reporter = l.reporter.as_str(),
                mode = l.mode.as_str(),
                src = %self.client,
                src_workload = %l.source_workload,
                src_namespace = %l.source_namespace,
                src_principal = %l.source_principal,
                dst = %self.target,
                dst_workload = %l.destination_workload,
                dst_namespace = %l.destination_namespace,
                dst_principal = %l.destination_principal,
                service = %l.destination_service,
                sent,
                received,
                duration_ms = elapsed.as_millis() as u64,
                outcome,
                policy = "allow",
                trace_id = trace_id.map(|t| t.to_string()).unwrap_or_default(),
                suppressed_before = suppressed,
                "connection closed"
            );
        }
    }
}

impl Drop for ConnectionTelemetry {
    fn drop(&mut self) {
        self.finish(0, 0, "aborted");
    }
}
