//! The decision for one outbound connection, as one pure function.
//!
//! [`decide`] takes a snapshot, the client's address and the address it
//! dialled, and returns a [`Request`]: what was reached (a service, a pod,
//! something outside the mesh), where the connection goes (the endpoint,
//! with its resolved target port), how it is carried ([`Carry`]), as whom
//! (the source workload, whose identity HBONE presents), and whether the
//! NetworkPolicy halves this proxy enforces allow it, or why not. The
//! proxy's outbound path then only dispatches on it (`ferry_proxy::outbound`).
//!
//! A proxy without configuration refuses every connection
//! ([`Refusal::NotConfigured`]): it fails closed.
//!
//! The only state it touches besides the snapshot is the load balancer's
//! round-robin and affinity memory. It allocates nothing unless it refuses
//! (the reason is text).

use std::net::SocketAddr;
use std::time::Instant;

use ferry_api::model::{Service, Workload};

use crate::policy::{Check, Denied};
use crate::route::{self, LoadBalancer, Mode, Origin, Plan};
use crate::state::ProxyState;

/// How a connection reaches its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carry<'s> {
    /// The endpoint is on this node: connect to it.
    Direct,
    /// A plain connection to the address (outside the mesh, or a source or
    /// destination without identity: the destination's proxy polices it).
    Passthrough,
    /// Through the endpoint node's proxy over mTLS: present `source`'s
    /// identity, expect `destination`'s, at that node's HBONE address.
    Hbone {
        source: &'s Workload,
        destination: &'s Workload,
        node: SocketAddr,
    },
}

impl Carry<'_> {
    /// The carrying, without its parties.
    pub fn mode(&self) -> Mode {
        match self {
            Carry::Direct => Mode::Direct,
            Carry::Passthrough => Mode::Passthrough,
            Carry::Hbone { .. } => Mode::Hbone,
        }
    }
}

/// Why a connection is not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The mesh rules refuse it (a cluster IP on a port the service does
    /// not define, a pod without an HBONE-capable node...).
    #[error("refused: {0}")]
    Refused(String),
    /// The service has no endpoint that may serve the connection.
    #[error("refused: {0}")]
    NoEndpoints(String),
    /// A NetworkPolicy this proxy enforces does not allow it.
    #[error("denied by policy: {0}")]
    Denied(#[from] Denied),
    /// The proxy has no configuration yet: it cannot tell a service from
    /// the outside world, nor which policies apply, so it refuses
    /// everything (fails closed) until the first one arrives.
    #[error("refused: the proxy has no configuration yet (it fails closed until the control plane, or its saved configuration, gives it one)")]
    NotConfigured,
}

/// One outbound connection, decided.
#[derive(Debug, Clone)]
pub struct Request<'s> {
    /// As whom: the workload of this node at the client's address, if any.
    pub source: Option<&'s Workload>,
    /// What the client dialled.
    pub destination: SocketAddr,
    /// What: the service the destination belongs to, if any.
    pub service: Option<&'s Service>,
    /// Where: the endpoint chosen, once one is (a refusal before the choice
    /// leaves it `None`).
    pub endpoint: Option<SocketAddr>,
    /// How, and whether at all.
    pub outcome: Result<Admitted<'s>, Refusal>,
}

/// An allowed connection: how to carry it, and the policy halves to keep
/// enforcing while it is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted<'s> {
    pub endpoint: SocketAddr,
    pub carry: Carry<'s>,
    pub check: Check,
}

/// Decides a connection from `client` to `destination` on `local_node`'s
/// proxy (see the module doc).
pub fn decide<'s>(
    state: &'s ProxyState,
    lb: &LoadBalancer,
    local_node: &str,
    client: SocketAddr,
    destination: SocketAddr,
    now: Instant,
) -> Request<'s> {
    if !state.is_configured() {
        return Request {
            source: None,
            destination,
            service: None,
            endpoint: None,
            outcome: Err(Refusal::NotConfigured),
        };
    }
    // One lookup of the client serves both questions: is it a workload of
    // this node (the source), and is it a pod of the cluster at all.
    let client_ip = client.ip().to_canonical();
    let client_workload = state.workload_by_ip(&client_ip);
    let source = client_workload.filter(|w| w.node.as_deref() == Some(local_node));
    // A pod of the cluster, or this node itself: `externalTrafficPolicy:
    // Local` does not restrict it (see `route::Access`).
    let origin = if client_workload.is_some()
        || state
            .node_by_ip(&client_ip)
            .is_some_and(|n| n.name == local_node)
    {
        Origin::Cluster
    } else {
        Origin::Outside
    };
    let (service, chosen) = choose(state, lb, local_node, client, origin, destination, now);
    // An address of a service that is not one of its ports is still named
    // after the service in telemetry.
    let service = service.or_else(|| state.service_by_ip(&destination.ip().to_canonical()));
    let (endpoint, outcome) = match chosen {
        Ok(chosen) => (
            Some(chosen.endpoint),
            admit(state, local_node, client, source, chosen),
        ),
        Err(refusal) => (None, Err(refusal)),
    };
    Request {
        source,
        destination,
        service,
        endpoint,
        outcome,
    }
}

