//! The config client: one delta stream to the control plane.
//!
//! On every (re)connect it reports what the store holds, so the control
//! plane sends only the difference. Each response is applied to the
//! [`ConfigStore`] atomically and answered with an ACK, or a NACK naming the
//! resources refused. While the control plane is away the store keeps its
//! last good configuration and the client reconnects with capped,
//! jittered exponential backoff.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_api::proto::config_discovery_client::ConfigDiscoveryClient;
use ferry_api::proto::{DeltaRequest, ResourceError as WireError};
use prost::Message;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use ferry_core::state::ConfigStore;

use crate::net::backoff::Backoff;

/// The config stream to the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct XdsSettings {
    /// The control plane replicas (one or more).
    pub urls: Vec<String>,
    /// TCP connect to the control plane.
    pub connect_timeout: Duration,
    /// HTTP/2 keepalive PING interval on the stream.
    pub keepalive_interval: Duration,
    /// How long an unanswered keepalive PING may wait before the stream is
    /// taken for dead.
    pub keepalive_timeout: Duration,
    /// Reconnect backoff: first step and cap.
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
    /// Largest config message accepted (a full initial push at scale).
    pub max_message_bytes: usize,
    /// Fault injection (`--refuse-resources`): refused as if invalid.
    pub refuse: Vec<ferry_api::ResourceKey>,
}

