//! The OTLP span exporter as the standard variables configure it
//! (<https://opentelemetry.io/docs/specs/otel/protocol/exporter/>), for
//! traces: every `OTEL_EXPORTER_OTLP_TRACES_*` variable wins over its
//! `OTEL_EXPORTER_OTLP_*` counterpart.
//!
//! | variable | meaning here |
//! |---|---|
//! | `ENDPOINT` | collector URL; `http://` plain, `https://` TLS, no scheme: TLS unless `INSECURE=true`. The general endpoint gets `/v1/traces` appended for HTTP; the traces one is used as it is |
//! | `PROTOCOL` | `grpc` (the default, as before) or `http/protobuf`; `http/json` is refused |
//! | `CERTIFICATE` | PEM file of the CA(s) that sign the collector's certificate, trusted besides the system's roots |
//! | `CLIENT_CERTIFICATE`, `CLIENT_KEY` | PEM files of a client certificate and its key (mTLS to the collector) |
//! | `COMPRESSION` | `gzip` or `none` |
//! | `HEADERS` | `key=value,...`, values percent-decoded (e.g. an API key) |
//! | `TIMEOUT` | milliseconds per export |
//!
//! Anything that cannot be honoured (an unknown protocol or compression, an
//! unreadable certificate file, a malformed header) is an error naming the
//! variable: the proxy logs it once and runs without tracing.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{
    Compression, Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Errors reading the exporter's settings or building it.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("{variable}: {reason}")]
    Setting {
        variable: &'static str,
        reason: String,
    },
    #[error("{variable}: {path}: {reason}")]
    File {
        variable: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// The transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    HttpProtobuf,
}

/// Everything the exporter is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpSettings {
    pub transport: Transport,
    /// The URL spans are sent to (for HTTP, the full `/v1/traces` URL).
    pub endpoint: String,
    /// Whether the connection uses TLS.
    pub tls: bool,
    pub ca: Option<(&'static str, PathBuf)>,
    pub client_certificate: Option<(&'static str, PathBuf)>,
    pub client_key: Option<(&'static str, PathBuf)>,
    pub gzip: bool,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
}

/// The variable for a setting: the traces one when set, else the general
/// one; the name of the variable that gave the value is returned with it.
fn lookup(
    get: &impl Fn(&str) -> Option<String>,
    traces: &'static str,
    general: &'static str,
) -> Option<(&'static str, String)> {
    let value = |name: &'static str| {
        get(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .map(|v| (name, v))
    };
    value(traces).or_else(|| value(general))
}

fn decode(variable: &'static str, text: &str) -> Result<String, OtlpError> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.trim().to_string())
        .map_err(|e| OtlpError::Setting {
            variable,
            reason: format!("{text:?} is not UTF-8 once percent-decoded: {e}"),
        })
}

/// `key=value,key2=value2`, percent-decoded.
fn headers(variable: &'static str, text: &str) -> Result<Vec<(String, String)>, OtlpError> {
    let mut out = Vec::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(OtlpError::Setting {
                variable,
                reason: format!("{pair:?} is not key=value"),
            });
        };
        let key = decode(variable, key)?;
        let value = decode(variable, value)?;
        let valid = http::HeaderName::try_from(key.as_str()).is_ok()
            && http::HeaderValue::try_from(value.as_str()).is_ok();
        if key.is_empty() || !valid {
            return Err(OtlpError::Setting {
                variable,
                reason: format!("{pair:?} is not a valid HTTP header"),
            });
        }
        out.push((key.to_ascii_lowercase(), value));
    }
    Ok(out)
}

