//! The admin HTTP server: readiness and a dump of the configuration.
//!
//! - `GET /healthz/ready`: 200 once the first configuration is applied
//!   (and from then on, also while the control plane is away), else 503.
//! - `GET /config_dump`: JSON of every resource the proxy holds, with its
//!   version, plus the config stream's status.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::state::ConfigStore;
use crate::xds::{XdsClient, XdsStatus};

/// Shared handles the admin endpoints read.
#[derive(Debug, Clone)]
pub struct Admin {
    pub node: String,
    pub store: Arc<ConfigStore>,
    pub xds: XdsClient,
    pub identities: Option<Arc<crate::identity::IdentityManager>>,
    pub pool: Option<Arc<crate::tunnel::HbonePool>>,
    pub tracker: Arc<crate::policy::ConnectionTracker>,
}

#[derive(Serialize)]
struct PolicyStats {
    open_connections: usize,
    denied: u64,
    closed_by_update: u64,
}

#[derive(Serialize)]
struct DumpEntry<'a> {
    key: &'a str,
    /// Content version, hex.
    version: String,
    #[serde(flatten)]
    body: &'a ferry_api::ResourceBody,
}

#[derive(Serialize)]
struct ConfigDump<'a> {
    node: &'a str,
    /// One line for people: counts per kind.
    summary: String,
    ready: bool,
    revision: u64,
    xds: XdsStatus,
    certificates: Vec<crate::identity::CertStatus>,
    hbone_pool: Option<crate::tunnel::PoolStats>,
    policy: PolicyStats,
    resources: BTreeMap<&'static str, Vec<DumpEntry<'a>>>,
}

impl Admin {
    fn config_dump(&self) -> Result<String, serde_json::Error> {
        let snapshot = self.store.snapshot();
        let mut resources: BTreeMap<&'static str, Vec<DumpEntry<'_>>> = BTreeMap::new();
        for kind in ferry_api::Kind::ALL {
            resources.insert(kind.as_str(), Vec::new());
        }
        for r in snapshot.iter() {
            resources
                .entry(r.key.kind.as_str())
                .or_default()
                .push(DumpEntry {
                    key: &r.key.name,
                    version: format!("{:016x}", r.version),
                    body: &r.body,
                });
        }
        for list in resources.values_mut() {
            list.sort_by(|a, b| a.key.cmp(b.key));
        }
        let count = |kind: ferry_api::Kind| resources.get(kind.as_str()).map_or(0, Vec::len);
        let endpoints: usize = resources
            .get(ferry_api::Kind::Service.as_str())
            .into_iter()
            .flatten()
            .map(|e| match e.body {
                ferry_api::ResourceBody::Service(s) => s.endpoints.len(),
                _ => 0,
            })
            .sum();
        let summary = format!(
            "{} nodes, {} workloads, {} services ({endpoints} endpoints), {} policies",
            count(ferry_api::Kind::Node),
            count(ferry_api::Kind::Workload),
            count(ferry_api::Kind::Service),
            count(ferry_api::Kind::Policy),
        );
        serde_json::to_string_pretty(&ConfigDump {
            node: &self.node,
            summary,
            ready: self.store.is_ready(),
            revision: snapshot.revision(),
            xds: self.xds.status(),
            certificates: self
                .identities
                .as_ref()
                .map(|i| i.status())
                .unwrap_or_default(),
            hbone_pool: self.pool.as_ref().map(|p| p.stats()),
            policy: PolicyStats {
                open_connections: self.tracker.open_connections(),
                denied: self
                    .tracker
                    .denied
                    .load(std::sync::atomic::Ordering::Relaxed),
                closed_by_update: self
                    .tracker
                    .closed_by_update
                    .load(std::sync::atomic::Ordering::Relaxed),
            },
            resources,
        })
    }

    fn handle(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let reply = |status: StatusCode, content_type: &'static str, body: String| {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = status;
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(content_type),
            );
            response
        };
        if req.method() != Method::GET {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "only GET\n".into(),
            );
        }
        match req.uri().path() {
            "/healthz/ready" if self.store.is_ready() => {
                reply(StatusCode::OK, "text/plain", "ready\n".into())
            }
            "/healthz/ready" => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "not ready: waiting for the first configuration\n".into(),
            ),
            "/config_dump" => match self.config_dump() {
                Ok(json) => reply(StatusCode::OK, "application/json", json),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("{e}\n"),
                ),
            },
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found; try /healthz/ready or /config_dump\n".into(),
            ),
        }
    }

    /// Serves until the task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        let admin = Arc::new(self);
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let admin = admin.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let response = admin.handle(&req);
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%peer, error = %e, "admin connection ended");
                }
            });
        }
    }
}

/// Binds the admin listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
