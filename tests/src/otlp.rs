//! An OTLP trace receiver for tests and benchmarks: the collector's gRPC
//! service (opentelemetry-proto types over tonic) or its HTTP/protobuf
//! endpoint (`POST /v1/traces`, gzip understood), plain or over TLS (with
//! client certificates required when a client CA is given), on loopback,
//! keeping every span it is sent and the headers of every request.

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

/// What a request carried besides its spans.
#[derive(Debug, Clone, Default)]
pub struct RequestSeen {
    /// Lowercase header names and their values.
    pub headers: Vec<(String, String)>,
}

impl RequestSeen {
    /// The value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How a receiver listens.
#[derive(Debug, Clone, Default)]
pub struct ReceiverOptions {
    /// HTTP/protobuf instead of gRPC.
    pub http: bool,
    /// Serve TLS with this certificate chain and key (PEM).
    pub tls: Option<(String, String)>,
    /// Require client certificates signed by this CA (PEM).
    pub client_ca: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct Sink {
    spans: Arc<Mutex<Vec<Received>>>,
    requests: Arc<Mutex<Vec<RequestSeen>>>,
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
        let headers = request.metadata().clone().into_headers();
        self.record(&headers, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Sink {
    fn record(&self, headers: &http::HeaderMap, request: ExportTraceServiceRequest) {
        if let Ok(mut requests) = self.requests.lock() {
            requests.push(RequestSeen {
                headers: headers
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect(),
            });
        }
        let mut received = Vec::new();
        for batch in request.resource_spans {
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
    }
}

/// One HTTP/protobuf export: the body, gunzipped when it says gzip.
async fn http_export(
    sink: Sink,
    request: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    use http_body_util::BodyExt;
    use prost::Message;
    let reply = |status: u16, body: Vec<u8>| {
        let mut response = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
        response.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/x-protobuf"),
        );
        Ok(response)
    };
    if request.method() != http::Method::POST || request.uri().path() != "/v1/traces" {
        return reply(404, Vec::new());
    }
    let headers = request.headers().clone();
    let Ok(body) = request.into_body().collect().await else {
        return reply(400, Vec::new());
    };
    let mut body = body.to_bytes().to_vec();
    if headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        == Some("gzip")
    {
        let mut plain = Vec::new();
        if std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut plain)
            .is_err()
        {
            return reply(400, Vec::new());
        }
        body = plain;
    }
    let Ok(export) = ExportTraceServiceRequest::decode(&body[..]) else {
        return reply(400, Vec::new());
    };
    sink.record(&headers, export);
    reply(
        200,
        ExportTraceServiceResponse {
            partial_success: None,
        }
        .encode_to_vec(),
    )
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
        Self::serve_with(listener, count_only, ReceiverOptions::default())
    }

    /// Listens on `address` with these options and keeps every span.
    pub async fn start_with_options(
        address: SocketAddr,
        options: ReceiverOptions,
    ) -> anyhow::Result<Self> {
        Self::serve_with(
            tokio::net::TcpListener::bind(address).await?,
            false,
            options,
        )
    }

    fn serve_with(
        listener: tokio::net::TcpListener,
        count_only: bool,
        options: ReceiverOptions,
    ) -> anyhow::Result<Self> {
        let address = listener.local_addr()?;
        let sink = Sink {
            count_only,
            ..Sink::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = if options.http {
            let tls = options
                .tls
                .as_ref()
                .map(|(cert, key)| server_tls(cert, key, options.client_ca.as_deref()))
                .transpose()?
                .map(tokio_rustls::TlsAcceptor::from);
            let sink = sink.clone();
            tokio::spawn(async move {
                tokio::pin!(stopped);
                // Connections live in this set: when the receiver goes (the
                // accept task ends or is aborted), they are closed with it.
                let mut connections = tokio::task::JoinSet::new();
                loop {
                    let accepted = tokio::select! {
                        _ = &mut stopped => break,
                        accepted = listener.accept() => accepted,
                    };
                    let Ok((stream, _)) = accepted else { continue };
                    let sink = sink.clone();
                    let tls = tls.clone();
                    while connections.try_join_next().is_some() {}
                    connections.spawn(async move {
                        let service =
                            hyper::service::service_fn(move |r| http_export(sink.clone(), r));
                        let builder = hyper_util::server::conn::auto::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        );
                        match tls {
                            Some(tls) => {
                                if let Ok(stream) = tls.accept(stream).await {
                                    let io = hyper_util::rt::TokioIo::new(stream);
                                    let _ = builder.serve_connection(io, service).await;
                                }
                            }
                            None => {
                                let io = hyper_util::rt::TokioIo::new(stream);
                                let _ = builder.serve_connection(io, service).await;
                            }
                        }
                    });
                }
            })
        } else {
            let mut builder = tonic::transport::Server::builder();
            if let Some((cert, key)) = &options.tls {
                let mut tls = tonic::transport::ServerTlsConfig::new()
                    .identity(tonic::transport::Identity::from_pem(cert, key));
                if let Some(ca) = &options.client_ca {
                    tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(ca));
                }
                builder = builder.tls_config(tls)?;
            }
            let service = TraceServiceServer::new(sink.clone())
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
            let server = builder.add_service(service).serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async move {
                    let _ = stopped.await;
                },
            );
            tokio::spawn(async move {
                let _ = server.await;
            })
        };
        Ok(Self {
            address,
            sink,
            stop: Some(stop),
            _task: TaskGuard::new(task),
        })
    }

    /// The requests received so far (headers).
    pub fn requests(&self) -> Vec<RequestSeen> {
        self.sink
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
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

/// A rustls server configuration for the HTTP receiver.
fn server_tls(
    cert: &str,
    key: &str,
    client_ca: Option<&str>,
) -> anyhow::Result<std::sync::Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes())?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots.add(c?)?;
            }
            builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    std::sync::Arc::new(roots),
                    provider,
                )
                .build()?,
            )
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(std::sync::Arc::new(config))
}

/// A test CA, a server certificate for 127.0.0.1 and localhost and a client
/// certificate, written as PEM files in a temporary folder (removed on drop).
#[derive(Debug)]
pub struct TestPki {
    dir: tempfile::TempDir,
    /// The server's certificate and key (PEM).
    pub server: (String, String),
    /// The CA certificate (PEM), also in `ca.pem`.
    pub ca_pem: String,
}

impl TestPki {
    /// A fresh CA and certificates.
    pub fn new() -> anyhow::Result<Self> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "otlp test CA");
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let leaf = |name: &str| -> anyhow::Result<(String, String)> {
            let key = rcgen::KeyPair::generate()?;
            let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()])?;
            params
                .subject_alt_names
                .push(rcgen::SanType::IpAddress("127.0.0.1".parse()?));
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            Ok((params.signed_by(&key, &issuer)?.pem(), key.serialize_pem()))
        };
        let server = leaf("collector")?;
        let client = leaf("proxy")?;
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem())?;
        std::fs::write(dir.path().join("client.pem"), &client.0)?;
        std::fs::write(dir.path().join("client-key.pem"), &client.1)?;
        Ok(Self {
            dir,
            server,
            ca_pem: ca_cert.pem(),
        })
    }

    /// The path of `ca.pem`, `client.pem` or `client-key.pem`.
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}
