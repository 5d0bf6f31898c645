//! Translation and delta benchmark at the design's scale target: 10,000
//! services and 100,000 endpoints (pods) on 1,000 nodes.
//!
//! Prints one table: full build time and memory, the time and bytes to push
//! one endpoint change, and the proxy's memory for the whole configuration.
//! Memory is measured exactly with a counting allocator (live heap bytes),
//! not sampled from the OS. Run: `cargo bench -p ferry-control-plane --bench translate`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use ferry_api::proto::{DeltaResponse, DeltaResponseEncoded};
use ferry_api::ResourceKey;
use ferry_control_plane::push::{ConfigCache, Held};
use ferry_control_plane::source::{K8sObject, SourceEvent};
use ferry_control_plane::translate::{TranslateOptions, Translator};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use prost::Message;

mod common;
use common::live;

const NAMESPACES: usize = 100;
const SERVICES_PER_NAMESPACE: usize = 100;
const PODS_PER_SERVICE: usize = 10;
const NODES: usize = 1_000;

/// Pods are owned by a ReplicaSet of a Deployment, unless
/// `FERRY_BENCH_BARE_PODS` is set (bare pods, as this bench had them before).
fn owned() -> bool {
    std::env::var_os("FERRY_BENCH_BARE_PODS").is_none()
}

fn meta(namespace: Option<&str>, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: namespace.map(str::to_string),
        labels: Some(labels),
        ..ObjectMeta::default()
    }
}