/// The endpoint chosen for a destination, and what is known of it.
struct Chosen<'s> {
    endpoint: SocketAddr,
    node: Option<&'s str>,
    /// `namespace/name` of the endpoint's workload, if the mesh knows it.
    workload: Option<&'s str>,
}

/// The service a destination reaches (if any) and the endpoint chosen.
fn choose<'s>(
    state: &'s ProxyState,
    lb: &LoadBalancer,
    local_node: &str,
    client: SocketAddr,
    origin: Origin,
    destination: SocketAddr,
    now: Instant,
) -> (Option<&'s Service>, Result<Chosen<'s>, Refusal>) {
    let ip = destination.ip().to_canonical();
    match route::plan(state, origin, destination) {
        Plan::Service {
            service,
            port,
            policy,
            node,
            ..
        } => {
            let serving_node = node.unwrap_or(local_node);
            let picked = lb
                .pick(
                    service,
                    port,
                    policy,
                    route::Locality::of(state, serving_node),
                    route::Ends {
                        client: client.ip(),
                        destination: ip,
                    },
                    now,
                )
                .map_err(Refusal::NoEndpoints)
                .map(|(endpoint, address)| Chosen {
                    endpoint: address,
                    node: endpoint.node.as_deref(),
                    // A bare endpoint address may still belong to a known pod.
                    workload: endpoint.workload.as_deref().or_else(|| {
                        state
                            .workload_entry_by_ip(&endpoint.address)
                            .map(|(key, _)| key)
                    }),
                });
            (Some(service), picked)
        }
        Plan::Workload { workload, port } => (
            None,
            Ok(Chosen {
                endpoint: SocketAddr::new(ip, port),
                node: workload.node.as_deref(),
                workload: state.workload_entry_by_ip(&ip).map(|(key, _)| key),
            }),
        ),
        Plan::ExternalName { .. } | Plan::Passthrough => (
            None,
            Ok(Chosen {
                endpoint: destination,
                node: None,
                workload: None,
            }),
        ),
        Plan::Refused { service, reason } => (service, Err(Refusal::Refused(reason))),
    }
}

