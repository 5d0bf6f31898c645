//! NetworkPolicy semantics, modelled on the upstream Kubernetes conformance
//! scenarios: namespaces x, y, z with pods a, b, c each, ports 80 and 81,
//! TCP/UDP/SCTP. Policies go through the control plane's translation and
//! are judged by the proxy's evaluation code, exactly as in production.
//! Each expectation is a truth table: rows are sources, columns are
//! destinations, in the order x/a x/b x/c y/a ... z/c; `.` allowed, `X` denied.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use ferry_api::model::{Protocol, Workload};
use ferry_api::proto::DeltaResponse;
use ferry_control_plane::source::{K8sObject, ObjectKind, ObjectRef, SourceEvent};
use ferry_control_plane::translate::{Change, TranslateOptions, Translator};
use ferry_core::policy::evaluate;
use ferry_core::state::{ConfigStore, ProxyState};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

fn object(yaml: &str) -> K8sObject {
    let value: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
    match value["kind"].as_str().unwrap() {
        "Namespace" => K8sObject::from(
            serde_yaml::from_value::<k8s_openapi::api::core::v1::Namespace>(value).unwrap(),
        ),
        "Pod" => K8sObject::from(
            serde_yaml::from_value::<k8s_openapi::api::core::v1::Pod>(value).unwrap(),
        ),
        "NetworkPolicy" => K8sObject::from(
            serde_yaml::from_value::<k8s_openapi::api::networking::v1::NetworkPolicy>(value)
                .unwrap(),
        ),
        other => panic!("unexpected kind {other}"),
    }
}

fn cluster() -> Vec<SourceEvent> {
    let mut events = Vec::new();
    for (n, ns) in NAMESPACES.iter().enumerate() {
        events.push(SourceEvent::Apply(object(&format!(
            "kind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}}}}}"
        ))));
        for (p, pod) in PODS.iter().enumerate() {
            events.push(SourceEvent::Apply(object(&format!(
                "kind: Pod\nmetadata: {{name: {pod}, namespace: {ns}, labels: {{pod: {pod}}}}}\n\
                 spec:\n  nodeName: node-{n}\n  containers:\n  - name: c\n    ports:\n    \
                 - {{name: serve-80-tcp, containerPort: 80}}\n    - {{name: serve-81-tcp, containerPort: 81}}\n    \
                 - {{name: serve-80-udp, containerPort: 80, protocol: UDP}}\n    - {{name: serve-81-sctp, containerPort: 81, protocol: SCTP}}\n\
                 status: {{phase: Running, podIP: 10.0.{n}.{}, conditions: [{{type: Ready, status: \"True\"}}]}}",
                p + 10
            ))));
        }
    }
    events
}

struct Cluster {
    translator: Translator,
    store: Arc<ConfigStore>,
}

impl Cluster {
    fn new(policies: &[&str]) -> Self {
        let mut c = Self {
            translator: Translator::new(TranslateOptions::default()),
            store: ConfigStore::new(),
        };
        let mut events = cluster();
        events.extend(policies.iter().map(|p| SourceEvent::Apply(object(p))));
        c.apply(events);
        c
    }

    fn apply(&mut self, events: Vec<SourceEvent>) {
        let changes = self.translator.apply(events);
        let mut response = DeltaResponse {
            nonce: "t".into(),
            revision: 1,
            ..Default::default()
        };
        for change in changes {
            match change {
                Change::Upsert(_, p) => response.resources.push(p.resource().unwrap()),
                Change::Remove(key) => response.removed.push(key.to_proto()),
            }
        }
        let report = self.store.apply(response);
        assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    }

    fn state(&self) -> Arc<ProxyState> {
        self.store.snapshot()
    }

    /// The truth table for one port and protocol.
    fn table(&self, port: u16, protocol: Protocol) -> Vec<String> {
        let state = self.state();
        let pods: Vec<&Workload> = NAMESPACES
            .iter()
            .flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}")))
            .map(|key| state.workload(&key).unwrap_or_else(|| panic!("{key}")))
            .collect();
        let party = |w: &Workload| state.workload_party(&w.key).unwrap();
        pods.iter()
            .map(|from| {
                pods.iter()
                    .map(|to| {
                        if evaluate(&*state, &party(from), &party(to), port, protocol).allowed {
                            '.'
                        } else {
                            'X'
                        }
                    })
                    .collect()
            })
            .collect()
    }
}

const ALL: [&str; 9] = [
    ".........",
    ".........",
    ".........",
    ".........",
    ".........",
    ".........",
    ".........",
    ".........",
    ".........",
];