fn pod(ns: &str, service: usize, replica: usize, index: usize, ready: bool) -> core::Pod {
    let labels = BTreeMap::from([
        ("app".to_string(), format!("svc-{service}")),
        ("pod-template-hash".to_string(), "5d8f7c9b4".to_string()),
    ]);
    let mut metadata = meta(Some(ns), format!("svc-{service}-{replica}"), labels);
    // A Deployment's pods, as a cluster's are: telemetry names them after
    // it (their Istio workload), so the pods of a service share one set
    // of telemetry labels. Pods without a controller each have their own.
    if owned() {
        metadata.owner_references = Some(vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: format!("svc-{service}-5d8f7c9b4"),
            uid: format!("rs-{service}"),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]);
    }
    core::Pod {
        metadata,
        spec: Some(core::PodSpec {
            node_name: Some(format!("node-{}", index % NODES)),
            service_account_name: Some(format!("svc-{service}")),
            containers: vec![core::Container {
                name: "app".into(),
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
            pod_ip: Some(format!(
                "10.{}.{}.{}",
                64 + index / 65_536,
                (index / 256) % 256,
                index % 256
            )),
            conditions: Some(vec![core::PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

fn cluster() -> Vec<SourceEvent> {
    let mut events = Vec::new();
    for n in 0..NODES {
        events.push(SourceEvent::Apply(K8sObject::from(core::Node {
            metadata: meta(None, format!("node-{n}"), BTreeMap::new()),
            status: Some(core::NodeStatus {
                addresses: Some(vec![core::NodeAddress {
                    type_: "InternalIP".into(),
                    address: format!("172.16.{}.{}", n / 256, n % 256),
                }]),
                ..Default::default()
            }),
            ..Default::default()
        })));
    }
    let mut index = 0;
    for ns in 0..NAMESPACES {
        let namespace = format!("ns-{ns}");
        events.push(SourceEvent::Apply(K8sObject::from(core::Namespace {
            metadata: meta(None, namespace.clone(), BTreeMap::new()),
            ..Default::default()
        })));
        for s in 0..SERVICES_PER_NAMESPACE {
            let service = ns * SERVICES_PER_NAMESPACE + s;
            events.push(SourceEvent::Apply(K8sObject::from(core::Service {
                metadata: meta(Some(&namespace), format!("svc-{service}"), BTreeMap::new()),
                spec: Some(core::ServiceSpec {
                    cluster_ip: Some(format!("10.96.{}.{}", service / 256, service % 256)),
                    selector: Some(BTreeMap::from([(
                        "app".to_string(),
                        format!("svc-{service}"),
                    )])),
                    ports: Some(vec![core::ServicePort {
                        name: Some("http".into()),
                        port: 80,
                        target_port: Some(IntOrString::String("http".into())),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                status: None,
            })));
            for r in 0..PODS_PER_SERVICE {
                events.push(SourceEvent::Apply(K8sObject::from(pod(
                    &namespace, service, r, index, true,
                ))));
                index += 1;
            }
        }
    }
    events
}

fn mib(bytes: isize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let mut rows: Vec<(String, String)> = Vec::new();
    // The input objects are consumed by the translator: what is live after
    // the build, over this baseline, is what the control plane retains.
    let before = live();
    let events = cluster();
    let objects = events.len();

    // Full build: translate everything and publish one revision.
    let started = Instant::now();
    let mut translator = Translator::new(TranslateOptions::default());
    let changes = translator.apply(events);
    let resources = changes.len();
    let cache = ConfigCache::new();
    cache.commit(changes);
    let build = started.elapsed();
    let control_plane_bytes = live() - before;
    rows.push((
        "objects in / resources out".into(),
        format!("{objects} / {resources}"),
    ));
    rows.push((
        "full build (translate + publish)".into(),
        format!("{build:.2?}"),
    ));
    rows.push((
        "control plane memory (translator + cache)".into(),
        mib(control_plane_bytes),
    ));

    // Full push to one proxy.
    let none = HashMap::new();
    let started = Instant::now();
    let (revision, full) = cache.delta("node-0", Held::Reported(&none), &none)?;
    // As the control plane sends it: the resources as they were encoded.
    let encoded = DeltaResponseEncoded {
        nonce: "1".into(),
        revision,
        resources: full.upserts.iter().map(|r| r.encoded.clone()).collect(),
        removed: vec![],
    }
    .encode_to_vec();
    let full_bytes = encoded.len();
    let full_time = started.elapsed();

    rows.push((
        "initial push to one proxy: compute + build".into(),
        format!("{full_time:.2?}"),
    ));
    rows.push(("initial push size".into(), mib(full_bytes as isize)));

    // Proxy memory for the whole configuration.
    drop(full);
    // Counted from before the proxy decodes the response: what the store
    // holds once it has applied it (the decoded response is consumed).
    let before = live();
    let response = DeltaResponse::decode(encoded.as_slice())?;
    let store = ferry_core::state::ConfigStore::new();
    let started = Instant::now();
    let report = store.apply(response);
    let apply_time = started.elapsed();
    let proxy_bytes = live() - before;
    assert_eq!(report.applied, resources);
    rows.push((
        "proxy: apply full config".into(),
        format!("{apply_time:.2?}"),
    ));
    rows.push((
        "proxy memory (store, all resources)".into(),
        mib(proxy_bytes),
    ));
    let endpoints = (NAMESPACES * SERVICES_PER_NAMESPACE * PODS_PER_SERVICE) as f64;
    rows.push((
        "proxy memory per endpoint (pod + its share of services)".into(),
        format!("{:.0} B", proxy_bytes as f64 / endpoints),
    ));

    // Per new connection on a proxy: what the dialled cluster IP means,
    // an endpoint (round robin), and how it is carried. One warm-up pass
    // creates each service's round-robin counter; then nothing may allocate.
    {
        use ferry_core::{request, route};
        use std::net::{IpAddr, Ipv4Addr, SocketAddr};
        let state = store.snapshot();
        let lb = route::LoadBalancer::new();
        let client = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 64, 0, 1)), 40000);
        let services = NAMESPACES * SERVICES_PER_NAMESPACE;
        let route_one = |i: usize| -> bool {
            let s = (i * 7919) % services;
            let dst = SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(10, 96, (s / 256) as u8, (s % 256) as u8)),
                80,
            );
            request::decide(&state, &lb, "node-7", client, dst, Instant::now())
                .outcome
                .is_ok()
        };
        for i in 0..services {
            route_one(i);
        }
        const ROUTES: usize = 200_000;
        let allocations_before = common::allocations();
        let started = Instant::now();
        let routed = (0..ROUTES).filter(|i| route_one(*i)).count();
        let elapsed = started.elapsed();
        let allocations = common::allocations() - allocations_before;
        assert_eq!(routed, ROUTES, "every cluster IP routes");
        rows.push((
            "proxy: decide a new connection (request::decide)".into(),
            format!("{:.0} ns", elapsed.as_nanos() as f64 / ROUTES as f64),
        ));
        rows.push((
            "proxy: allocations per routed connection".into(),
            format!("{:.2}", allocations as f64 / ROUTES as f64),
        ));
    }

    // One endpoint change: a pod's readiness flips.
    let mut translate_times = Vec::new();
    let mut delta_times = Vec::new();
    let mut bytes = 0;
    let mut changed = 0;
    let mut since = revision;
    for i in 0..200 {
        let service = (i * 37) % (NAMESPACES * SERVICES_PER_NAMESPACE);
        let ns = format!("ns-{}", service / SERVICES_PER_NAMESPACE);
        let index = service * PODS_PER_SERVICE + 3;
        // Every iteration touches another service: its pod 3 goes unready.
        let flipped = pod(&ns, service, 3, index, false);
        let started = Instant::now();
        let changes = translator.apply([SourceEvent::Apply(K8sObject::from(flipped))]);
        changed = changes.len();
        cache.commit(changes);
        translate_times.push(started.elapsed());
        let started = Instant::now();
        let (rev, delta) = cache.delta("node-7", Held::InSyncAt(since), &none)?;
        let response = DeltaResponseEncoded {
            nonce: "n".into(),
            revision: rev,
            resources: delta.upserts.iter().map(|r| r.encoded.clone()).collect(),
            removed: delta.removals.iter().map(ResourceKey::to_proto).collect(),
        };
        bytes = response.encoded_len();
        delta_times.push(started.elapsed());
        since = rev;
    }
    rows.push((
        "one endpoint change: resources changed".into(),
        format!("{changed} (workload + service)"),
    ));
    rows.push((
        "one endpoint change: translate + publish (median of 200)".into(),
        format!("{:.1?}", median(translate_times)),
    ));
    rows.push((
        "one endpoint change: delta for one proxy (median of 200)".into(),
        format!("{:.1?}", median(delta_times)),
    ));
    rows.push((
        "one endpoint change: bytes pushed per proxy".into(),
        format!("{bytes} B"),
    ));
    let fanout = Instant::now();
    let mut total = 0;
    for n in 0..NODES {
        let (_, delta) = cache.delta(&format!("node-{n}"), Held::InSyncAt(since - 1), &none)?;
        total += delta.upserts.len();
    }
    let _ = total;
    rows.push((
        format!("one endpoint change: deltas for all {NODES} proxies"),
        format!("{:.1?}", fanout.elapsed()),
    ));

    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    println!(
        "\nFerry translation benchmark: {} services, {} endpoints, {NODES} nodes ({})",
        NAMESPACES * SERVICES_PER_NAMESPACE,
        endpoints,
        if owned() {
            "pods of Deployments"
        } else {
            "bare pods"
        }
    );
    println!("{:-<w$}-+-{:-<16}", "", "", w = width);
    for (k, v) in rows {
        println!("{k:<width$} | {v}");
    }
    Ok(())
}