/// The control plane's endpoints, one per replica URL (http:// or
/// https://), with keepalives, and mTLS with the node credential when `tls`
/// is given.
pub fn control_plane_endpoints(
    settings: &XdsSettings,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Result<Vec<tonic::transport::Endpoint>, tonic::transport::Error> {
    settings
        .urls
        .iter()
        .map(|url| {
            let mut endpoint = tonic::transport::Endpoint::from_shared(url.clone())?
                .connect_timeout(settings.connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(settings.keepalive_interval)
                .keep_alive_timeout(settings.keepalive_timeout);
            if let Some(tls) = &tls {
                endpoint = endpoint.tls_config(tls.clone())?;
            }
            Ok(endpoint)
        })
        .collect()
}

/// A channel for unary calls (the CA) to any replica: connected lazily to
/// the one replica, or balanced over several (a replica that does not
/// answer is left out until it does).
pub fn control_plane_channel(
    endpoints: Vec<tonic::transport::Endpoint>,
) -> tonic::transport::Channel {
    match <[_; 1]>::try_from(endpoints) {
        Ok([one]) => one.connect_lazy(),
        Err(many) => tonic::transport::Channel::balance_list(many.into_iter()),
    }
}

/// Where a node's proxy streams from first: spread over the replicas by
/// node name, so that proxies do not all start on the first.
fn first_replica(node: &str, replicas: usize) -> usize {
    let hash = node.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    usize::try_from(hash % replicas.max(1) as u64).unwrap_or(0)
}

/// Errors of one stream session; all of them lead to a reconnect.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    #[error("cannot connect to the control plane: {0}")]
    Connect(#[source] tonic::transport::Error),
    #[error("config stream failed: {0}")]
    Stream(#[from] tonic::Status),
    #[error("config stream closed by the client side")]
    Closed,
    #[error(transparent)]
    Token(#[from] crate::identity::token::TokenError),
}

/// What the client has seen, for `/config_dump`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct XdsStatus {
    pub control_plane: String,
    pub connected: bool,
    /// Streams established since start.
    pub connects: u64,
    pub responses: u64,
    pub resources_received: u64,
    pub removals_received: u64,
    pub nacks: u64,
    pub last_error: Option<String>,
    pub last_response: Option<LastResponse>,
    /// The first response of the current (or last) stream: what bringing
    /// the proxy in sync took (a delta against what it held).
    pub last_resync: Option<LastResponse>,
}

/// Summary of the most recent response.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LastResponse {
    pub nonce: String,
    pub revision: u64,
    pub resources: usize,
    pub removed: usize,
    pub rejected: Vec<String>,
    pub bytes: usize,
    /// Whether this was the first response of its stream (the resync).
    pub first_of_stream: bool,
    pub unix_time: u64,
}

/// The delta config client of one node proxy.
#[derive(Debug, Clone)]
pub struct XdsClient {
    /// The replicas; one stream at a time, to `endpoints[next]`.
    endpoints: Vec<tonic::transport::Endpoint>,
    next: usize,
    node: String,
    store: Arc<ConfigStore>,
    status: Arc<Mutex<XdsStatus>>,
    token: Option<crate::identity::token::TokenFile>,
    settings: XdsSettings,
    /// Bumped every time a stream is established.
    connects: Arc<tokio::sync::watch::Sender<u64>>,
}

impl XdsClient {
    /// `endpoints`: the control plane's replicas (at least one), with TLS
    /// settings when the proxy has node credentials (see
    /// [`control_plane_endpoints`]).
    pub fn new(
        endpoints: Vec<tonic::transport::Endpoint>,
        node: impl Into<String>,
        store: Arc<ConfigStore>,
        settings: XdsSettings,
    ) -> Self {
        let node = node.into();
        let next = first_replica(&node, endpoints.len());
        Self {
            status: Arc::new(Mutex::new(XdsStatus {
                control_plane: endpoints
                    .get(next)
                    .map(|e| e.uri().to_string())
                    .unwrap_or_default(),
                ..XdsStatus::default()
            })),
            endpoints,
            next,
            node,
            store,
            token: None,
            settings,
            connects: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    /// Notified every time a config stream is established (the control
    /// plane is reachable again: a good time to retry what failed).
    pub fn connects(&self) -> tokio::sync::watch::Receiver<u64> {
        self.connects.subscribe()
    }

    /// Proves the node with a service account token (in a cluster).
    pub fn with_token(mut self, token: Option<crate::identity::token::TokenFile>) -> Self {
        self.token = token;
        self
    }

    /// A copy of the client's status.
    pub fn status(&self) -> XdsStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Takes the resources `--refuse-resources` names out of `response`,
    /// as rejections (fault injection: a drill of NACK handling).
    fn refuse_injected(
        &self,
        response: &mut ferry_api::proto::DeltaResponse,
    ) -> Vec<ferry_api::ResourceError> {
        if self.settings.refuse.is_empty() {
            return Vec::new();
        }
        let mut refused = Vec::new();
        response.resources.retain(|r| {
            let key = r.key.as_ref().and_then(ferry_api::ResourceKey::from_proto);
            match key.filter(|k| self.settings.refuse.contains(k)) {
                Some(key) => {
                    refused.push(ferry_api::ResourceError {
                        key,
                        message: "refused by --refuse-resources (fault injection)".into(),
                    });
                    false
                }
                None => true,
            }
        });
        refused
    }

    fn update(&self, f: impl FnOnce(&mut XdsStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Runs until the task is dropped: stream, and reconnect when it
    /// breaks, to the next replica (the one that ended the stream is
    /// likely going away; with one replica, to the same).
    pub async fn run(mut self) {
        let mut backoff =
            Backoff::new(self.settings.reconnect_initial, self.settings.reconnect_max);
        loop {
            let Some(endpoint) = self.endpoints.get(self.next).cloned() else {
                tracing::error!("no control plane to connect to");
                return;
            };
            let address = endpoint.uri().to_string();
            self.update(|s| s.control_plane = address.clone());
            let result = self.session(&endpoint, &address, &mut backoff).await;
            self.update(|s| {
                s.connected = false;
                s.last_error = result.as_ref().err().map(ToString::to_string);
            });
            if let Err(e) = result {
                tracing::warn!(control_plane = %address, error = %e, "config stream down; serving the last good configuration");
            }
            self.next = (self.next + 1) % self.endpoints.len();
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    async fn session(
        &self,
        endpoint: &tonic::transport::Endpoint,
        address: &str,
        backoff: &mut Backoff,
    ) -> Result<(), XdsError> {
        let channel = endpoint.connect().await.map_err(XdsError::Connect)?;
        let mut client = ConfigDiscoveryClient::new(channel)
            .max_decoding_message_size(self.settings.max_message_bytes);

        let (tx, rx) = mpsc::channel(4);
        let held = self.store.snapshot().versions();
        let held_count = held.len();
        tx.send(DeltaRequest {
            node: self.node.clone(),
            initial_versions: held,
            ..DeltaRequest::default()
        })
        .await
        .map_err(|_| XdsError::Closed)?;
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        crate::identity::token::authorize(self.token.as_ref(), &mut request)?;
        let mut responses = client.delta_config(request).await?.into_inner();
        self.update(|s| {
            s.connected = true;
            s.connects += 1;
            s.last_error = None;
        });
        tracing::info!(control_plane = %address, node = %self.node, held = held_count, "config stream established");
        self.connects.send_modify(|n| *n += 1);

        let mut first = true;
        while let Some(mut response) = responses.message().await? {
            backoff.reset();
            let bytes = response.encoded_len();
            let nonce = response.nonce.clone();
            let revision = response.revision;
            let refused = self.refuse_injected(&mut response);
            let mut report = self.store.apply(response);
            report.rejected.extend(refused);
            let errors: Vec<WireError> = report
                .rejected
                .iter()
                .map(|e| WireError {
                    key: Some(e.key.to_proto()),
                    message: e.message.clone(),
                })
                .collect();
            for e in &report.rejected {
                tracing::warn!(resource = %e.key, reason = %e.message, "rejected a resource; keeping its last good version");
            }
            tracing::info!(
                revision,
                applied = report.applied,
                removed = report.removed,
                rejected = errors.len(),
                bytes,
                "configuration applied"
            );
            self.update(|s| {
                s.responses += 1;
                s.resources_received += report.applied as u64 + report.rejected.len() as u64;
                s.removals_received += report.removed as u64;
                s.nacks += u64::from(!errors.is_empty());
                let response = LastResponse {
                    nonce: nonce.clone(),
                    revision,
                    resources: report.applied + report.rejected.len(),
                    removed: report.removed,
                    rejected: report.rejected.iter().map(ToString::to_string).collect(),
                    bytes,
                    first_of_stream: first,
                    unix_time: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                };
                if first {
                    s.last_resync = Some(response.clone());
                }
                s.last_response = Some(response);
            });
            first = false;
            tx.send(DeltaRequest {
                response_nonce: nonce,
                errors,
                ..DeltaRequest::default()
            })
            .await
            .map_err(|_| XdsError::Closed)?;
        }
        Err(XdsError::Stream(tonic::Status::unavailable(
            "control plane closed the stream",
        )))
    }
}
