//! The HBONE listener (port 15008): terminates mutual TLS, accepts HTTP/2
//! CONNECT streams for workloads on this node, and splices each to its pod.
//!
//! A stream is refused when its target is not a workload on this node (404)
//! or the pod cannot be reached (503). Plaintext, a client without a mesh
//! certificate, a certificate from another CA or trust domain, or an
//! expired one fail the TLS handshake. The peer's verified identity is
//! recorded with every stream for the policy and telemetry that use it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_api::identity::Identity;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::state::ConfigStore;
use crate::telemetry::metrics::{Carried, FailureReason, Reporter};
use crate::telemetry::{Parties, Telemetry};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an HBONE connection ended badly; TLS failures are counted.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("{0}")]
    Tls(String),
    #[error("{0}")]
    Other(String),
}

/// What the listener needs.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub node: String,
    pub store: Arc<ConfigStore>,
    pub tls: Arc<rustls::ServerConfig>,
    pub tracker: Arc<crate::policy::ConnectionTracker>,
    pub telemetry: Arc<Telemetry>,
}

impl Inbound {
    /// Serves until the task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        let this = Arc::new(self);
        let acceptor = TlsAcceptor::from(this.tls.clone());
        crate::listener::serve(listener, "hbone", |tcp, peer| {
            let this = this.clone();
            let acceptor = acceptor.clone();
            async move {
                let local = tcp.local_addr().ok();
                if let Err(e) = this.clone().connection(acceptor, tcp, peer).await {
                    tracing::info!(%peer, error = %e, "HBONE connection refused");
                    if let ConnectionError::Tls(_) = e {
                        let target: &dyn std::fmt::Display = match &local {
                            Some(l) => l,
                            None => &"-",
                        };
                        this.telemetry.failure(
                            Reporter::Destination,
                            &Parties::default(),
                            FailureReason::TlsFailure,
                            peer,
                            target,
                            &e,
                        );
                    }
                }
            }
        })
        .await
    }

    async fn connection(
        self: Arc<Self>,
        acceptor: TlsAcceptor,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> Result<(), ConnectionError> {
        let _ = tcp.set_nodelay(true);
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
            .await
            .map_err(|_| ConnectionError::Tls("TLS handshake timed out".into()))?
            .map_err(|e| ConnectionError::Tls(format!("TLS handshake failed: {e}")))?;
        let identity = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(crate::tls::identity_of)
            .transpose()
            .map_err(|e| ConnectionError::Other(e.to_string()))?
            .ok_or_else(|| ConnectionError::Tls("no client certificate".into()))?;
        let mut connection = h2::server::Builder::new()
            .initial_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .max_frame_size(crate::tunnel::MAX_FRAME)
            .max_send_buffer_size(1 << 20)
            .handshake::<_, bytes::Bytes>(tls)
            .await
            .map_err(|e| ConnectionError::Other(format!("HTTP/2 handshake: {e}")))?;
        tracing::debug!(%peer, %identity, "HBONE connection accepted");
        let identity = Arc::new(identity);
        while let Some(next) = connection.accept().await {
            let (request, respond) = match next {
                Ok(stream) => stream,
                Err(e) => return Err(ConnectionError::Other(format!("HTTP/2: {e}"))),
            };
            let this = self.clone();
            let identity = identity.clone();
            tokio::spawn(async move { this.stream(request, respond, identity, peer).await });
        }
        Ok(())
    }

    /// The source pod address from the `forwarded` header, checked against
    /// the peer's identity.
    fn verified_source(
        &self,
        forwarded: Option<&str>,
        identity: &Identity,
    ) -> Result<Option<SocketAddr>, String> {
        let Some(value) = forwarded else {
            return Ok(None);
        };
        let address = value
            .trim()
            .strip_prefix("for=")
            .map(|v| v.trim_matches('"'))
            .and_then(|v| v.parse::<SocketAddr>().ok())
            .ok_or_else(|| format!("malformed forwarded header {value:?}"))?;
        let state = self.store.snapshot();
        match state.workload_by_ip(&address.ip()) {
            Some(w)
                if w.namespace == identity.namespace
                    && w.service_account == identity.service_account =>
            {
                Ok(Some(address))
            }
            Some(w) => Err(format!(
                "source {} is {}/{} (service account {}), not the peer identity {identity}",
                address.ip(),
                w.namespace,
                w.name,
                w.service_account
            )),
            None => Err(format!("source {} is not a known workload", address.ip())),
        }
    }

    /// Refuses a stream that reached this proxy: counts the failure (and
    /// a 403 as a denial) and answers the client proxy with `status`.
    #[allow(clippy::too_many_arguments)]
    fn refuse(
        &self,
        respond: &mut h2::server::SendResponse<bytes::Bytes>,
        status: http::StatusCode,
        reason: FailureReason,
        parties: &Parties,
        client: SocketAddr,
        target: SocketAddr,
        detail: &dyn std::fmt::Display,
    ) {
        if status == http::StatusCode::FORBIDDEN {
            self.tracker
                .denied
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.telemetry.failure(
            Reporter::Destination,
            parties,
            reason,
            client,
            &target,
            detail,
        );
        answer(respond, status);
    }

    async fn stream(
        &self,
        request: http::Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<bytes::Bytes>,
        identity: Arc<Identity>,
        peer: SocketAddr,
    ) {
        if request.method() != http::Method::CONNECT {
            answer(&mut respond, http::StatusCode::METHOD_NOT_ALLOWED);
            return;
        }
        let Some(target) = request
            .uri()
            .authority()
            .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
        else {
            answer(&mut respond, http::StatusCode::BAD_REQUEST);
            return;
        };
        let client = request
            .headers()
            .get(crate::tunnel::FORWARDED)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let state = self.store.snapshot();
        let mut parties = Parties {
            destination: state.peer_labels(&target.ip()).cloned(),
            ..Parties::default()
        };
        let local = state
            .workload_by_ip(&target.ip())
            .is_some_and(|w| w.node.as_deref() == Some(self.node.as_str()));
        if !local {
            tracing::warn!(%peer, %identity, %target, "HBONE stream for a destination that is not a workload on this node: refused");
            self.refuse(
                &mut respond,
                http::StatusCode::NOT_FOUND,
                FailureReason::Refused,
                &parties,
                peer,
                target,
                &"not a workload of this node",
            );
            return;
        }
        // The source pod, as the client proxy reports it, must carry the
        // identity the TLS handshake proved; otherwise the peer's own
        // address stands for the source.
        let source = match self.verified_source(client.as_deref(), &identity) {
            Ok(source) => source.unwrap_or(peer),
            Err(reason) => {
                tracing::warn!(%peer, %identity, %target, %reason, "HBONE stream refused");
                self.refuse(
                    &mut respond,
                    http::StatusCode::FORBIDDEN,
                    FailureReason::Refused,
                    &parties,
                    peer,
                    target,
                    &reason,
                );
                return;
            }
        };
        parties.source = state.peer_labels(&source.ip()).cloned();
        let check = crate::policy::Check {
            source: source.ip(),
            destination: target.ip(),
            port: target.port(),
            egress: false,
            ingress: true,
        };
        if let Err(reason) = check.allowed(&state) {
            tracing::info!(%identity, %source, %target, %reason, "inbound connection denied by policy");
            self.refuse(
                &mut respond,
                http::StatusCode::FORBIDDEN,
                FailureReason::PolicyDenied,
                &parties,
                source,
                target,
                &reason,
            );
            return;
        }
        drop(state);
        let tracked = self.tracker.track(check);
        let parent = crate::telemetry::trace::parent_from(request.headers());
        let mut telemetry = self.telemetry.begin(
            Reporter::Destination,
            &parties,
            Carried::Hbone,
            source,
            target,
            Some(&parent),
        );
        let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await
        {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => {
                tracing::info!(%identity, %target, error = %e, "pod unreachable");
                self.refuse(
                    &mut respond,
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    FailureReason::ConnectError,
                    &parties,
                    source,
                    target,
                    &e,
                );
                return;
            }
            Err(_) => {
                tracing::info!(%identity, %target, "pod connect timed out");
                self.refuse(
                    &mut respond,
                    http::StatusCode::GATEWAY_TIMEOUT,
                    FailureReason::ConnectError,
                    &parties,
                    source,
                    target,
                    &"timed out",
                );
                return;
            }
        };
        let _ = upstream.set_nodelay(true);
        let send = match respond.send_response(http::Response::new(()), false) {
            Ok(send) => send,
            Err(e) => {
                tracing::debug!(error = %e, "client went away before the stream opened");
                return;
            }
        };
        telemetry.established();
        // splice counts (pod to tunnel, tunnel to pod).
        let ((from_pod, to_pod), outcome) = tokio::select! {
            copied = crate::tunnel::splice(upstream, send, request.into_body()) => (copied, "completed"),
            _ = tracked.revoked() => ((0, 0), "revoked by policy"),
        };
        telemetry.close(to_pod, from_pod, outcome);
    }
}

/// Answers a CONNECT stream with `status` and no body.
fn answer(respond: &mut h2::server::SendResponse<bytes::Bytes>, status: http::StatusCode) {
    let mut response = http::Response::new(());
    *response.status_mut() = status;
    let _ = respond.send_response(response, true);
}

/// Plaintext to a mesh pod of this node that did not come through a tunnel:
/// from a pod outside the mesh (on this node or another), another node
/// passing a connection through, or a client outside the cluster. The
/// capture rules redirect it here; it is judged by its source address
/// (ipBlocks, and the labels of a pod outside the mesh at that address) and
/// passed through. A mesh pod's address never arrives in plaintext (its
/// traffic is carried by HBONE), so plaintext claiming one is refused.
#[derive(Debug, Clone)]
pub struct PlaintextInbound {
    pub node: String,
    pub store: Arc<ConfigStore>,
    pub tracker: Arc<crate::policy::ConnectionTracker>,
    pub telemetry: Arc<Telemetry>,
}

impl PlaintextInbound {
    /// Serves until the task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        let this = Arc::new(self);
        crate::listener::serve(listener, "inbound plaintext", |tcp, peer| {
            let this = this.clone();
            async move {
                if let Err((reason, detail)) = this.connection(tcp, peer).await {
                    tracing::info!(%peer, %detail, "inbound plaintext connection refused");
                    let state = this.store.snapshot();
                    let parties = Parties {
                        source: state.peer_labels(&peer.ip()).cloned(),
                        ..Parties::default()
                    };
                    this.telemetry.failure(
                        Reporter::Destination,
                        &parties,
                        reason,
                        peer,
                        &"-",
                        &detail,
                    );
                }
            }
        })
        .await
    }

    /// The policy check for a plaintext connection, or why it is refused.
    fn admit(
        &self,
        peer: SocketAddr,
        target: SocketAddr,
    ) -> Result<crate::policy::Check, (FailureReason, String)> {
        let state = self.store.snapshot();
        match state.workload_by_ip(&target.ip()) {
            Some(w) if w.mesh && w.node.as_deref() == Some(self.node.as_str()) => {}
            _ => {
                return Err((
                    FailureReason::Refused,
                    format!("{target} is not a mesh pod of this node"),
                ))
            }
        }
        if let Some(w) = state.workload_by_ip(&peer.ip()).filter(|w| w.mesh) {
            return Err((
                FailureReason::Refused,
                format!(
                    "plaintext from {} claims mesh pod {}/{}, whose traffic arrives over mTLS",
                    peer.ip(),
                    w.namespace,
                    w.name
                ),
            ));
        }
        let check = crate::policy::Check {
            source: peer.ip(),
            destination: target.ip(),
            port: target.port(),
            egress: false,
            ingress: true,
        };
        check.allowed(&state).map_err(|reason| {
            (
                FailureReason::PolicyDenied,
                format!("denied by policy: {reason}"),
            )
        })?;
        Ok(check)
    }

    async fn connection(
        &self,
        mut client: TcpStream,
        peer: SocketAddr,
    ) -> Result<(), (FailureReason, String)> {
        let target = crate::capture::original_destination(&client).map_err(|e| {
            (
                FailureReason::Refused,
                format!("no original destination (not redirected?): {e}"),
            )
        })?;
        let check = self.admit(peer, target).inspect_err(|_| {
            self.tracker
                .denied
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })?;
        let tracked = self.tracker.track(check);
        let parties = {
            let state = self.store.snapshot();
            Parties {
                source: state.peer_labels(&peer.ip()).cloned(),
                destination: state.peer_labels(&target.ip()).cloned(),
                service: None,
            }
        };
        let mut telemetry = self.telemetry.begin(
            Reporter::Destination,
            &parties,
            Carried::Plaintext,
            peer,
            target,
            None,
        );
        let mut upstream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target))
            .await
            .map_err(|_| {
                (
                    FailureReason::ConnectError,
                    format!("connecting to {target} timed out"),
                )
            })?
            .map_err(|e| {
                (
                    FailureReason::ConnectError,
                    format!("connecting to {target}: {e}"),
                )
            })?;
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        telemetry.established();
        let ((to_pod, from_pod), outcome) = tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => (copied.unwrap_or((0, 0)), "completed"),
            _ = tracked.revoked() => ((0, 0), "revoked by policy"),
        };
        telemetry.close(to_pod, from_pod, outcome);
        Ok(())
    }
}