fn tcp80(c: &Cluster) -> Vec<String> {
    c.table(80, Protocol::Tcp)
}

#[test]
fn no_policy_allows_everything() {
    let c = Cluster::new(&[]);
    for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
        assert_eq!(c.table(80, protocol), ALL);
    }
}

#[test]
fn default_deny_ingress_isolates_every_pod_of_the_namespace() {
    let c = Cluster::new(&[
        "kind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}}",
    ]);
    assert_eq!(tcp80(&c), ["XXX......"; 9]);
    assert_eq!(c.table(81, Protocol::Udp), ["XXX......"; 9]);
}

#[test]
fn default_deny_egress_needs_the_explicit_policy_type() {
    let c = Cluster::new(&[
        "kind: NetworkPolicy\nmetadata: {name: deny-egress, namespace: x}\nspec: {podSelector: {}, policyTypes: [Egress]}",
    ]);
    let mut want = vec!["XXXXXXXXX"; 3];
    want.extend(["........."; 6]);
    assert_eq!(tcp80(&c), want);
    // Without policyTypes and without an egress section, only ingress is isolated.
    let c = Cluster::new(&["kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}, ingress: [{}]}"]);
    assert_eq!(tcp80(&c), ALL);
}

#[test]
fn allow_from_a_namespace() {
    let c = Cluster::new(&[
        "kind: NetworkPolicy\nmetadata: {name: from-y, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]",
    ]);
    assert_eq!(
        tcp80(&c),
        [
            "X........",
            "X........",
            "X........",
            ".........",
            ".........",
            ".........",
            "X........",
            "X........",
            "X........"
        ]
    );
}

#[test]
fn namespace_and_pod_selector_in_one_peer_is_and_in_two_peers_is_or() {
    let and = Cluster::new(&[
        "kind: NetworkPolicy\nmetadata: {name: and, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]}]",
    ]);
    assert_eq!(
        tcp80(&and),
        [
            "X........",
            "X........",
            "X........",
            "X........",
            ".........",
            "X........",
            "X........",
            "X........",
            "X........"
        ]
    );
    let or = Cluster::new(&[
        "kind: NetworkPolicy\nmetadata: {name: or, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}, {podSelector: {matchLabels: {pod: b}}}]}]",
    ]);
    assert_eq!(
        tcp80(&or),
        [
            "X........",
            ".........",
            "X........",
            ".........",
            ".........",
            ".........",
            "X........",
            "X........",
            "X........"
        ]
    );
}

#[test]
fn implicit_namespace_name_label_and_match_expressions() {
    let c = Cluster::new(&[
        "kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, b]}]}\n  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [y]}]}}]}]",
    ]);
    assert_eq!(
        tcp80(&c),
        [
            ".........",
            ".........",
            ".........",
            "XX.......",
            "XX.......",
            "XX.......",
            ".........",
            ".........",
            "........."
        ]
    );
}

#[test]
fn ip_block_with_except() {
    // x/a may reach 10.0.1.0/24 (namespace y) except y/b (10.0.1.11).
    let c = Cluster::new(&[
        "kind: NetworkPolicy\nmetadata: {name: cidr, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{to: [{ipBlock: {cidr: 10.0.1.0/24, except: [10.0.1.11/32]}}]}]",
    ]);
    let mut want = vec!["XXX.X.XXX"];
    want.extend(["........."; 8]);
    assert_eq!(tcp80(&c), want);
}

#[test]
fn named_ports_resolve_against_the_destination_pod() {
    let c = Cluster::new(&[
        "kind: NetworkPolicy\nmetadata: {name: p81, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{port: serve-81-tcp}]}]",
    ]);
    let deny_a = ["X........"; 9];
    assert_eq!(tcp80(&c), deny_a);
    assert_eq!(c.table(81, Protocol::Tcp), ALL);
    // The name is of a TCP port: UDP 81 stays closed.
    assert_eq!(c.table(81, Protocol::Udp), deny_a);
}

#[test]
fn end_port_ranges() {
    let c = Cluster::new(&[
        "kind: NetworkPolicy\nmetadata: {name: range, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{port: 80, endPort: 81}]}]",
    ]);
    assert_eq!(tcp80(&c), ALL);
    assert_eq!(c.table(81, Protocol::Tcp), ALL);
    assert_eq!(c.table(82, Protocol::Tcp), ["X........"; 9]);
}

