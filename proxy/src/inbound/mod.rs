//! Inbound: what the node proxy does with a connection for one of its
//! pods, once it has arrived.
//!
//! - Over HBONE ([`Inbound::stream`], fed by [`crate::hbone::server`]): a
//!   CONNECT stream is refused when its target is not a workload on this
//!   node (404), when the source it claims does not carry the identity the
//!   TLS handshake proved (403), when the destination's ingress policy
//!   denies it (403), or when the pod cannot be reached (503, 504);
//!   otherwise it is relayed to the pod.
//! - In plaintext ([`plaintext`]): connections to mesh pods that did not
//!   come through a tunnel, judged by source address.
//!
//! Both keep the connection tracked, so a policy update that no longer
//! allows it closes it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_api::identity::Identity;
use ferry_core::policy::Check;
use ferry_core::state::ConfigStore;

use crate::net::connect::ConnectError;
use crate::net::relay::{relay, Peer};
use crate::telemetry::metrics::{Carried, FailureReason, Reporter};
use crate::telemetry::{Parties, Telemetry};
use crate::tracker::ConnectionTracker;

pub mod plaintext;

pub use plaintext::PlaintextInbound;

/// What inbound connections need.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub node: String,
    pub store: Arc<ConfigStore>,
    pub tracker: Arc<ConnectionTracker>,
    pub telemetry: Arc<Telemetry>,
    /// Longest a connection to a local pod may take.
    pub connect_timeout: Duration,
}

impl Inbound {
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
            self.tracker.count_denied();
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

    /// Handles one CONNECT stream from an authenticated peer proxy (read
    /// and checked by the HBONE listener).
    pub async fn stream(
        &self,
        tunnel: Tunnel,
        mut respond: h2::server::SendResponse<bytes::Bytes>,
        identity: Arc<Identity>,
        peer: SocketAddr,
    ) {
        let Tunnel {
            target,
            client,
            request,
        } = tunnel;
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
        let check = Check {
            source: source.ip(),
            destination: target.ip(),
            port: target.port(),
            egress: false,
            ingress: true,
        };
        if let Err(reason) = state.enforce(&check) {
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
        let upstream = match crate::net::connect::connect(target, self.connect_timeout).await {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::info!(%identity, %target, error = %e, "pod unreachable");
                let status = match e {
                    ConnectError::Timeout(_) => http::StatusCode::GATEWAY_TIMEOUT,
                    ConnectError::Io { .. } => http::StatusCode::SERVICE_UNAVAILABLE,
                };
                self.refuse(
                    &mut respond,
                    status,
                    FailureReason::ConnectError,
                    &parties,
                    source,
                    target,
                    &e,
                );
                return;
            }
        };
        let send = match respond.send_response(http::Response::new(()), false) {
            Ok(send) => send,
            Err(e) => {
                tracing::debug!(error = %e, "client went away before the stream opened");
                return;
            }
        };
        telemetry.established();
        let peer = Peer::H2 {
            send,
            recv: request.into_body(),
        };
        // The TCP side is the pod (the server): its bytes go back to the client.
        let (transferred, ended) = relay(upstream, peer, tracked.revoked()).await;
        telemetry.close(transferred.to_tcp, transferred.from_tcp, ended.as_str());
    }
}

/// Answers a CONNECT stream with `status` and no body.
/// A CONNECT stream from a peer proxy, as the HBONE listener read it.
#[derive(Debug)]
pub struct Tunnel {
    /// The pod address asked for.
    pub target: SocketAddr,
    /// The source the peer proxy reports (`forwarded: for="ip:port"`).
    pub client: Option<String>,
    /// The request itself: its body is the stream's bytes, its headers
    /// carry the trace context.
    pub request: http::Request<h2::RecvStream>,
}

/// Answers a stream with `status` and no body.
pub fn answer(respond: &mut h2::server::SendResponse<bytes::Bytes>, status: http::StatusCode) {
    let mut response = http::Response::new(());
    *response.status_mut() = status;
    let _ = respond.send_response(response, true);
}
