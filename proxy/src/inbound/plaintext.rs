//! Inbound plaintext: connections to a mesh pod of this node that did not
//! come through a tunnel, redirected here by the capture rules, judged by
//! their source address and passed through.

use std::net::SocketAddr;
use std::sync::Arc;

use ferry_core::arrival::{self, Arrival, InboundRefusal};
use ferry_core::policy::Check;
use futures::future::Either;
use futures::FutureExt;
use tokio::net::{TcpListener, TcpStream};

use super::Inbound;
use crate::net::relay::{relay, Peer};
use crate::telemetry::metrics::{Carried, FailureReason, Reporter};
use crate::telemetry::Parties;

/// Plaintext to a mesh pod of this node that did not come through a tunnel:
/// from a pod outside the mesh (on this node or another), another node
/// passing a connection through, or a client outside the cluster. The
/// capture rules redirect it here; it is judged by its source address
/// (ipBlocks, and the labels of a pod outside the mesh at that address) and
/// passed through. A mesh pod's address never arrives in plaintext (its
/// traffic is carried by HBONE), so plaintext claiming one is refused.
#[derive(Debug, Clone)]
pub struct PlaintextInbound {
    /// What every inbound connection needs (shared with HBONE inbound).
    pub inbound: Arc<Inbound>,
}

impl PlaintextInbound {
    /// Serves until the task is dropped. A connection is admitted before
    /// its task starts; the task is its connection to the pod, then its
    /// relay, chained: it holds one stage at a time (see
    /// [`Inbound::stream`]).
    pub async fn serve(self, listener: TcpListener) {
        let this = Arc::new(self);
        ferry_process::accept::serve(listener, "inbound plaintext", |client, peer| {
            let (target, check, parties) = match this.admitted(&client, peer) {
                Ok(admitted) => admitted,
                Err(refused) => {
                    this.refused(peer, refused);
                    return Either::Left(std::future::ready(()));
                }
            };
            let this = this.clone();
            let connect = {
                let inbound = this.inbound.clone();
                async move {
                    inbound
                        .open_pod(check, &parties, Carried::Plaintext, peer, target, None)
                        .await
                }
            };
            Either::Right(connect.then(move |(tracked, mut telemetry, upstream)| {
                let upstream = match upstream {
                    Ok(upstream) => upstream,
                    Err(e) => {
                        drop((tracked, telemetry));
                        this.refused(peer, (FailureReason::ConnectError, e.to_string()));
                        return Either::Left(std::future::ready(()));
                    }
                };
                let _ = client.set_nodelay(true);
                telemetry.established();
                // The TCP side is the client.
                Either::Right(relay(client, Peer::Tcp(upstream), tracked.revoked()).map(
                    move |(transferred, ended)| {
                        telemetry.close(transferred.from_tcp, transferred.to_tcp, ended.as_str());
                        drop(tracked);
                    },
                ))
            }))
        })
        .await
    }

    /// Logs and counts a refused connection.
    fn refused(&self, peer: SocketAddr, (reason, detail): (FailureReason, String)) {
        tracing::info!(%peer, %detail, "inbound plaintext connection refused");
        let state = self.inbound.store.snapshot();
        let parties = Parties {
            source: state.peer_labels(&peer.ip()).cloned(),
            ..Parties::default()
        };
        self.inbound.telemetry.failure(
            Reporter::Destination,
            &parties,
            reason,
            peer,
            &"-",
            &detail,
        );
    }

    /// The policy check for a plaintext connection, or why it is refused
    /// ([`ferry_core::arrival`]).
    fn admit(
        &self,
        peer: SocketAddr,
        target: SocketAddr,
    ) -> Result<Check, (FailureReason, String)> {
        let state = self.inbound.store.snapshot();
        let decided = arrival::admit(
            &state,
            &self.inbound.node,
            Arrival::Plaintext { peer },
            target,
        );
        decided.outcome.map_err(|refusal| {
            let reason = match &refusal {
                InboundRefusal::NotConfigured => FailureReason::NotConfigured,
                InboundRefusal::NotHere(_) | InboundRefusal::Impersonation(_) => {
                    FailureReason::Refused
                }
                InboundRefusal::Denied(_) => FailureReason::PolicyDenied,
            };
            (reason, refusal.to_string())
        })
    }

    /// Where a connection was going, its policy check and its parties, or
    /// why it is refused.
    fn admitted(
        &self,
        client: &TcpStream,
        peer: SocketAddr,
    ) -> Result<(SocketAddr, Check, Parties), (FailureReason, String)> {
        let target = crate::net::original_destination(client).map_err(|e| {
            (
                FailureReason::Refused,
                format!("no original destination (not redirected?): {e}"),
            )
        })?;
        let check = self.admit(peer, target).inspect_err(|_| {
            self.inbound.tracker.count_denied();
        })?;
        let state = self.inbound.store.snapshot();
        let parties = Parties {
            source: state.peer_labels(&peer.ip()).cloned(),
            destination: state.peer_labels(&target.ip()).cloned(),
            service: None,
        };
        Ok((target, check, parties))
    }
}
