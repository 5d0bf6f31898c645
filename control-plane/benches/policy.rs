//! NetworkPolicy benchmark: 1,000 policies over 10,000 pods (100 namespaces
//! of 100 pods, 10 policies each with pod, namespace+pod and named-port
//! rules, half with egress rules). Measures compilation in the control
//! plane, the proxy's policy memory, and the cost of evaluating one new
//! connection (both directions), with its allocation count. Policy peers
//! are published as shared peer groups: the wire rows count policies and
//! groups together.
//! Run: `cargo bench -p ferry-control-plane --bench policy`.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ferry_api::model::Protocol;
use ferry_api::proto::DeltaResponse;
use ferry_control_plane::source::{K8sObject, SourceEvent};
use ferry_control_plane::translate::{Change, Scope, TranslateOptions, Translator};
use ferry_core::policy::allowed as policy_allows;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

const NAMESPACES: usize = 100;
const PODS_PER_NAMESPACE: usize = 100;
const POLICIES_PER_NAMESPACE: usize = 10;
/// Pods are spread over this many nodes.
const NODES: usize = 100;
const EVALUATIONS: usize = 200_000;
const ROLES: [&str; 3] = ["frontend", "api", "db"];

fn labels(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn selector(pairs: &[(&str, String)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels(pairs)),
        match_expressions: None,
    }
}

fn ip(index: usize) -> String {
    format!(
        "10.{}.{}.{}",
        64 + index / 65_536,
        (index / 256) % 256,
        index % 256
    )
}