impl OtlpSettings {
    /// Reads the settings through `get` (the process environment in the
    /// proxy, a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, OtlpError> {
        let transport = match lookup(
            &get,
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ) {
            None => Transport::Grpc,
            Some((_, p)) if p == "grpc" => Transport::Grpc,
            Some((_, p)) if p == "http/protobuf" => Transport::HttpProtobuf,
            Some((variable, other)) => {
                return Err(OtlpError::Setting {
                    variable,
                    reason: format!("{other:?} is not supported (grpc, http/protobuf)"),
                })
            }
        };
        let insecure = lookup(
            &get,
            "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
            "OTEL_EXPORTER_OTLP_INSECURE",
        )
        .is_some_and(|(_, v)| v.eq_ignore_ascii_case("true"));
        // The traces endpoint is used as it is; the general one gets the
        // signal's path (HTTP).
        let (variable, mut endpoint, append) = match lookup(
            &get,
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ) {
            Some((variable, e)) => (variable, e, variable == "OTEL_EXPORTER_OTLP_ENDPOINT"),
            None => {
                let default = match transport {
                    Transport::Grpc => "http://localhost:4317",
                    Transport::HttpProtobuf => "http://localhost:4318",
                };
                ("OTEL_EXPORTER_OTLP_ENDPOINT", default.to_string(), true)
            }
        };
        if !endpoint.contains("://") {
            let scheme = if insecure { "http" } else { "https" };
            endpoint = format!("{scheme}://{endpoint}");
        }
        let uri: http::Uri = endpoint.parse().map_err(|e| OtlpError::Setting {
            variable,
            reason: format!("{endpoint:?} is not a URL: {e}"),
        })?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            other => {
                return Err(OtlpError::Setting {
                    variable,
                    reason: format!("scheme {other:?} is not http or https"),
                })
            }
        };
        if transport == Transport::HttpProtobuf && append {
            endpoint = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        }
        let file = |traces: &'static str, general: &'static str| {
            lookup(&get, traces, general).map(|(variable, path)| (variable, PathBuf::from(path)))
        };
        let ca = file(
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        );
        let client_certificate = file(
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        );
        let client_key = file(
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
        );
        if client_certificate.is_some() != client_key.is_some() {
            return Err(OtlpError::Setting {
                variable: "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                reason: "a client certificate and a client key go together".into(),
            });
        }
        let gzip = match lookup(
            &get,
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ) {
            None => false,
            Some((_, c)) if c == "none" => false,
            Some((_, c)) if c == "gzip" => true,
            Some((variable, other)) => {
                return Err(OtlpError::Setting {
                    variable,
                    reason: format!("{other:?} is not supported (gzip, none)"),
                })
            }
        };
        let headers = match lookup(
            &get,
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ) {
            Some((variable, text)) => headers(variable, &text)?,
            None => Vec::new(),
        };
        let timeout = match lookup(
            &get,
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ) {
            None => Duration::from_secs(10),
            Some((variable, ms)) => {
                Duration::from_millis(ms.parse().map_err(|_| OtlpError::Setting {
                    variable,
                    reason: format!("{ms:?} is not a number of milliseconds"),
                })?)
            }
        };
        Ok(Self {
            transport,
            endpoint,
            tls,
            ca,
            client_certificate,
            client_key,
            gzip,
            headers,
            timeout,
        })
    }

    fn read(file: &Option<(&'static str, PathBuf)>) -> Result<Option<Loaded>, OtlpError> {
        let Some((variable, path)) = file else {
            return Ok(None);
        };
        let loaded = Loaded {
            variable,
            path: path.clone(),
            bytes: Vec::new(),
        };
        match std::fs::read(path) {
            Ok(bytes) => Ok(Some(Loaded { bytes, ..loaded })),
            Err(e) => Err(loaded.invalid(e.to_string())),
        }
    }

    /// Builds the exporter; needs a Tokio runtime.
    pub fn exporter(&self) -> Result<opentelemetry_otlp::SpanExporter, OtlpError> {
        let ca = Self::read(&self.ca)?;
        let identity = match (
            Self::read(&self.client_certificate)?,
            Self::read(&self.client_key)?,
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            _ => None,
        };
        match self.transport {
            Transport::Grpc => {
                let mut builder = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_protocol(Protocol::Grpc)
                    .with_endpoint(self.endpoint.clone())
                    .with_timeout(self.timeout);
                if self.tls {
                    let mut tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
                    if let Some(ca) = &ca {
                        tls =
                            tls.ca_certificate(tonic::transport::Certificate::from_pem(&ca.bytes));
                    }
                    if let Some((cert, key)) = &identity {
                        tls = tls.identity(tonic::transport::Identity::from_pem(
                            &cert.bytes,
                            &key.bytes,
                        ));
                    }
                    builder = builder.with_tls_config(tls);
                }
                if self.gzip {
                    builder = builder.with_compression(Compression::Gzip);
                }
                if !self.headers.is_empty() {
                    let mut metadata = tonic::metadata::MetadataMap::new();
                    for (key, value) in &self.headers {
                        let key = tonic::metadata::MetadataKey::from_bytes(key.as_bytes());
                        let value = tonic::metadata::MetadataValue::try_from(value.as_str());
                        if let (Ok(key), Ok(value)) = (key, value) {
                            metadata.insert(key, value);
                        }
                    }
                    builder = builder.with_metadata(metadata);
                }
                Ok(builder.build()?)
            }
            Transport::HttpProtobuf => {
                let client = HyperHttp::new(self.timeout, ca.as_ref(), identity.as_ref())?;
                let mut builder = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .with_endpoint(self.endpoint.clone())
                    .with_timeout(self.timeout)
                    .with_http_client(client);
                if self.gzip {
                    builder = builder.with_compression(Compression::Gzip);
                }
                if !self.headers.is_empty() {
                    builder = builder
                        .with_headers(self.headers.iter().cloned().collect::<HashMap<_, _>>());
                }
                Ok(builder.build()?)
            }
        }
    }
}

