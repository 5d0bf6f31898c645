//! The decision for one inbound connection, as one pure function: the twin
//! of [`crate::request`] for connections that reach this node's proxy to be
//! delivered to one of its pods.
//!
//! [`admit`] takes a snapshot, how the connection arrived ([`Arrival`]:
//! through an HBONE tunnel from a peer proxy that proved an identity, or in
//! plaintext, redirected by the capture rules) and the pod address it is
//! for, and says who the source is and whether it may be delivered
//! ([`Check`], to keep enforcing while it is open), or why not
//! ([`InboundRefusal`]). The proxy (`ferry_proxy::inbound`) carries it out.

use std::net::SocketAddr;

use crate::policy::{Check, Denied};
use crate::state::ProxyState;

/// How a connection reached this proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival<'a> {
    /// A stream of an HBONE tunnel. `namespace` and `service_account` are
    /// the peer's proven (mTLS) identity; `forwarded` is the source address
    /// the peer proxy reports (`forwarded: for="ip:port"`), which must be a
    /// workload of that identity; without it the peer's own address
    /// stands for the source.
    Tunnel {
        peer: SocketAddr,
        namespace: &'a str,
        service_account: &'a str,
        forwarded: Option<&'a str>,
    },
    /// Plaintext redirected by the capture rules, from `peer`.
    Plaintext { peer: SocketAddr },
}

/// Why an inbound connection is not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboundRefusal {
    /// No configuration yet: nothing is known to be a pod of this node.
    #[error("refused: the proxy has no configuration yet")]
    NotConfigured,
    /// The target is not a pod this proxy delivers to.
    #[error("refused: {0}")]
    NotHere(String),
    /// The source is not who the connection says it is: a forwarded
    /// address of another identity, or plaintext claiming a mesh pod's
    /// address (whose traffic always arrives over mTLS).
    #[error("refused: {0}")]
    Impersonation(String),
    /// The target's ingress policy does not allow it.
    #[error("denied by policy: {0}")]
    Denied(#[from] Denied),
}

/// One inbound connection, decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// The source as policy and telemetry see it.
    pub source: SocketAddr,
    /// The pod address asked for.
    pub target: SocketAddr,
    pub outcome: Result<Check, InboundRefusal>,
}

/// Decides a connection for `target` on `local_node`'s proxy (see the
/// module doc).
pub fn admit(
    state: &ProxyState,
    local_node: &str,
    arrival: Arrival<'_>,
    target: SocketAddr,
) -> Inbound {
    let (source, outcome) = decide(state, local_node, arrival, target);
    Inbound {
        source,
        target,
        outcome,
    }
}

fn decide(
    state: &ProxyState,
    local_node: &str,
    arrival: Arrival<'_>,
    target: SocketAddr,
) -> (SocketAddr, Result<Check, InboundRefusal>) {
    let peer = match arrival {
        Arrival::Tunnel { peer, .. } | Arrival::Plaintext { peer } => peer,
    };
    if !state.is_configured() {
        return (peer, Err(InboundRefusal::NotConfigured));
    }
    let local = state
        .workload_by_ip(&target.ip())
        .filter(|w| w.node.as_deref() == Some(local_node));
    let source = match arrival {
        Arrival::Tunnel {
            peer,
            namespace,
            service_account,
            forwarded,
        } => {
            if local.is_none() {
                return (
                    peer,
                    Err(InboundRefusal::NotHere(format!(
                        "{target} is not a workload of node {local_node}"
                    ))),
                );
            }
            match forwarded {
                None => peer,
                Some(value) => match tunnel_source(state, value, namespace, service_account) {
                    Ok(source) => source,
                    Err(reason) => return (peer, Err(InboundRefusal::Impersonation(reason))),
                },
            }
        }
        Arrival::Plaintext { peer } => {
            if !local.is_some_and(|w| w.mesh) {
                return (
                    peer,
                    Err(InboundRefusal::NotHere(format!(
                        "{target} is not a mesh pod of node {local_node}"
                    ))),
                );
            }
            if let Some(w) = state.workload_by_ip(&peer.ip()).filter(|w| w.mesh) {
                return (
                    peer,
                    Err(InboundRefusal::Impersonation(format!(
                        "plaintext from {} claims mesh pod {}/{}, whose traffic arrives over mTLS",
                        peer.ip(),
                        w.namespace,
                        w.name()
                    ))),
                );
            }
            peer
        }
    };
    let check = Check {
        source: source.ip(),
        destination: target.ip(),
        port: target.port(),
        egress: false,
        ingress: true,
        decided_at: state.revision(),
    };
    let outcome = state
        .enforce(&check)
        .map(|()| check)
        .map_err(InboundRefusal::Denied);
    (source, outcome)
}