fn cluster() -> Vec<SourceEvent> {
    let mut events = Vec::new();
    for n in 0..NAMESPACES {
        let ns = format!("ns-{n}");
        events.push(SourceEvent::Apply(K8sObject::from(core::Namespace {
            metadata: ObjectMeta {
                name: Some(ns.clone()),
                labels: Some(labels(&[("team", format!("t{}", n % 5))])),
                ..Default::default()
            },
            ..Default::default()
        })));
        for p in 0..PODS_PER_NAMESPACE {
            let index = n * PODS_PER_NAMESPACE + p;
            events.push(SourceEvent::Apply(K8sObject::from(core::Pod {
                metadata: ObjectMeta {
                    name: Some(format!("pod-{p}")),
                    namespace: Some(ns.clone()),
                    labels: Some(labels(&[
                        ("app", format!("app-{}", p % 10)),
                        ("role", ROLES[p % 3].to_string()),
                    ])),
                    ..Default::default()
                },
                spec: Some(core::PodSpec {
                    node_name: Some(format!("node-{}", index % NODES)),
                    containers: vec![core::Container {
                        name: "c".into(),
                        ports: Some(vec![core::ContainerPort {
                            name: Some("http".into()),
                            container_port: 8080,
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                status: Some(core::PodStatus {
                    phase: Some("Running".into()),
                    pod_ip: Some(ip(index)),
                    ..Default::default()
                }),
            })));
        }
        for j in 0..POLICIES_PER_NAMESPACE {
            let port = |p: IntOrString| net::NetworkPolicyPort {
                port: Some(p),
                ..Default::default()
            };
            let egress = (j % 2 == 0).then(|| {
                vec![net::NetworkPolicyEgressRule {
                    to: Some(vec![net::NetworkPolicyPeer {
                        namespace_selector: Some(LabelSelector::default()),
                        pod_selector: Some(selector(&[("role", "db".into())])),
                        ip_block: None,
                    }]),
                    ports: Some(vec![port(IntOrString::Int(5432))]),
                }]
            });
            events.push(SourceEvent::Apply(K8sObject::from(net::NetworkPolicy {
                metadata: ObjectMeta {
                    name: Some(format!("policy-{j}")),
                    namespace: Some(ns.clone()),
                    ..Default::default()
                },
                spec: Some(net::NetworkPolicySpec {
                    pod_selector: Some(selector(&[("app", format!("app-{j}"))])),
                    policy_types: Some(if egress.is_some() {
                        vec!["Ingress".into(), "Egress".into()]
                    } else {
                        vec!["Ingress".into()]
                    }),
                    ingress: Some(vec![net::NetworkPolicyIngressRule {
                        from: Some(vec![
                            net::NetworkPolicyPeer {
                                pod_selector: Some(selector(&[("role", "frontend".into())])),
                                ..Default::default()
                            },
                            net::NetworkPolicyPeer {
                                namespace_selector: Some(selector(&[(
                                    "team",
                                    format!("t{}", (n + 1) % 5),
                                )])),
                                pod_selector: Some(selector(&[("role", "api".into())])),
                                ip_block: None,
                            },
                        ]),
                        ports: Some(vec![
                            port(IntOrString::Int(80)),
                            port(IntOrString::String("http".into())),
                        ]),
                    }]),
                    egress,
                }),
            })));
        }
    }
    events
}

fn main() -> anyhow::Result<()> {
    let mut rows: Vec<(String, String)> = Vec::new();
    let events = cluster();
    let started = Instant::now();
    let mut translator = Translator::new(TranslateOptions::default());
    let changes = translator.apply(events);
    rows.push((
        "control plane: translate 10,000 pods + 1,000 policies".into(),
        format!("{:.2?}", started.elapsed()),
    ));
    // Every published resource as sent: decoded by the "proxy" below.
    let mut sent: Vec<bytes::Bytes> = Vec::new();
    // Bytes of policy state as published (each resource once), and as the
    // proxies receive it (each resource once per node in its scope).
    let (mut policy_bytes, mut group_bytes, mut streamed) = (0usize, 0usize, 0usize);
    let (mut policies, mut groups) = (0usize, 0usize);
    for change in changes {
        if let Change::Upsert(key, p) = change {
            let len = p.encoded.len();
            let fan_out = match &p.scope {
                Scope::AllNodes => NODES,
                Scope::Nodes(nodes) => nodes.len(),
            };
            match key.kind {
                ferry_api::Kind::Policy => {
                    policies += 1;
                    policy_bytes += len;
                    streamed += len * fan_out;
                }
                ferry_api::Kind::PeerGroup => {
                    groups += 1;
                    group_bytes += len;
                    streamed += len * fan_out;
                }
                _ => {}
            }
            sent.push(p.encoded.clone());
        }
    }
    let mib = |b: usize| format!("{:.2} MiB", b as f64 / 1048576.0);
    rows.push((
        format!("policy state on the wire ({policies} policies + {groups} peer group shares)"),
        format!(
            "{} ({} policies, {} groups)",
            mib(policy_bytes + group_bytes),
            mib(policy_bytes),
            mib(group_bytes)
        ),
    ));
    rows.push((
        format!("policy state sent to the {NODES} proxies (each to its nodes)"),
        mib(streamed),
    ));
    rows.push((
        "distinct peers (groups) of the 1,000 policies".into(),
        translator.peer_group_count().to_string(),
    ));

    // One pod changes its role label: the policies whose sets it enters or
    // leaves are patched and republished.
    let mut times = Vec::new();
    let mut republished = [0usize; 3];
    for i in 0..50usize {
        let n = (i * 7) % NAMESPACES;
        let p = (i * 13) % PODS_PER_NAMESPACE;
        let role = ROLES[(p + 1 + i) % 3];
        let pod = core::Pod {
            metadata: ObjectMeta {
                name: Some(format!("pod-{p}")),
                namespace: Some(format!("ns-{n}")),
                labels: Some(labels(&[
                    ("app", format!("app-{}", p % 10)),
                    ("role", role.to_string()),
                ])),
                ..Default::default()
            },
            spec: Some(core::PodSpec {
                node_name: Some(format!("node-{}", (n * PODS_PER_NAMESPACE + p) % NODES)),
                containers: vec![core::Container {
                    name: "c".into(),
                    ports: Some(vec![core::ContainerPort {
                        name: Some("http".into()),
                        container_port: 8080,
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(core::PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some(ip(n * PODS_PER_NAMESPACE + p)),
                ..Default::default()
            }),
        };
        let started = Instant::now();
        let changes = translator.apply([SourceEvent::Apply(K8sObject::from(pod))]);
        times.push(started.elapsed());
        for change in &changes {
            let key = match change {
                Change::Upsert(key, _) | Change::Remove(key) => key,
            };
            match key.kind {
                ferry_api::Kind::Policy => republished[0] += 1,
                ferry_api::Kind::PeerGroup => republished[1] += 1,
                _ => republished[2] += 1,
            }
        }
    }
    times.sort();
    rows.push((
        "control plane: one pod label change (median / max of 50)".into(),
        format!(
            "{:.2?} / {:.2?}",
            times[times.len() / 2],
            times[times.len() - 1]
        ),
    ));
    rows.push((
        "  resources republished per change (mean)".into(),
        format!(
            "{:.1}: {:.1} policies, {:.1} peer group shares, {:.1} others",
            republished.iter().sum::<usize>() as f64 / 50.0,
            republished[0] as f64 / 50.0,
            republished[1] as f64 / 50.0,
            republished[2] as f64 / 50.0
        ),
    ));

    // Counted from before the proxy decodes what it is sent: the store's
    // size once applied (the decoded response is consumed).
    let store = ferry_core::state::ConfigStore::new();
    let before = common::live();
    let response = DeltaResponse {
        nonce: "b".into(),
        revision: 1,
        resources: sent
            .iter()
            .map(|b| prost::Message::decode(b.clone()))
            .collect::<Result<_, _>>()?,
        removed: Vec::new(),
    };
    store.apply(response);
    rows.push((
        "proxy: store with all resources, incl. policy index".into(),
        format!("{:.1} MiB", (common::live() - before) as f64 / 1048576.0),
    ));
    let state = store.snapshot();

    // Pseudo-random pairs, fixed seed: the same work every run.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % (NAMESPACES * PODS_PER_NAMESPACE) as u64) as usize
    };
    let pairs: Vec<(IpAddr, IpAddr)> = (0..EVALUATIONS)
        .map(|_| {
            let a: IpAddr = ip(next()).parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
            let b: IpAddr = ip(next()).parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
            (a, b)
        })
        .collect();
    let allocations = common::allocations();
    let started = Instant::now();
    let mut allowed = 0usize;
    let mut batch_times: Vec<Duration> = Vec::new();
    for chunk in pairs.chunks(1_000) {
        let batch = Instant::now();
        for (a, b) in chunk {
            let src = state.party_at(*a);
            let dst = state.party_at(*b);
            allowed += usize::from(policy_allows(&*state, &src, &dst, 80, Protocol::Tcp));
        }
        batch_times.push(batch.elapsed());
    }
    let total = started.elapsed();
    let allocs = common::allocations() - allocations;
    batch_times.sort();
    let per = |d: Duration| format!("{:.0} ns", d.as_nanos() as f64 / 1_000.0);
    rows.push((
        "evaluations (both directions, new TCP connection)".into(),
        format!("{EVALUATIONS} ({allowed} allowed)"),
    ));
    rows.push((
        "evaluation: mean".into(),
        format!("{:.0} ns", total.as_nanos() as f64 / EVALUATIONS as f64),
    ));
    rows.push((
        "evaluation: median of 1,000-batch means".into(),
        per(batch_times[batch_times.len() / 2]),
    ));
    rows.push((
        "evaluation: p99 of 1,000-batch means".into(),
        per(batch_times[batch_times.len() * 99 / 100]),
    ));
    rows.push((
        "allocations per evaluation".into(),
        format!("{:.2}", allocs as f64 / EVALUATIONS as f64),
    ));

    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    println!("\nFerry NetworkPolicy benchmark: 1,000 policies, 10,000 pods");
    println!("{:-<width$}-+-{:-<20}", "", "");
    for (k, v) in rows {
        println!("{k:<width$} | {v}");
    }
    Ok(())
}