/// A file a setting names, read, with the variable and path its errors
/// name.
#[derive(Debug)]
struct Loaded {
    variable: &'static str,
    path: PathBuf,
    bytes: Vec<u8>,
}

impl Loaded {
    fn invalid(&self, reason: String) -> OtlpError {
        OtlpError::File {
            variable: self.variable,
            path: self.path.clone(),
            reason,
        }
    }
}

type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// The HTTP/protobuf exporter's client: hyper over rustls (ring), trusting
/// the system's roots plus the configured CA, with the client certificate
/// when one is configured. Each export has the timeout.
#[derive(Debug, Clone)]
struct HyperHttp {
    client: HttpsClient,
    timeout: Duration,
}

impl HyperHttp {
    fn new(
        timeout: Duration,
        ca: Option<&Loaded>,
        identity: Option<&(Loaded, Loaded)>,
    ) -> Result<Self, OtlpError> {
        let mut roots = rustls::RootCertStore::empty();
        // Unreadable system certificates are skipped: the configured CA
        // may be all that is needed.
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if let Some(ca) = ca {
            let mut found = 0;
            for cert in CertificateDer::pem_slice_iter(&ca.bytes) {
                let cert = cert.map_err(|e| ca.invalid(format!("not PEM certificates: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| ca.invalid(format!("not a CA certificate: {e}")))?;
                found += 1;
            }
            if found == 0 {
                return Err(ca.invalid("holds no certificate".into()));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| OtlpError::Setting {
                variable: "OTEL_EXPORTER_OTLP_ENDPOINT",
                reason: format!("TLS: {e}"),
            })?
            .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(&cert.bytes)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| cert.invalid(format!("not PEM certificates: {e}")))?;
                let private = PrivateKeyDer::from_pem_slice(&key.bytes)
                    .map_err(|e| key.invalid(format!("not a PEM private key: {e}")))?;
                builder
                    .with_client_auth_cert(chain, private)
                    .map_err(|e| cert.invalid(format!("unusable with its key: {e}")))?
            }
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        })
    }
}