/// The source a peer proxy reports (`for="ip:port"`), if it is a workload
/// of the identity the peer proved.
fn tunnel_source(
    state: &ProxyState,
    forwarded: &str,
    namespace: &str,
    service_account: &str,
) -> Result<SocketAddr, String> {
    let address = forwarded
        .trim()
        .strip_prefix("for=")
        .map(|v| v.trim_matches('"'))
        .and_then(|v| v.parse::<SocketAddr>().ok())
        .ok_or_else(|| format!("malformed forwarded header {forwarded:?}"))?;
    match state.workload_by_ip(&address.ip()) {
        Some(w) if *w.namespace == *namespace && *w.service_account == *service_account => {
            Ok(address)
        }
        Some(w) => Err(format!(
            "source {} is {}/{} (service account {}), not the peer identity {namespace}/{service_account}",
            address.ip(),
            w.namespace,
            w.name(),
            w.service_account
        )),
        None => Err(format!("source {} is not a known workload", address.ip())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::tests::{node, pod, sa};
    use crate::state::ConfigStore;
    use ferry_api::model::{PeerGroup, Policy, PolicyPeer, PolicyRule};
    use ferry_api::ResourceBody;
    use std::sync::Arc;

    const NODE: &str = "n2";

    /// n1: a1 10.0.1.1 and client 10.0.1.100 (mesh, each its own service
    /// account), outsider 10.0.1.50 (outside the mesh); n2: a2 10.0.2.1
    /// (mesh), legacy 10.0.2.9 (outside the mesh); a2's ingress is open to
    /// a1 only (the one member of its peer group).
    fn workload(name: &str, address: &str, node: &str, mesh: bool) -> ResourceBody {
        let mut w = pod(name, address, node, mesh);
        w.service_account = name.into();
        ResourceBody::Workload(w)
    }

    fn state() -> Arc<ProxyState> {
        let mut bodies = vec![
            node("n1", "10.1.0.1", None, true),
            node("n2", "10.1.0.2", None, true),
            workload("a1", "10.0.1.1", "n1", true),
            workload("client", "10.0.1.100", "n1", true),
            workload("outsider", "10.0.1.50", "n1", false),
            workload("a2", "10.0.2.1", "n2", true),
            workload("legacy", "10.0.2.9", "n2", false),
        ];
        bodies.push(ResourceBody::Policy(Box::new(Policy {
            namespace: "shop".into(),
            name: "a2-from-a1".into(),
            selected: vec!["shop/a2".into()],
            ingress: true,
            egress: false,
            ingress_rules: vec![PolicyRule {
                peers: vec![PolicyPeer {
                    group: Some("g-a1".into()),
                    ..PolicyPeer::default()
                }],
                ports: vec![],
            }],
            egress_rules: vec![],
        })));
        bodies.push(ResourceBody::PeerGroup(Box::new(PeerGroup {
            namespace: "shop".into(),
            group: "g-a1".into(),
            pods: vec!["a1".into()],
            selector: "pods {app=a1} in namespace shop".into(),
        })));
        ConfigStore::holding(&bodies).snapshot()
    }

    fn outcome(inbound: &Inbound) -> String {
        match &inbound.outcome {
            Ok(check) => format!("deliver from {} to {}", check.source, check.destination),
            Err(InboundRefusal::NotConfigured) => "not configured".into(),
            Err(InboundRefusal::NotHere(_)) => "not here".into(),
            Err(InboundRefusal::Impersonation(_)) => "impersonation".into(),
            Err(InboundRefusal::Denied(d)) => format!("denied {}", d.direction),
        }
    }

    fn tunnel<'a>(account: &'a str, forwarded: Option<&'a str>) -> Arrival<'a> {
        Arrival::Tunnel {
            peer: sa("10.1.0.1:50000"),
            namespace: "shop",
            service_account: account,
            forwarded,
        }
    }

    #[test]
    fn one_decision_per_inbound_connection() {
        let state = state();
        let (a1_sa, client_sa) = ("a1", "client");
        let cases: [(&str, Arrival<'_>, &str, &str); 8] = [
            (
                "a tunnel from a1 to a2: allowed by a2's policy",
                tunnel(a1_sa, Some("for=\"10.0.1.1:40000\"")),
                "10.0.2.1:8080",
                "deliver from 10.0.1.1 to 10.0.2.1",
            ),
            (
                "a tunnel from the client to a2: a2's policy denies it",
                tunnel(client_sa, Some("for=\"10.0.1.100:40000\"")),
                "10.0.2.1:8080",
                "denied ingress",
            ),
            (
                "a forwarded address of another identity",
                tunnel(client_sa, Some("for=\"10.0.1.1:40000\"")),
                "10.0.2.1:8080",
                "impersonation",
            ),
            (
                "a malformed forwarded header",
                tunnel(a1_sa, Some("10.0.1.1")),
                "10.0.2.1:8080",
                "impersonation",
            ),
            (
                "a tunnel to a pod of another node",
                tunnel(a1_sa, Some("for=\"10.0.1.1:40000\"")),
                "10.0.1.100:8080",
                "not here",
            ),
            (
                "plaintext from outside the mesh to a pod outside the mesh: not ours",
                Arrival::Plaintext {
                    peer: sa("10.0.1.50:40000"),
                },
                "10.0.2.9:8080",
                "not here",
            ),
            (
                "plaintext claiming a mesh pod's address",
                Arrival::Plaintext {
                    peer: sa("10.0.1.1:40000"),
                },
                "10.0.2.1:8080",
                "impersonation",
            ),
            (
                "plaintext from outside the mesh to a2: its policy admits a1 only",
                Arrival::Plaintext {
                    peer: sa("10.0.1.50:40000"),
                },
                "10.0.2.1:8080",
                "denied ingress",
            ),
        ];
        for (case, arrival, target, want) in cases {
            let inbound = admit(&state, NODE, arrival, sa(target));
            assert_eq!(outcome(&inbound), want, "{case}");
        }
    }

    #[test]
    fn without_a_forwarded_source_the_peer_stands_for_it_and_nothing_passes_unconfigured() {
        let state = state();
        let inbound = admit(&state, NODE, tunnel("a1", None), sa("10.0.2.1:8080"));
        assert_eq!(inbound.source, sa("10.1.0.1:50000"));
        let empty = ProxyState::default();
        let inbound = admit(&empty, NODE, tunnel("a1", None), sa("10.0.2.1:8080"));
        assert_eq!(outcome(&inbound), "not configured");
    }
}
