//! Distributed tracing over OTLP: one span per proxied connection on each
//! proxy that carries it, the two sides joined into one trace by a W3C
//! `traceparent` on the HBONE CONNECT.
//!
//! Configured by the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_TIMEOUT`,
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`
//! ...), read by the OpenTelemetry SDK and exporter; without an endpoint
//! tracing is off and costs nothing.
//!
//! Export never slows the data path: a finished span goes into a bounded
//! queue with `try_send` (a full queue drops it), and one task sends
//! batches to the collector with a deadline. Spans that are dropped, for a
//! full queue or a failed export, are counted
//! (`ferry_trace_spans_dropped_total`); memory stays bounded by the queue
//! (the SDK's own batch processor drops silently, hence this processor).

use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    SdkTracer, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

/// Spans waiting for export at most; more are dropped.
pub const QUEUE: usize = 4096;
const MAX_BATCH: usize = 512;
const BATCH_DELAY: Duration = Duration::from_millis(500);
const EXPORT_DEADLINE: Duration = Duration::from_secs(5);

/// Errors setting tracing up.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error(transparent)]
    Otlp(#[from] super::otlp::OtlpError),
}

/// The tracer of a proxy with OTLP export.
#[derive(Debug, Clone)]
pub struct Tracing {
    tracer: SdkTracer,
    // Kept so the pipeline lives as long as the tracer.
    _provider: SdkTracerProvider,
}

/// The span type the tracer makes.
pub type Span = opentelemetry_sdk::trace::Span;

/// Whether the environment asks for OTLP traces.
pub fn configured() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.trim() == "none")
        || std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim() == "true");
    !disabled && (set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") || set("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

impl Tracing {
    /// Builds the OTLP pipeline from the environment when it is configured
    /// (see [`configured`]); must run inside the tokio runtime.
    pub fn from_env(
        node: &str,
        exported: Counter,
        dropped: Counter,
    ) -> Result<Option<Self>, TraceError> {
        if !configured() {
            return Ok(None);
        }
        let settings = super::otlp::OtlpSettings::from_lookup(|name| std::env::var(name).ok())?;
        Self::with_settings(&settings, node, exported, dropped).map(Some)
    }

    /// Builds the OTLP pipeline from explicit settings; must run inside
    /// the tokio runtime.
    pub fn with_settings(
        settings: &super::otlp::OtlpSettings,
        node: &str,
        exported: Counter,
        dropped: Counter,
    ) -> Result<Self, TraceError> {
        let mut exporter = settings.exporter()?;
        // `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` are read by
        // the builder's detectors; the name is set only when not given.
        let mut resource =
            Resource::builder().with_attributes([KeyValue::new("k8s.node.name", node.to_string())]);
        if let Some(name) = default_service_name(std::env::var("OTEL_SERVICE_NAME").ok()) {
            resource = resource.with_service_name(name);
        }
        let resource = resource.build();
        exporter.set_resource(&resource);
        let (queue, spans) = mpsc::channel(QUEUE);
        tokio::spawn(export(spans, exporter, exported, dropped.clone()));
        let provider = SdkTracerProvider::builder()
            .with_span_processor(QueueProcessor { queue, dropped })
            .with_resource(resource)
            .build();
        Ok(Self {
            tracer: provider.tracer("ferry-proxy"),
            _provider: provider,
        })
    }

    /// Starts a connection span; `parent` joins it to the other side's trace.
    pub fn start(
        &self,
        name: &'static str,
        kind: SpanKind,
        parent: &Context,
        attributes: Vec<KeyValue>,
    ) -> Span {
        self.tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, parent)
    }
}

/// The service name to set: `ferry-proxy` unless `OTEL_SERVICE_NAME`
/// names one (then `None`: the environment's stands).
fn default_service_name(from_env: Option<String>) -> Option<&'static str> {
    match from_env {
        Some(name) if !name.trim().is_empty() => None,
        _ => Some("ferry-proxy"),
    }
}

/// The `traceparent` value naming `span` as the parent.
pub fn traceparent(span: &Span) -> Option<http::HeaderValue> {
    use opentelemetry::trace::Span as _;
    let context = Context::new().with_remote_span_context(span.span_context().clone());
    let mut out = HeaderOut(None);
    TraceContextPropagator::new().inject_context(&context, &mut out);
    out.0
}

/// The remote parent a CONNECT carries (an empty context without one).
pub fn parent_from(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract_with_context(&Context::new(), &HeaderIn(headers))
}

struct HeaderOut(Option<http::HeaderValue>);

impl Injector for HeaderOut {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = http::HeaderValue::from_str(&value).ok();
        }
    }
}

struct HeaderIn<'a>(&'a http::HeaderMap);

impl Extractor for HeaderIn<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Hands finished spans to the export task without ever waiting.
#[derive(Debug)]
struct QueueProcessor {
    queue: mpsc::Sender<SpanData>,
    dropped: Counter,
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.queue.try_send(span).is_err() {
            self.dropped.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Sends batches until the queue closes.
async fn export(
    mut spans: mpsc::Receiver<SpanData>,
    exporter: opentelemetry_otlp::SpanExporter,
    exported: Counter,
    dropped: Counter,
) {
    let mut failing = false;
    while let Some(first) = spans.recv().await {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        batch.push(first);
        let deadline = tokio::time::sleep(BATCH_DELAY);
        tokio::pin!(deadline);
        while batch.len() < MAX_BATCH {
            tokio::select! {
                next = spans.recv() => match next {
                    Some(span) => batch.push(span),
                    None => break,
                },
                _ = &mut deadline => break,
            }
        }
        let count = batch.len() as u64;
        match tokio::time::timeout(EXPORT_DEADLINE, exporter.export(batch)).await {
            Ok(Ok(())) => {
                exported.inc_by(count);
                if failing {
                    tracing::info!("span export recovered");
                    failing = false;
                }
            }
            outcome => {
                dropped.inc_by(count);
                if !failing {
                    let reason = match outcome {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {EXPORT_DEADLINE:?}"),
                    };
                    tracing::warn!(%reason, spans = count, "span export failed; dropping spans until the collector answers");
                    failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otel_service_name_wins_over_the_default() {
        assert_eq!(default_service_name(None), Some("ferry-proxy"));
        assert_eq!(default_service_name(Some("  ".into())), Some("ferry-proxy"));
        assert_eq!(default_service_name(Some("mesh-node".into())), None);
    }
}