#[async_trait::async_trait]
impl HttpClient for HyperHttp {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = request.map(Full::new);
        let exchange = async {
            let response = self.client.request(request).await?;
            let (parts, body) = response.into_parts();
            // Collectors answer with a small protobuf; bound it anyway.
            let body = http_body_util::Limited::new(body, 4 * 1024 * 1024)
                .collect()
                .await?
                .to_bytes();
            Ok::<_, HttpError>(Response::from_parts(parts, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<OtlpSettings, OtlpError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        OtlpSettings::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn endpoints_schemes_and_paths_follow_the_specification() {
        // (variables, transport, endpoint, tls)
        type Case<'a> = (&'a [(&'a str, &'a str)], Transport, &'a str, bool);
        let cases: &[Case<'_>] = &[
            (
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")],
                Transport::Grpc,
                "http://c:4317",
                false,
            ),
            (
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4317")],
                Transport::Grpc,
                "https://c:4317",
                true,
            ),
            (
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4317")],
                Transport::Grpc,
                "https://c:4317",
                true,
            ),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4317"),
                    ("OTEL_EXPORTER_OTLP_INSECURE", "TRUE"),
                ],
                Transport::Grpc,
                "http://c:4317",
                false,
            ),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318/"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ],
                Transport::HttpProtobuf,
                "https://c:4318/v1/traces",
                true,
            ),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://general:4318"),
                    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:9/custom"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                    ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
                ],
                Transport::HttpProtobuf,
                "http://t:9/custom",
                false,
            ),
        ];
        for (vars, transport, endpoint, tls) in cases {
            let s = settings(vars).unwrap();
            assert_eq!(
                (s.transport, s.endpoint.as_str(), s.tls),
                (*transport, *endpoint, *tls),
                "{vars:?}"
            );
        }
    }

    #[test]
    fn compression_headers_timeout_and_files() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "api-key=s%3Dcret, X-Tenant = blue",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem"),
        ])
        .unwrap();
        assert!(s.gzip);
        assert_eq!(
            s.headers,
            [
                ("api-key".to_string(), "s=cret".to_string()),
                ("x-tenant".to_string(), "blue".to_string())
            ]
        );
        assert_eq!(s.timeout, Duration::from_millis(2500));
        assert_eq!(
            s.ca,
            Some((
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
                PathBuf::from("/etc/ca.pem")
            ))
        );
    }

    #[test]
    fn what_cannot_be_honoured_is_an_error_naming_the_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
                "OTEL_EXPORTER_OTLP_PROTOCOL: \"http/json\" is not supported (grpc, http/protobuf)",
            ),
            (
                &[("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "zstd")],
                "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION: \"zstd\" is not supported (gzip, none)",
            ),
            (
                &[("OTEL_EXPORTER_OTLP_HEADERS", "novalue")],
                "OTEL_EXPORTER_OTLP_HEADERS: \"novalue\" is not key=value",
            ),
            (
                &[("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")],
                "OTEL_EXPORTER_OTLP_TIMEOUT: \"10s\" is not a number of milliseconds",
            ),
            (
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://c:21")],
                "OTEL_EXPORTER_OTLP_ENDPOINT: scheme Some(\"ftp\") is not http or https",
            ),
            (
                &[("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/k.pem")],
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE: a client certificate and a client key go together",
            ),
        ];
        for (vars, message) in cases {
            assert_eq!(settings(vars).unwrap_err().to_string(), *message);
        }
    }

    #[tokio::test]
    async fn an_unreadable_certificate_file_names_the_variable_and_the_path() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4317"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
                "/nonexistent/ca.pem",
            ),
        ])
        .unwrap();
        let error = s.exporter().unwrap_err().to_string();
        assert!(
            error.starts_with("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE: /nonexistent/ca.pem: "),
            "{error}"
        );
    }

    #[tokio::test]
    async fn unusable_certificate_files_name_their_variable_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let junk = junk.display().to_string();
        let http = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ];
        let with = |extra: &[(&'static str, &str)]| {
            let mut vars: Vec<(&str, &str)> = http.to_vec();
            vars.extend_from_slice(extra);
            settings(&vars).unwrap().exporter().unwrap_err().to_string()
        };
        assert_eq!(
            with(&[("OTEL_EXPORTER_OTLP_CERTIFICATE", &junk)]),
            format!("OTEL_EXPORTER_OTLP_CERTIFICATE: {junk}: holds no certificate")
        );
        assert_eq!(
            with(&[
                ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &junk),
                ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", &junk),
            ]),
            format!(
                "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY: {junk}: not a PEM private key: no items found"
            )
        );
    }
}
