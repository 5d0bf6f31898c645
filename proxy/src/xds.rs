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
    pub url: String,
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
}

/// The control plane endpoint: `url` (http:// or https://) with keepalives,
/// and mTLS with the node credential when `tls` is given.
pub fn control_plane_endpoint(
    settings: &XdsSettings,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(settings.url.clone())?
        .connect_timeout(settings.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls)?;
    }
    Ok(endpoint)
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
    endpoint: tonic::transport::Endpoint,
    address: String,
    node: String,
    store: Arc<ConfigStore>,
    status: Arc<Mutex<XdsStatus>>,
    token: Option<crate::identity::token::TokenFile>,
    settings: XdsSettings,
    /// Bumped every time a stream is established.
    connects: Arc<tokio::sync::watch::Sender<u64>>,
}

impl XdsClient {
    /// `endpoint`: the control plane, with TLS settings when the proxy has
    /// node credentials (see [`control_plane_endpoint`]).
    pub fn new(
        endpoint: tonic::transport::Endpoint,
        node: impl Into<String>,
        store: Arc<ConfigStore>,
        settings: XdsSettings,
    ) -> Self {
        let address = endpoint.uri().to_string();
        Self {
            endpoint,
            status: Arc::new(Mutex::new(XdsStatus {
                control_plane: address.clone(),
                ..XdsStatus::default()
            })),
            address,
            node: node.into(),
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

    fn update(&self, f: impl FnOnce(&mut XdsStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Runs until the task is dropped: stream, and reconnect when it breaks.
    pub async fn run(self) {
        let mut backoff =
            Backoff::new(self.settings.reconnect_initial, self.settings.reconnect_max);
        loop {
            let result = self.session(&mut backoff).await;
            self.update(|s| {
                s.connected = false;
                s.last_error = result.as_ref().err().map(ToString::to_string);
            });
            if let Err(e) = result {
                tracing::warn!(error = %e, "config stream down; serving the last good configuration");
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    async fn session(&self, backoff: &mut Backoff) -> Result<(), XdsError> {
        let channel = self.endpoint.connect().await.map_err(XdsError::Connect)?;
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
        tracing::info!(control_plane = %self.address, node = %self.node, held = held_count, "config stream established");
        self.connects.send_modify(|n| *n += 1);

        let mut first = true;
        while let Some(response) = responses.message().await? {
            backoff.reset();
            let bytes = response.encoded_len();
            let nonce = response.nonce.clone();
            let revision = response.revision;
            let report = self.store.apply(response);
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
                s.last_response = Some(LastResponse {
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
                });
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
