//! Inbound plaintext: connections to a mesh pod of this node that did not
//! come through a tunnel, redirected here by the capture rules, judged by
//! their source address and passed through.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::policy::Check;
use ferry_core::state::ConfigStore;
use tokio::net::{TcpListener, TcpStream};

use crate::net::relay::{relay, Peer};
use crate::telemetry::metrics::{Carried, FailureReason, Reporter};
use crate::telemetry::{Parties, Telemetry};
use crate::tracker::ConnectionTracker;

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
    pub tracker: Arc<ConnectionTracker>,
    pub telemetry: Arc<Telemetry>,
    /// Longest a connection to a local pod may take.
    pub connect_timeout: Duration,
}

impl PlaintextInbound {
    /// Serves until the task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        let this = Arc::new(self);
        ferry_process::accept::serve(listener, "inbound plaintext", |tcp, peer| {
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
    ) -> Result<Check, (FailureReason, String)> {
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
        let check = Check {
            source: peer.ip(),
            destination: target.ip(),
            port: target.port(),
            egress: false,
            ingress: true,
        };
        state.enforce(&check).map_err(|reason| {
            (
                FailureReason::PolicyDenied,
                format!("denied by policy: {reason}"),
            )
        })?;
        Ok(check)
    }

    async fn connection(
        &self,
        client: TcpStream,
        peer: SocketAddr,
    ) -> Result<(), (FailureReason, String)> {
        let target = crate::net::original_destination(&client).map_err(|e| {
            (
                FailureReason::Refused,
                format!("no original destination (not redirected?): {e}"),
            )
        })?;
        let check = self.admit(peer, target).inspect_err(|_| {
            self.tracker.count_denied();
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
        let upstream = crate::net::connect::connect(target, self.connect_timeout)
            .await
            .map_err(|e| (FailureReason::ConnectError, e.to_string()))?;
        let _ = client.set_nodelay(true);
        telemetry.established();
        // The TCP side is the client.
        let (transferred, ended) = relay(client, Peer::Tcp(upstream), tracked.revoked()).await;
        telemetry.close(transferred.from_tcp, transferred.to_tcp, ended.as_str());
        Ok(())
    }
}
