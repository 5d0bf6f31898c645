//! The admin HTTP server: readiness and a dump of the configuration.
//!
//! - `GET /healthz/ready`: 200 once the first configuration is applied
//!   (and from then on, also while the control plane is away), else 503.
//! - `GET /healthz/live`: 200 while the process serves.
//! - `GET /config_dump`: JSON of every resource the proxy holds, with its
//!   version, plus the config stream's status.
//! - `GET /flows?since=SEQ&limit=N`: the flow log after `SEQ` (default
//!   0: all it holds), oldest first, at most `N` (default 1000), as JSON
//!   `{node, enabled, epoch, next, lost, flows}`; `ferryctl flows` asks
//!   again with `since=next` until a page is not full.
//! - `GET /metrics`: Prometheus metrics (docs/observability.md).
//!
//! Two listeners serve them: `--admin` (loopback by default) everything,
//! `--metrics-listen` (the node address, for probes and scrapers) only
//! what is safe to show to the network: metrics and health. The
//! configuration dump names every workload and policy of the cluster.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_process::admin::{reply, Reply};
use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::xds::{XdsClient, XdsStatus};
use ferry_core::state::ConfigStore;

/// Shared handles the admin endpoints read.
#[derive(Debug, Clone)]
pub struct Admin {
    pub node: String,
    pub store: Arc<ConfigStore>,
    pub xds: XdsClient,
    pub identities: Option<Arc<crate::identity::IdentityManager>>,
    pub pool: Option<Arc<crate::hbone::HbonePool>>,
    pub tracker: Arc<crate::tracker::ConnectionTracker>,
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    /// The proxy's effective settings ([`crate::config::Config`]), shown
    /// in the dump.
    pub settings: Arc<serde_json::Value>,
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
    hbone_pool: Option<crate::hbone::PoolStats>,
    policy: PolicyStats,
    /// Every timeout and limit the proxy runs with.
    settings: &'a serde_json::Value,
    resources: BTreeMap<&'static str, Vec<DumpEntry<'a>>>,
}

#[derive(Serialize)]
struct FlowsReply<'a> {
    node: &'a str,
    /// Whether the proxy keeps a flow log (`--flow-history`).
    enabled: bool,
    #[serde(flatten)]
    page: crate::telemetry::flows::FlowPage,
}

impl Admin {
    /// Brings the gauges that mirror other state up to date, then encodes
    /// every metric.
    fn metrics(&self) -> Result<String, std::fmt::Error> {
        use crate::telemetry::metrics::{IdentityLabel, KindLabel};
        let m = &self.telemetry.metrics;
        let state = self.store.snapshot();
        m.config_revision
            .set(i64::try_from(state.revision()).unwrap_or(i64::MAX));
        m.control_plane_connected
            .set(i64::from(self.xds.status().connected));
        if let Some(at) = state.updated_at() {
            m.config_updated.set(
                at.duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64()),
            );
        }
        for (kind, count) in state.counts() {
            m.config_resources
                .get_or_create(&KindLabel {
                    kind: kind.as_str(),
                })
                .set(count as i64);
        }
        if let Some(identities) = &self.identities {
            // Identities come and go with the node's pods: rebuilt each scrape.
            m.certificate_expiry.clear();
            for cert in identities.status() {
                m.certificate_expiry
                    .get_or_create(&IdentityLabel {
                        identity: cert.identity,
                    })
                    .set(i64::try_from(cert.not_after_unix).unwrap_or(i64::MAX));
            }
        }
        if let Some(pool) = &self.pool {
            let stats = pool.stats();
            m.hbone_connections.set(stats.connections as i64);
            m.hbone_streams.set(stats.streams as i64);
            m.hbone_handshakes.set(stats.handshakes as i64);
        }
        m.encode()
    }

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
            "{} nodes, {} workloads, {} services ({endpoints} endpoints), {} policies ({} peer group shares)",
            count(ferry_api::Kind::Node),
            count(ferry_api::Kind::Workload),
            count(ferry_api::Kind::Service),
            count(ferry_api::Kind::Policy),
            count(ferry_api::Kind::PeerGroup),
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
            settings: &self.settings,
            resources,
        })
    }

    fn handle(&self, req: &Request<Incoming>, surface: Surface) -> Reply {
        match req.uri().path() {
            "/healthz/live" => reply(StatusCode::OK, "text/plain", "live\n".into()),
            "/healthz/ready" if self.store.is_ready() => {
                reply(StatusCode::OK, "text/plain", "ready\n".into())
            }
            "/healthz/ready" => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "not ready: waiting for the first configuration\n".into(),
            ),
            "/metrics" => ferry_process::admin::metrics_reply(
                self.metrics(),
                ferry_process::self_metrics::Build {
                    version: ferry_api::build::VERSION,
                    commit: ferry_api::build::GIT_COMMIT,
                },
            ),
            "/flows" if surface == Surface::Admin => {
                let query = req.uri().query().unwrap_or("");
                let number = |name: &str| {
                    query
                        .split('&')
                        .filter_map(|pair| pair.split_once('='))
                        .find(|(k, _)| *k == name)
                        .map(|(_, v)| v.parse::<u64>())
                };
                let since = match number("since").transpose() {
                    Ok(v) => v.unwrap_or(0),
                    Err(_) => {
                        return reply(
                            StatusCode::BAD_REQUEST,
                            "text/plain",
                            "since: not a number\n".into(),
                        )
                    }
                };
                let limit = match number("limit").transpose() {
                    Ok(v) => usize::try_from(v.unwrap_or(1000)).unwrap_or(usize::MAX),
                    Err(_) => {
                        return reply(
                            StatusCode::BAD_REQUEST,
                            "text/plain",
                            "limit: not a number\n".into(),
                        )
                    }
                };
                let page = self.telemetry.flows.since(since, limit);
                match serde_json::to_string(&FlowsReply {
                    node: &self.node,
                    enabled: self.telemetry.flows.enabled(),
                    page,
                }) {
                    Ok(json) => reply(StatusCode::OK, "application/json", json),
                    Err(e) => reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        format!("{e}\n"),
                    ),
                }
            }
            "/config_dump" if surface == Surface::Admin => match self.config_dump() {
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
                match surface {
                    Surface::Admin => {
                        "not found; try /healthz/ready, /healthz/live, /config_dump, /flows or /metrics\n"
                    }
                    Surface::Stats => "not found; try /healthz/ready, /healthz/live or /metrics\n",
                }
                .into(),
            ),
        }
    }

    /// Serves `surface` until the task is dropped, within `limits`.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        surface: Surface,
        limits: ferry_process::admin::AdminLimits,
    ) {
        ferry_process::admin::serve(listener, limits, move |req| self.handle(req, surface)).await
    }
}

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// Everything (`--admin`, loopback by default).
    Admin,
    /// Metrics and health only (`--metrics-listen`).
    Stats,
}
