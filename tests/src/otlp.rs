//! An OTLP trace receiver for tests and benchmarks: the collector's gRPC
//! service (opentelemetry-proto types over tonic) on loopback, keeping
//! every span it is sent.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;

use crate::net::TaskGuard;

/// A span as received, with the resource attributes of its batch.
#[derive(Debug, Clone)]
pub struct Received {
    pub span: Span,
    pub resource: Vec<(String, String)>,
}

impl Received {
    /// A span attribute rendered as text (strings as they are, numbers and
    /// booleans formatted).
    pub fn attribute(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
            .map(render)
    }
}

fn render(value: &Value) -> String {
    match value {
        Value::StringValue(s) => s.clone(),
        Value::BoolValue(b) => b.to_string(),
        Value::IntValue(i) => i.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    }
}

#[derive(Debug, Clone, Default)]
struct Sink {
    spans: Arc<Mutex<Vec<Received>>>,
    /// Keep no spans, only count them (benchmarks).
    count_only: bool,
    count: Arc<std::sync::atomic::AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for batch in request.into_inner().resource_spans {
            let resource: Vec<(String, String)> = batch
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .filter_map(|kv| Some((kv.key.clone(), render(kv.value.as_ref()?.value.as_ref()?))))
                .collect();
            for span in batch.scope_spans.into_iter().flat_map(|s| s.spans) {
                received.push(Received {
                    span,
                    resource: resource.clone(),
                });
            }
        }
        self.count
            .fetch_add(received.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if !self.count_only {
            if let Ok(mut spans) = self.spans.lock() {
                spans.extend(received);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A running receiver; stops when dropped (its connections are closed
/// with it, as a collector that goes away would).
#[derive(Debug)]
pub struct Receiver {
    pub address: SocketAddr,
    sink: Sink,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _task: TaskGuard,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Receiver {
    /// Listens on `address` (port 0 for any) and keeps every span.
    pub async fn start(address: SocketAddr) -> anyhow::Result<Self> {
        Self::start_with(address, false).await
    }

    /// Listens and only counts spans (for load).
    pub async fn counting(address: SocketAddr) -> anyhow::Result<Self> {
        Self::start_with(address, true).await
    }

    /// Keeps every span, served on a listener made elsewhere (inside a lab
    /// namespace: `Netns::listen_tcp`); needs a Tokio runtime.
    pub fn start_on_std(listener: std::net::TcpListener) -> anyhow::Result<Self> {
        listener.set_nonblocking(true)?;
        Self::serve(tokio::net::TcpListener::from_std(listener)?, false)
    }

    async fn start_with(address: SocketAddr, count_only: bool) -> anyhow::Result<Self> {
        Self::serve(tokio::net::TcpListener::bind(address).await?, count_only)
    }

    fn serve(listener: tokio::net::TcpListener, count_only: bool) -> anyhow::Result<Self> {
        let address = listener.local_addr()?;
        let sink = Sink {
            count_only,
            ..Sink::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(sink.clone()))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async move {
                    let _ = stopped.await;
                },
            );
        let task = tokio::spawn(async move {
            let _ = server.await;
        });
        Ok(Self {
            address,
            sink,
            stop: Some(stop),
            _task: TaskGuard::new(task),
        })
    }

    /// The spans received so far.
    pub fn spans(&self) -> Vec<Received> {
        self.sink
            .spans
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// How many spans were received.
    pub fn count(&self) -> u64 {
        self.sink.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The endpoint URL for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }
}