/// How the chosen endpoint is carried, and whether policy allows it.
fn admit<'s>(
    state: &'s ProxyState,
    local_node: &str,
    client: SocketAddr,
    source: Option<&'s Workload>,
    chosen: Chosen<'s>,
) -> Result<Admitted<'s>, Refusal> {
    let endpoint = chosen.endpoint;
    let source_in_mesh = source.is_some_and(|w| w.mesh);
    let carry = match route::mode_for(
        state,
        local_node,
        source_in_mesh,
        chosen.node,
        chosen.workload,
    ) {
        Mode::Direct => Carry::Direct,
        Mode::Passthrough => Carry::Passthrough,
        Mode::Hbone => {
            // `mode_for` answers Hbone only for a mesh source, a mesh
            // workload and a node with an HBONE address; the lookups below
            // carry that proof to the caller.
            let source = source.ok_or_else(|| {
                Refusal::Refused(format!(
                    "source {} is not a mesh workload on node {local_node}: it has no identity for mTLS",
                    client.ip()
                ))
            })?;
            let destination = chosen
                .workload
                .and_then(|key| state.workload(key))
                .ok_or_else(|| Refusal::Refused(format!("no workload behind {endpoint}")))?;
            let node = chosen
                .node
                .and_then(|n| state.node(n))
                .and_then(|n| n.hbone)
                .ok_or_else(|| {
                    Refusal::Refused(format!("node of {endpoint} has no HBONE address"))
                })?;
            Carry::Hbone {
                source,
                destination,
                node,
            }
        }
    };
    // Egress is judged here, on the source's node; ingress too when the
    // destination is on this node (no other proxy sees the connection).
    let check = Check {
        source: client.ip(),
        destination: endpoint.ip(),
        port: endpoint.port(),
        egress: true,
        ingress: carry == Carry::Direct,
        decided_at: state.revision(),
    };
    state.enforce(&check)?;
    Ok(Admitted {
        endpoint,
        carry,
        check,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::tests::{backend, cluster, ip, pod, sa, service, tcp, LOCAL};
    use crate::state::ConfigStore;
    use ferry_api::model::{Policy, PolicyPeer, PolicyRule};
    use ferry_api::ResourceBody;
    use std::sync::Arc;

    /// The route fixtures' cluster, shop/backend, an empty service, and
    /// a policy isolating `a1`'s egress to `a2` only.
    fn state() -> Arc<ProxyState> {
        let mut bodies = cluster();
        bodies.push(ResourceBody::Service(Box::new(backend())));
        bodies.push(ResourceBody::Service(Box::new(service(
            "empty",
            Some("10.96.0.20"),
            vec![tcp("http", 80, 8080)],
            vec![],
        ))));
        bodies.push(ResourceBody::Workload(pod(
            "stranger",
            "10.0.1.50",
            LOCAL,
            false,
        )));
        bodies.push(ResourceBody::Policy(Box::new(Policy {
            namespace: "shop".into(),
            name: "a1-out".into(),
            selected: vec!["shop/a1".into()],
            ingress: false,
            egress: true,
            ingress_rules: vec![],
            egress_rules: vec![PolicyRule {
                peers: vec![PolicyPeer {
                    workloads: vec!["shop/a2".into()],
                    ..PolicyPeer::default()
                }],
                ports: vec![],
            }],
        })));
        ConfigStore::holding(&bodies).snapshot()
    }

    /// A decision in one line: `hbone SOURCE -> DESTINATION via NODE`,
    /// `direct|passthrough ENDPOINT`, `refused: REASON`, `no endpoints`,
    /// `denied DIRECTION`.
    fn outcome(request: &Request<'_>) -> String {
        match &request.outcome {
            Ok(Admitted {
                carry:
                    Carry::Hbone {
                        source,
                        destination,
                        node,
                    },
                ..
            }) => format!("hbone {} -> {} via {node}", source.key, destination.key),
            Ok(admitted) => format!("{} {}", admitted.carry.mode().as_str(), admitted.endpoint),
            Err(Refusal::Refused(reason)) => format!("refused: {reason}"),
            Err(Refusal::NoEndpoints(_)) => "no endpoints".into(),
            Err(Refusal::Denied(denied)) => format!("denied {}", denied.direction),
            Err(Refusal::NotConfigured) => "not configured".into(),
        }
    }

    #[test]
    fn without_configuration_everything_is_refused() {
        // A fresh proxy (no config yet) must not relay anything: not an
        // address outside the mesh, not a pod, not a service address.
        let empty = ProxyState::default();
        let lb = LoadBalancer::new();
        for destination in ["192.0.2.7:443", "10.0.2.1:8080", "10.96.0.10:80"] {
            let request = decide(
                &empty,
                &lb,
                LOCAL,
                sa("10.0.1.100:40000"),
                sa(destination),
                Instant::now(),
            );
            assert_eq!(outcome(&request), "not configured", "{destination}");
        }
        // An applied configuration, even an empty one, is a configuration.
        let configured = ConfigStore::holding(&[]).snapshot();
        let request = decide(
            &configured,
            &lb,
            LOCAL,
            sa("10.0.1.100:40000"),
            sa("192.0.2.7:443"),
            Instant::now(),
        );
        assert_eq!(outcome(&request), "passthrough 192.0.2.7:443");
    }

    #[test]
    fn one_decision_per_connection() {
        let state = state();
        // (case, client, destination, expected)
        let cases = [
            (
                "a pod IP on another node, both in the mesh: HBONE as the client to the pod",
                "10.0.1.100:40000",
                "10.0.2.1:8080",
                "hbone shop/client -> shop/a2 via 10.1.0.2:15008",
            ),
            (
                "a pod IP on this node: direct",
                "10.0.1.100:40000",
                "10.0.1.1:8080",
                "direct 10.0.1.1:8080",
            ),
            (
                "a node without an HBONE address: passthrough",
                "10.0.1.100:40000",
                "10.0.3.1:8080",
                "passthrough 10.0.3.1:8080",
            ),
            (
                "a source outside the mesh has no identity: passthrough",
                "10.0.1.50:40000",
                "10.0.2.1:8080",
                "passthrough 10.0.2.1:8080",
            ),
            (
                "a destination outside the mesh: passthrough",
                "10.0.1.100:40000",
                "10.0.2.9:8080",
                "passthrough 10.0.2.9:8080",
            ),
            (
                "an address the mesh does not know: passthrough, unchanged",
                "10.0.1.100:40000",
                "192.0.2.7:443",
                "passthrough 192.0.2.7:443",
            ),
            (
                "a cluster IP on a port the service lacks: refused",
                "10.0.1.100:40000",
                "10.96.0.10:81",
                "refused: service shop/backend has no TCP port 81 (cluster IP 10.96.0.10)",
            ),
            (
                "a service without endpoints: refused",
                "10.0.1.100:40000",
                "10.96.0.20:80",
                "no endpoints",
            ),
            (
                "egress policy: a1 may reach a2",
                "10.0.1.1:40000",
                "10.0.2.1:8080",
                "hbone shop/a1 -> shop/a2 via 10.1.0.2:15008",
            ),
            (
                "egress policy: a1 may not reach a3",
                "10.0.1.1:40000",
                "10.0.3.1:8080",
                "denied egress",
            ),
        ];
        for (case, client, destination, want) in cases {
            let lb = LoadBalancer::new();
            let request = decide(
                &state,
                &lb,
                LOCAL,
                sa(client),
                sa(destination),
                Instant::now(),
            );
            assert_eq!(outcome(&request), want, "{case}");
        }
    }

    #[test]
    fn external_traffic_policy_local_restricts_outside_clients_only() {
        let mut bodies = crate::route::tests::cluster();
        bodies.push(ResourceBody::Service(Box::new(crate::route::tests::web())));
        let state = ConfigStore::holding(&bodies).snapshot();
        let endpoints_for = |client: &str| {
            let lb = LoadBalancer::new();
            let mut seen: Vec<String> = (0..6)
                .filter_map(|_| {
                    decide(
                        &state,
                        &lb,
                        LOCAL,
                        sa(client),
                        sa("198.51.100.10:80"),
                        Instant::now(),
                    )
                    .endpoint
                    .map(|e| e.ip().to_string())
                })
                .collect();
            seen.sort();
            seen.dedup();
            seen
        };
        // A client outside the cluster entering at n1: n1's endpoint only.
        assert_eq!(endpoints_for("172.16.0.9:40000"), ["10.0.1.1"]);
        // A pod of the cluster: every endpoint, as kube-proxy does.
        assert_eq!(
            endpoints_for("10.0.1.100:40000"),
            ["10.0.1.1", "10.0.2.1", "10.0.3.1"]
        );
    }

    #[test]
    fn a_service_is_named_and_its_endpoint_chosen() {
        let state = state();
        let lb = LoadBalancer::new();
        let client = sa("10.0.1.100:40000");
        let mut seen = Vec::new();
        for _ in 0..3 {
            let request = decide(
                &state,
                &lb,
                LOCAL,
                client,
                sa("10.96.0.10:80"),
                Instant::now(),
            );
            assert_eq!(
                request.service.map(|s| s.key_name()).as_deref(),
                Some("shop/backend")
            );
            let admitted = request.outcome.unwrap();
            assert_eq!(Some(admitted.endpoint), request.endpoint);
            // The target port is the endpoint's, not the service's.
            assert_eq!(admitted.endpoint.port(), 8080);
            // Ingress is judged here only when the endpoint is on this node.
            assert_eq!(admitted.check.ingress, admitted.carry == Carry::Direct);
            assert!(admitted.check.egress);
            seen.push(admitted.endpoint.ip());
        }
        // Round robin over a1, a2, a3.
        seen.sort();
        assert_eq!(seen, [ip("10.0.1.1"), ip("10.0.2.1"), ip("10.0.3.1")]);
        // A refusal before the choice still names the service.
        let refused = decide(
            &state,
            &lb,
            LOCAL,
            client,
            sa("10.96.0.10:81"),
            Instant::now(),
        );
        assert_eq!(
            refused.service.map(|s| s.key_name()).as_deref(),
            Some("shop/backend")
        );
        assert_eq!(refused.endpoint, None);
    }

    #[test]
    fn the_source_is_a_workload_of_this_node_only() {
        let state = state();
        let lb = LoadBalancer::new();
        // a2 runs on n2: from n1's point of view it is not a local source.
        let request = decide(
            &state,
            &lb,
            LOCAL,
            sa("10.0.2.1:40000"),
            sa("10.0.3.1:80"),
            Instant::now(),
        );
        assert!(request.source.is_none());
        let request = decide(
            &state,
            &lb,
            LOCAL,
            sa("10.0.1.100:40000"),
            sa("10.0.3.1:80"),
            Instant::now(),
        );
        assert_eq!(request.source.map(|w| &*w.key), Some("shop/client"));
    }
}
