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

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ferry_api::identity::Identity;
use ferry_core::arrival::{self, Arrival, InboundRefusal};
use ferry_core::state::ConfigStore;
use futures::future::Either;
use futures::FutureExt;

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
    /// The pod sees its client's address where the node allows it.
    pub sources: Arc<crate::net::transparent::SourceAddresses>,
}

/// What [`Inbound::open_pod`] gives: the connection's tracking and
/// telemetry, and the connection to the pod.
type OpenedPod = (
    crate::tracker::TrackedConnection,
    crate::telemetry::ConnectionTelemetry,
    Result<tokio::net::TcpStream, ConnectError>,
);

impl Inbound {
    /// Opens the local pod for an admitted connection: tracks its check
    /// (a policy update may revoke it), starts its telemetry, connects.
    /// The same for both ways in (HBONE and plaintext).
    ///
    /// Boxed: the connect is short-lived and larger than the relay that
    /// follows it in the same task; unboxed, every connection's task would
    /// keep room for it for as long as the connection is open.
    fn open_pod<'a>(
        &'a self,
        check: ferry_core::policy::Check,
        parties: &'a Parties,
        carried: Carried,
        source: SocketAddr,
        target: SocketAddr,
        parent: Option<&'a opentelemetry::Context>,
    ) -> Pin<Box<impl Future<Output = OpenedPod> + 'a>> {
        Box::pin(self.connect_pod(check, parties, carried, source, target, parent))
    }

    async fn connect_pod(
        &self,
        check: ferry_core::policy::Check,
        parties: &Parties,
        carried: Carried,
        source: SocketAddr,
        target: SocketAddr,
        parent: Option<&opentelemetry::Context>,
    ) -> OpenedPod {
        let tracked = self.tracker.track(check, &self.store);
        let telemetry = self.telemetry.begin(
            Reporter::Destination,
            parties,
            carried,
            source,
            target,
            parent,
        );
        // The pod sees the client's address (the source pod's, from the
        // tunnel or the plaintext connection), where the node allows it.
        let source_is_local_pod = self
            .store
            .snapshot()
            .workload_by_ip(&source.ip())
            .is_some_and(|w| w.node.as_deref() == Some(self.node.as_str()));
        let upstream = self
            .sources
            .connect(
                source.ip(),
                target,
                source_is_local_pod,
                self.connect_timeout,
            )
            .await;
        (tracked, telemetry, upstream)
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
    /// and checked by the HBONE listener). Admission is decided at once;
    /// what is left runs in two stages chained (connect to the pod, then
    /// relay), not one `async fn`: the stream's task holds one stage at a
    /// time, and not the request it no longer needs (about 900 bytes less
    /// for every open stream; docs/benchmarks.md).
    pub fn stream(
        self: Arc<Self>,
        tunnel: Tunnel,
        mut respond: h2::server::SendResponse<bytes::Bytes>,
        identity: Arc<Identity>,
        peer: SocketAddr,
    ) -> impl std::future::Future<Output = ()> {
        let Tunnel {
            target,
            client,
            request,
        } = tunnel;
        let state = self.store.snapshot();
        let decided = arrival::admit(
            &state,
            &self.node,
            Arrival::Tunnel {
                peer,
                namespace: &identity.namespace,
                service_account: &identity.service_account,
                forwarded: client.as_deref(),
            },
            target,
        );
        let source = decided.source;
        let parties = Parties {
            source: state.peer_labels(&source.ip()).cloned(),
            destination: state.peer_labels(&target.ip()).cloned(),
            ..Parties::default()
        };
        let check = match decided.outcome {
            Ok(check) => check,
            Err(refusal) => {
                let (status, reason) = match &refusal {
                    InboundRefusal::NotConfigured => (
                        http::StatusCode::SERVICE_UNAVAILABLE,
                        FailureReason::NotConfigured,
                    ),
                    InboundRefusal::NotHere(_) => {
                        (http::StatusCode::NOT_FOUND, FailureReason::Refused)
                    }
                    InboundRefusal::Impersonation(_) => {
                        (http::StatusCode::FORBIDDEN, FailureReason::Refused)
                    }
                    InboundRefusal::Denied(_) => {
                        (http::StatusCode::FORBIDDEN, FailureReason::PolicyDenied)
                    }
                };
                tracing::info!(%peer, %identity, %source, %target, %refusal, "HBONE stream refused");
                self.refuse(
                    &mut respond,
                    status,
                    reason,
                    &parties,
                    source,
                    target,
                    &refusal,
                );
                return Either::Left(std::future::ready(()));
            }
        };
        drop(state);
        let parent = crate::telemetry::trace::parent_from(request.headers());
        let body = request.into_body();
        let connect = async move {
            let (tracked, mut telemetry, upstream) = self
                .open_pod(
                    check,
                    &parties,
                    Carried::Hbone,
                    source,
                    target,
                    Some(&parent),
                )
                .await;
            let upstream = match upstream {
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
                    return None;
                }
            };
            let send = match respond.send_response(http::Response::new(()), false) {
                Ok(send) => send,
                Err(e) => {
                    tracing::debug!(error = %e, "client went away before the stream opened");
                    return None;
                }
            };
            telemetry.established();
            Some((upstream, send, tracked, telemetry))
        };
        Either::Right(connect.then(move |connected| {
            let Some((upstream, send, tracked, telemetry)) = connected else {
                return Either::Left(std::future::ready(()));
            };
            let peer = Peer::H2 { send, recv: body };
            // The TCP side is the pod (the server): its bytes go back to the client.
            Either::Right(relay(upstream, peer, tracked.revoked()).map(
                move |(transferred, ended)| {
                    telemetry.close(transferred.to_tcp, transferred.from_tcp, ended.as_str());
                    drop(tracked);
                },
            ))
        }))
    }
}

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