#[test]
fn protocols_are_distinct() {
    let c = Cluster::new(&[
        "kind: NetworkPolicy\nmetadata: {name: sctp, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{port: 81, protocol: SCTP}]}]",
    ]);
    assert_eq!(c.table(81, Protocol::Sctp), ALL);
    assert_eq!(c.table(81, Protocol::Tcp), ["X........"; 9]);
    assert_eq!(c.table(81, Protocol::Udp), ["X........"; 9]);
}

#[test]
fn multiple_policies_combine_as_a_union() {
    let c = Cluster::new(&[
        "kind: NetworkPolicy\nmetadata: {name: from-y, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]",
        "kind: NetworkPolicy\nmetadata: {name: from-z, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]",
    ]);
    assert_eq!(
        tcp80(&c),
        [
            "X........",
            "X........",
            "X........",
            ".........",
            ".........",
            ".........",
            ".........",
            ".........",
            "........."
        ]
    );
}

#[test]
fn a_policy_with_no_matching_rules_denies_all() {
    let c = Cluster::new(&[
        "kind: NetworkPolicy\nmetadata: {name: none, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: nobody}}}]}]",
    ]);
    assert_eq!(tcp80(&c), ["X........"; 9]);
}

#[test]
fn empty_from_and_empty_ports_mean_all() {
    let c = Cluster::new(&[
        "kind: NetworkPolicy\nmetadata: {name: all, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [], ports: []}]",
    ]);
    assert_eq!(tcp80(&c), ALL);
}

#[test]
fn egress_to_a_services_backing_pods_and_ingress_both_must_allow() {
    // x/a may only talk to pods labelled pod=b anywhere; y isolates y/b for ingress except from x.
    let c = Cluster::new(&[
        "kind: NetworkPolicy\nmetadata: {name: to-b, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{to: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: b}}}]}]",
        "kind: NetworkPolicy\nmetadata: {name: b-from-x, namespace: y}\nspec:\n  podSelector: {matchLabels: {pod: b}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}}]}]",
    ]);
    assert_eq!(
        tcp80(&c),
        [
            "X.XX.XX.X", // x/a: only the b pods, and y/b admits it
            ".........",
            ".........",
            "....X....", // y/b admits only namespace x
            "....X....",
            "....X....",
            "....X....",
            "....X....",
            "....X...."
        ]
    );
}

#[test]
fn label_and_namespace_changes_update_the_sets_incrementally() {
    let mut c = Cluster::new(&[
        "kind: NetworkPolicy\nmetadata: {name: from-y, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]",
    ]);
    // z gets the label ns=y: its pods are admitted too.
    c.apply(vec![SourceEvent::Apply(object(
        "kind: Namespace\nmetadata: {name: z, labels: {ns: y}}",
    ))]);
    assert_eq!(
        tcp80(&c),
        [
            "X........",
            "X........",
            "X........",
            ".........",
            ".........",
            ".........",
            ".........",
            ".........",
            "........."
        ]
    );
    // x/b becomes pod=a: now selected, so isolated as well.
    c.apply(vec![SourceEvent::Apply(object(
        "kind: Pod\nmetadata: {name: b, namespace: x, labels: {pod: a}}\nspec: {nodeName: node-0, containers: [{name: c}]}\nstatus: {phase: Running, podIP: 10.0.0.11, conditions: [{type: Ready, status: \"True\"}]}",
    ))]);
    assert_eq!(
        tcp80(&c),
        [
            "XX.......",
            "XX.......",
            "XX.......",
            ".........",
            ".........",
            ".........",
            ".........",
            ".........",
            "........."
        ]
    );
    // The policy goes away: everything is open again.
    c.apply(vec![SourceEvent::Delete(ObjectRef::new(
        ObjectKind::NetworkPolicy,
        "x",
        "from-y",
    ))]);
    assert_eq!(tcp80(&c), ALL);
}

#[test]
fn policies_reach_only_the_nodes_of_the_pods_they_select() {
    let c = Cluster::new(&[
        "kind: NetworkPolicy\nmetadata: {name: deny, namespace: y}\nspec: {podSelector: {}}",
    ]);
    let published = c.translator.published();
    let policy = published
        .iter()
        .find(|(k, _)| k.kind == ferry_api::Kind::Policy)
        .map(|(_, p)| p)
        .unwrap();
    assert!(
        policy.scope.includes("node-1"),
        "namespace y runs on node-1"
    );
    assert!(!policy.scope.includes("node-0"));
    assert!(!policy.scope.includes("node-2"));
}
