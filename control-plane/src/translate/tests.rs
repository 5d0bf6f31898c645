//! Table-style tests of the translation: the rules of [`super::objects`],
//! driven through the incremental [`Translator`], its bookkeeping, and the
//! validation ([`crate::source::validate`]) that guards what reaches it.
//!
//! Objects are written as YAML. Every object given to the translator must pass
//! validation (sources only ever deliver valid objects), and every assertion
//! reads the published resources back from their wire form, so each test also
//! checks that what is published decodes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ferry_api::model::{
    self, Endpoint, NamedPort, Protocol, ServicePort, ServiceType, TargetPort, TrafficPolicy,
};
use ferry_api::{ResourceBody, VersionedResource};
use serde::de::DeserializeOwned;

use super::{Change, Scope, TranslateOptions, Translator};
use crate::source::validate::validate;
use crate::source::{K8sObject, ObjectKind, ObjectRef, SourceEvent};

// ------------------------------------------------------------------ helpers

fn parse<T: DeserializeOwned>(yaml: &str) -> T {
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("test YAML does not parse: {e}\n{yaml}"))
}

/// A Kubernetes object from YAML, typed by its `kind`.
fn object(yaml: &str) -> K8sObject {
    let value: serde_yaml::Value = parse(yaml);
    match value.get("kind").and_then(|k| k.as_str()) {
        Some("Namespace") => K8sObject::Namespace(parse(yaml)),
        Some("Node") => K8sObject::Node(parse(yaml)),
        Some("Pod") => K8sObject::Pod(parse(yaml)),
        Some("Service") => K8sObject::Service(parse(yaml)),
        Some("EndpointSlice") => K8sObject::EndpointSlice(parse(yaml)),
        Some("NetworkPolicy") => K8sObject::NetworkPolicy(parse(yaml)),
        other => panic!("test YAML has no supported kind ({other:?}):\n{yaml}"),
    }
}

/// An `Apply` event; the object must be valid, as a source would deliver it.
fn apply(yaml: &str) -> SourceEvent {
    let object = object(yaml);
    let problems = validate(&object);
    assert!(
        problems.is_empty(),
        "test object is invalid: {problems:?}\n{yaml}"
    );
    SourceEvent::Apply(object)
}

fn delete(kind: ObjectKind, namespace: &str, name: &str) -> SourceEvent {
    SourceEvent::Delete(ObjectRef::new(kind, namespace, name))
}

fn applies<S: AsRef<str>>(manifests: &[S]) -> Vec<SourceEvent> {
    manifests.iter().map(|m| apply(m.as_ref())).collect()
}

fn translator() -> Translator {
    Translator::new(TranslateOptions::default())
}

/// A default translator that has applied these manifests in one batch.
fn translated<S: AsRef<str>>(manifests: &[S]) -> Translator {
    let mut t = translator();
    t.apply(applies(manifests));
    t
}

/// Applies a batch and summarizes its changes (see [`summary`]).
fn step(t: &mut Translator, events: Vec<SourceEvent>) -> Vec<String> {
    let changes = t.apply(events);
    summary(t, &changes)
}

/// Changes as sorted `+kind name` / `-kind name` lines. Checks that each key
/// is reported at most once per batch, that an upsert is what is now
/// published, and that a removed key is no longer published.
fn summary(t: &Translator, changes: &[Change]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for change in changes {
        let (key, line) = match change {
            Change::Upsert(key, published) => {
                let now = t
                    .published()
                    .get(key)
                    .unwrap_or_else(|| panic!("{key} upserted but not published"));
                assert_eq!(now.version(), published.version(), "{key}");
                (key, format!("+{key}"))
            }
            Change::Remove(key) => {
                assert!(
                    !t.published().contains_key(key),
                    "{key} removed but still published"
                );
                (key, format!("-{key}"))
            }
        };
        assert!(
            seen.insert(key.clone()),
            "{key} reported twice in one batch"
        );
        out.push(line);
    }
    out.sort();
    out
}

/// Everything a translator publishes, decoded back into the model.
#[derive(Debug, Default)]
struct Model {
    services: BTreeMap<String, model::Service>,
    workloads: BTreeMap<String, model::Workload>,
    nodes: BTreeMap<String, model::Node>,
}

fn decoded(t: &Translator) -> Model {
    let mut m = Model::default();
    for (key, published) in t.published() {
        // Policies and their peer groups are scoped to nodes; their own
        // tests cover them.
        if matches!(
            key.kind,
            ferry_api::Kind::Policy | ferry_api::Kind::PeerGroup
        ) {
            continue;
        }
        assert_eq!(published.scope, Scope::AllNodes, "{key}");
        let resource = VersionedResource::decode(published.resource().unwrap())
            .unwrap_or_else(|e| panic!("published {key} does not decode: {e}"));
        assert_eq!(&resource.key, key);
        assert_eq!(resource.version, published.version(), "{key}");
        let name = key.name.clone();
        let fresh = match resource.body {
            ResourceBody::Service(s) => m.services.insert(name.to_string(), *s).is_none(),
            ResourceBody::Workload(w) => m.workloads.insert(name.to_string(), w).is_none(),
            ResourceBody::Node(n) => m.nodes.insert(name.to_string(), *n).is_none(),
            ResourceBody::Policy(_) | ResourceBody::PeerGroup(_) => continue,
        };
        assert!(fresh, "{key} published twice");
    }
    m
}

fn find_service(t: &Translator, key: &str) -> Option<model::Service> {
    decoded(t).services.remove(key)
}

fn service(t: &Translator, key: &str) -> model::Service {
    find_service(t, key).unwrap_or_else(|| panic!("service {key} is not published"))
}

fn find_workload(t: &Translator, key: &str) -> Option<model::Workload> {
    decoded(t).workloads.remove(key)
}

fn workload(t: &Translator, key: &str) -> model::Workload {
    find_workload(t, key).unwrap_or_else(|| panic!("workload {key} is not published"))
}

fn node(t: &Translator, name: &str) -> model::Node {
    decoded(t)
        .nodes
        .remove(name)
        .unwrap_or_else(|| panic!("node {name} is not published"))
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|ip| ip.parse().unwrap()).collect()
}

fn labels(list: &[(&str, &str)]) -> BTreeMap<String, String> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn named_port(name: &str, port: u16, protocol: Protocol) -> NamedPort {
    NamedPort {
        name: name.into(),
        port,
        protocol,
    }
}

fn endpoint_addresses(s: &model::Service) -> Vec<String> {
    s.endpoints.iter().map(|e| e.address.to_string()).collect()
}

fn endpoint_workloads(s: &model::Service) -> Vec<String> {
    s.endpoints
        .iter()
        .map(|e| e.workload.as_deref().unwrap_or("-").to_string())
        .collect()
}

/// Replaces the first `from` (which must be present) by `to`.
fn with(yaml: String, from: &str, to: &str) -> String {
    assert!(yaml.contains(from), "{from:?} not in\n{yaml}");
    yaml.replacen(from, to, 1)
}

const READY_TRUE: &str = r#"status: "True""#;

/// A scheduled, running, Ready pod on node-a with container port `http` 8080/TCP.
fn pod(ns: &str, name: &str, labels: &str, ip: &str) -> String {
    format!(
        r#"kind: Pod
metadata: {{name: {name}, namespace: {ns}, uid: uid-{name}, labels: {labels}}}
spec:
  nodeName: node-a
  containers: [{{name: app, ports: [{{name: http, containerPort: 8080}}]}}]
status:
  phase: Running
  podIP: "{ip}"
  conditions: [{{type: Ready, {READY_TRUE}}}]
"#
    )
}

fn unready(pod: String) -> String {
    with(pod, READY_TRUE, r#"status: "False""#)
}

fn terminating(pod: String) -> String {
    with(
        pod,
        "metadata: {",
        r#"metadata: {deletionTimestamp: "2025-01-01T00:00:00Z", "#,
    )
}

fn phase(pod: String, phase: &str) -> String {
    with(pod, "phase: Running", &format!("phase: {phase}"))
}

fn host_network(pod: String) -> String {
    with(pod, "spec:\n", "spec:\n  hostNetwork: true\n")
}

/// Marks the selector of [`svc`] as absent.
const NO_SELECTOR: &str = "null";

/// A ClusterIP service with port `http` 80 -> targetPort `http`.
fn svc(ns: &str, name: &str, selector: &str) -> String {
    format!(
        r#"kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  clusterIP: 10.96.0.10
  selector: {selector}
  ports: [{{name: http, port: 80, targetPort: http}}]
"#
    )
}

/// A service `shop/web` with a single unnamed port 80 and these extra spec lines.
fn svc_spec(spec_lines: &str) -> String {
    format!(
        r#"kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  ports: [{{port: 80}}]
  {spec_lines}
"#
    )
}

/// An IPv4 EndpointSlice of `service` with port `http` 8080/TCP.
fn slice(ns: &str, name: &str, service: &str, endpoints: &str) -> String {
    format!(
        r#"kind: EndpointSlice
metadata: {{name: {name}, namespace: {ns}, labels: {{kubernetes.io/service-name: {service}}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints: {endpoints}
"#
    )
}

/// [`slice`] with one condition-less endpoint per address.
fn slice_of(ns: &str, name: &str, service: &str, addresses: &[&str]) -> String {
    let endpoints: Vec<String> = addresses
        .iter()
        .map(|a| format!(r#"{{addresses: ["{a}"]}}"#))
        .collect();
    slice(ns, name, service, &format!("[{}]", endpoints.join(", ")))
}

fn namespace(name: &str, labels: &str) -> String {
    format!("kind: Namespace\nmetadata: {{name: {name}, labels: {labels}}}\n")
}

fn node_yaml(name: &str, addresses: &str) -> String {
    format!("kind: Node\nmetadata: {{name: {name}}}\nstatus: {{addresses: {addresses}}}\n")
}

// ------------------------------------------------------------ pod -> workload

#[test]
fn pod_fields_map_onto_the_workload() {
    let t = translated(&[r#"
kind: Pod
metadata:
  name: web-1
  namespace: shop
  uid: 1234-abcd
  labels: {app: web, version: v1}
spec:
  nodeName: node-a
  serviceAccountName: web-sa
  containers:
  - name: app
    ports:
    - {name: http, containerPort: 8080}
    - {containerPort: 9090}
  - name: sidecar
    ports:
    - {name: dns, containerPort: 53, protocol: UDP}
    - {name: metrics, containerPort: 9100, protocol: SCTP}
status:
  phase: Running
  podIP: 10.0.1.5
  conditions: [{type: Ready, status: "True"}]
"#]);
    assert_eq!(
        workload(&t, "shop/web-1"),
        model::Workload {
            key: "shop/web-1".into(),
            node: Some("node-a".into()),
            addresses: ips(&["10.0.1.5"]).into(),
            ready: true,
            terminating: false,
            profile: std::sync::Arc::new(model::Profile {
                namespace: "shop".into(),
                service_account: "web-sa".into(),
                labels: labels(&[("app", "web"), ("version", "v1")]).into(),
                ports: vec![
                    named_port("http", 8080, Protocol::Tcp),
                    named_port("dns", 53, Protocol::Udp),
                    named_port("metrics", 9100, Protocol::Sctp),
                ]
                .into(),
                mesh: true,
                controller: None,
            }),
        }
    );
}

#[test]
fn pod_addresses_come_from_pod_ips_else_pod_ip() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "dual stack podIPs",
            "podIP: 10.0.0.1\n  podIPs: [{ip: 10.0.0.1}, {ip: \"fd00::1\"}]",
            &["10.0.0.1", "fd00::1"],
        ),
        (
            "IPv6 podIPs only",
            "podIPs: [{ip: \"fd00::2\"}]",
            &["fd00::2"],
        ),
        ("podIP only", "podIP: 10.0.0.2", &["10.0.0.2"]),
        (
            "empty podIPs, podIP",
            "podIP: 10.0.0.3\n  podIPs: []",
            &["10.0.0.3"],
        ),
        ("no address yet", "phase: Pending", &[]),
    ];
    for (name, status, want) in cases {
        let t = translated(&[format!(
            "kind: Pod\nmetadata: {{name: p, namespace: shop}}\nspec: {{containers: [{{name: app}}]}}\nstatus:\n  {status}\n"
        )]);
        assert_eq!(
            workload(&t, "shop/p").addresses,
            ips(want).into(),
            "case {name}"
        );
    }
}

#[test]
fn pod_ready_condition_decides_ready() {
    let cases = [
        ("Ready True", r#"[{type: Ready, status: "True"}]"#, true),
        (
            "Ready among others",
            r#"[{type: PodScheduled, status: "True"}, {type: Ready, status: "True"}]"#,
            true,
        ),
        ("Ready False", r#"[{type: Ready, status: "False"}]"#, false),
        (
            "Ready Unknown",
            r#"[{type: Ready, status: "Unknown"}]"#,
            false,
        ),
        (
            "only ContainersReady",
            r#"[{type: ContainersReady, status: "True"}]"#,
            false,
        ),
        ("no conditions", "[]", false),
    ];
    for (name, conditions, want) in cases {
        let t = translated(&[format!(
            "kind: Pod\nmetadata: {{name: p, namespace: shop}}\nspec: {{containers: [{{name: app}}]}}\nstatus:\n  podIP: 10.0.0.1\n  conditions: {conditions}\n"
        )]);
        assert_eq!(workload(&t, "shop/p").ready, want, "case {name}");
    }
}

#[test]
fn pod_with_deletion_timestamp_is_terminating() {
    let cases = [
        ("running", pod("shop", "p", "{}", "10.0.0.1"), false),
        (
            "being deleted",
            terminating(pod("shop", "p", "{}", "10.0.0.1")),
            true,
        ),
    ];
    for (name, yaml, want) in cases {
        let w = workload(&translated(&[yaml]), "shop/p");
        assert_eq!(w.terminating, want, "case {name}");
        assert!(w.ready, "case {name}: the Ready condition still says ready");
    }
}

#[test]
fn pod_service_account_defaults_to_default() {
    let cases = [
        ("absent", "", "default"),
        ("empty", "  serviceAccountName: \"\"\n", "default"),
        ("set", "  serviceAccountName: web-sa\n", "web-sa"),
    ];
    for (name, line, want) in cases {
        let yaml = format!(
            "kind: Pod\nmetadata: {{name: p, namespace: shop}}\nspec:\n{line}  containers: [{{name: app}}]\n"
        );
        assert_eq!(
            workload(&translated(&[yaml]), "shop/p").service_account,
            want.into(),
            "case {name}"
        );
    }
}

#[test]
fn pod_named_container_ports_become_workload_ports() {
    let cases: &[(&str, &str, Vec<NamedPort>)] = &[
        ("no ports", "[{name: app}]", vec![]),
        ("unnamed ports are left out", "[{name: app, ports: [{containerPort: 8080}]}]", vec![]),
        (
            "protocol defaults to TCP",
            "[{name: app, ports: [{name: http, containerPort: 8080}]}]",
            vec![named_port("http", 8080, Protocol::Tcp)],
        ),
        (
            "every container, in order",
            "[{name: a, ports: [{name: web, containerPort: 80}]}, {name: b, ports: [{name: dns, containerPort: 53, protocol: UDP}, {name: sctp, containerPort: 9, protocol: SCTP}]}]",
            vec![
                named_port("web", 80, Protocol::Tcp),
                named_port("dns", 53, Protocol::Udp),
                named_port("sctp", 9, Protocol::Sctp),
            ],
        ),
    ];
    for (name, containers, want) in cases {
        let yaml = format!("kind: Pod\nmetadata: {{name: p, namespace: shop}}\nspec: {{containers: {containers}}}\n");
        assert_eq!(
            &*workload(&translated(&[yaml]), "shop/p").ports,
            want,
            "case {name}"
        );
    }
}

#[test]
fn pod_without_namespace_lands_in_default() {
    let t = translated(&["kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: app}]}\n"]);
    let w = workload(&t, "default/p");
    assert_eq!(
        (&*w.namespace, w.name(), w.node.as_deref()),
        ("default", "p", None)
    );
}

#[test]
fn finished_pods_produce_no_workload() {
    let cases = [
        ("Pending", true),
        ("Running", true),
        ("Unknown", true),
        ("Succeeded", false),
        ("Failed", false),
    ];
    for (p, published) in cases {
        let t = translated(&[phase(pod("shop", "p", "{app: web}", "10.0.0.1"), p)]);
        assert_eq!(
            find_workload(&t, "shop/p").is_some(),
            published,
            "phase {p}"
        );
    }
}

#[test]
fn pod_that_finishes_is_removed_and_leaves_its_services() {
    let mut t = translated(&[
        svc("shop", "web", "{app: web}"),
        pod("shop", "a", "{app: web}", "10.0.0.1"),
        pod("shop", "b", "{app: web}", "10.0.0.2"),
    ]);
    assert_eq!(
        endpoint_workloads(&service(&t, "shop/web")),
        ["shop/a", "shop/b"]
    );

    let done = phase(pod("shop", "a", "{app: web}", "10.0.0.1"), "Succeeded");
    assert_eq!(
        step(&mut t, vec![apply(&done)]),
        ["+service shop/web", "-workload shop/a"]
    );
    assert_eq!(endpoint_workloads(&service(&t, "shop/web")), ["shop/b"]);
    assert!(find_workload(&t, "shop/a").is_none());

    // The finished pod's later deletion has nothing left to remove.
    assert!(step(&mut t, vec![delete(ObjectKind::Pod, "shop", "a")]).is_empty());
}

#[test]
fn host_network_pods_are_not_in_the_mesh() {
    let cases = [
        ("no labels", "{}", "{app: web}"),
        (
            "namespace enabled",
            "{ferry.dev/mesh: enabled}",
            "{app: web}",
        ),
        ("pod enabled", "{}", "{app: web, ferry.dev/mesh: enabled}"),
    ];
    for (name, ns_labels, pod_labels) in cases {
        let t = translated(&[
            namespace("shop", ns_labels),
            svc("shop", "web", "{app: web}"),
            host_network(pod("shop", "h", pod_labels, "192.168.0.10")),
        ]);
        assert!(!workload(&t, "shop/h").mesh, "case {name}");
        // Still a backend of its services, at the node's address.
        assert_eq!(
            endpoint_addresses(&service(&t, "shop/web")),
            ["192.168.0.10"],
            "case {name}"
        );
    }
}

#[test]
fn mesh_label_on_pod_overrides_namespace_label() {
    // (mesh by default, namespace label, pod label, in the mesh)
    let cases = [
        (true, None, None, true),
        (true, Some("disabled"), None, false),
        (true, Some("enabled"), None, true),
        (true, Some("disabled"), Some("enabled"), true),
        (true, Some("enabled"), Some("disabled"), false),
        (true, None, Some("disabled"), false),
        (true, Some("disabled"), Some("bogus"), false),
        (true, Some("bogus"), None, true),
        (false, None, None, false),
        (false, Some("enabled"), None, true),
        (false, None, Some("enabled"), true),
        (false, Some("enabled"), Some("disabled"), false),
        (false, Some("bogus"), Some("bogus"), false),
    ];
    let mesh_labels = |value: Option<&str>| match value {
        Some(v) => format!("{{app: web, ferry.dev/mesh: {v}}}"),
        None => "{app: web}".to_string(),
    };
    for (by_default, ns, p, want) in cases {
        let mut t = Translator::new(TranslateOptions {
            mesh_by_default: by_default,
            ..TranslateOptions::default()
        });
        t.apply(applies(&[
            namespace("shop", &mesh_labels(ns)),
            pod("shop", "p", &mesh_labels(p), "10.0.0.1"),
        ]));
        assert_eq!(
            workload(&t, "shop/p").mesh,
            want,
            "mesh by default {by_default}, namespace {ns:?}, pod {p:?}"
        );
    }
}

#[test]
fn namespace_label_change_flips_mesh_for_its_pods() {
    // The Namespace object arrives after its pods.
    let mut t = translated(&[
        svc("shop", "web", "{app: web}"),
        pod("shop", "a", "{app: web}", "10.0.0.1"),
        pod(
            "shop",
            "b",
            "{app: web, ferry.dev/mesh: enabled}",
            "10.0.0.2",
        ),
        pod("other", "c", "{app: web}", "10.0.1.1"),
    ]);
    let mesh = |t: &Translator| {
        let m = decoded(t);
        ["shop/a", "shop/b", "other/c"].map(|k| m.workloads[k].mesh)
    };
    assert_eq!(mesh(&t), [true, true, true]);

    // Only the pod that follows its namespace changes; endpoints carry no
    // mesh flag, so the service is untouched.
    let disabled = namespace("shop", "{ferry.dev/mesh: disabled}");
    assert_eq!(step(&mut t, vec![apply(&disabled)]), ["+workload shop/a"]);
    assert_eq!(mesh(&t), [false, true, true]);

    assert_eq!(
        step(
            &mut t,
            vec![apply(&namespace("shop", "{ferry.dev/mesh: enabled}"))]
        ),
        ["+workload shop/a"]
    );
    assert_eq!(mesh(&t), [true, true, true]);

    // Label removed: the default (in the mesh) is what the pod already has.
    assert!(step(&mut t, vec![apply(&namespace("shop", "{team: x}"))]).is_empty());

    // Other labels changing does not matter.
    assert_eq!(step(&mut t, vec![apply(&disabled)]), ["+workload shop/a"]);
    assert!(step(
        &mut t,
        vec![apply(&namespace(
            "shop",
            "{ferry.dev/mesh: disabled, team: y}"
        ))]
    )
    .is_empty());

    // A pod created in the namespace now starts outside the mesh.
    step(
        &mut t,
        vec![apply(&pod("shop", "d", "{app: db}", "10.0.0.4"))],
    );
    assert!(!workload(&t, "shop/d").mesh);

    // The namespace goes away: back to the default.
    assert_eq!(
        step(&mut t, vec![delete(ObjectKind::Namespace, "", "shop")]),
        ["+workload shop/a", "+workload shop/d"]
    );
    assert_eq!(mesh(&t), [true, true, true]);
}

#[test]
fn namespace_label_change_keeps_host_network_pods_out_of_the_mesh() {
    let mut t = translated(&[
        namespace("shop", "{ferry.dev/mesh: disabled}"),
        host_network(pod("shop", "h", "{app: web}", "192.168.0.10")),
        pod("shop", "a", "{app: web}", "10.0.0.1"),
    ]);
    assert!(!workload(&t, "shop/h").mesh);
    assert_eq!(
        step(
            &mut t,
            vec![apply(&namespace("shop", "{ferry.dev/mesh: enabled}"))]
        ),
        ["+workload shop/a"]
    );
    assert!(
        !workload(&t, "shop/h").mesh,
        "a host-network pod never joins the mesh"
    );
    assert!(workload(&t, "shop/a").mesh);
}

// ------------------------------------------------------------------ services

#[test]
fn service_fields_map_onto_the_model() {
    let t = translated(&[
        pod("shop", "a", "{app: web}", "10.0.0.1"),
        r#"
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "fd00::10"]
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}
  externalIPs: [198.51.100.7]
  sessionAffinity: ClientIP
  internalTrafficPolicy: Local
  externalTrafficPolicy: Local
"#
        .to_string(),
    ]);
    assert_eq!(
        service(&t, "shop/web"),
        model::Service {
            namespace: "shop".into(),
            name: "web".into(),
            hostname: "web.shop.svc.cluster.local".into(),
            service_type: ServiceType::NodePort,
            cluster_ips: ips(&["10.96.0.10", "fd00::10"]),
            headless: false,
            ports: vec![
                ServicePort {
                    name: "http".into(),
                    port: 80,
                    protocol: Protocol::Tcp,
                    target_port: TargetPort::Name("http".into()),
                    node_port: Some(30080),
                },
                ServicePort {
                    name: "dns".into(),
                    port: 53,
                    protocol: Protocol::Udp,
                    target_port: TargetPort::Number(5353),
                    node_port: None,
                },
            ],
            load_balancer_ips: vec![],
            external_ips: ips(&["198.51.100.7"]),
            external_name: None,
            client_ip_affinity: Some(model::DEFAULT_AFFINITY_TIMEOUT_SECONDS),
            internal_traffic_policy: TrafficPolicy::Local,
            external_traffic_policy: TrafficPolicy::Local,
            endpoints: vec![Endpoint {
                workload: Some("shop/a".into()),
                address: "10.0.0.1".parse().unwrap(),
                ready: true,
                serving: true,
                terminating: false,
                placement: std::sync::Arc::new(ferry_api::model::Placement {
                    node: Some("node-a".into()),
                    ports: vec![Some(8080), Some(5353)].into(),
                    hostname: None,
                    node_hints: Vec::new().into(),
                    zone: None,
                    zone_hints: Vec::new().into(),
                }),
            }],
            selector: true,
            traffic_distribution: None,
        }
    );
}

#[test]
fn service_hostname_is_name_namespace_svc_cluster_domain() {
    let cases = [
        (
            "default domain",
            "cluster.local",
            "{name: web, namespace: shop}",
            "shop/web",
            "web.shop.svc.cluster.local",
        ),
        (
            "no namespace",
            "cluster.local",
            "{name: web}",
            "default/web",
            "web.default.svc.cluster.local",
        ),
        (
            "custom domain",
            "corp.example",
            "{name: api, namespace: prod}",
            "prod/api",
            "api.prod.svc.corp.example",
        ),
    ];
    for (name, domain, metadata, key, want) in cases {
        let mut t = Translator::new(TranslateOptions {
            cluster_domain: domain.into(),
            ..TranslateOptions::default()
        });
        t.apply(applies(&[format!(
            "kind: Service\nmetadata: {metadata}\nspec: {{ports: [{{port: 80}}]}}\n"
        )]));
        assert_eq!(&*service(&t, key).hostname, want, "case {name}");
    }
}

#[test]
fn service_cluster_ips_and_headless() {
    // (case, spec lines, cluster IPs, headless)
    let cases: &[(&str, &str, &[&str], bool)] = &[
        ("clusterIP", "clusterIP: 10.96.0.10", &["10.96.0.10"], false),
        (
            "clusterIPs win",
            "clusterIP: 10.96.0.10\n  clusterIPs: [10.96.0.10, \"fd00::10\"]",
            &["10.96.0.10", "fd00::10"],
            false,
        ),
        (
            "IPv6 only",
            "clusterIPs: [\"fd00::10\"]",
            &["fd00::10"],
            false,
        ),
        ("not allocated", "", &[], false),
        ("empty clusterIP", "clusterIP: \"\"", &[], false),
        ("headless", "clusterIP: None", &[], true),
        (
            "headless with clusterIPs",
            "clusterIP: None\n  clusterIPs: [None]",
            &[],
            true,
        ),
    ];
    for (name, spec, want_ips, want_headless) in cases {
        let s = service(&translated(&[svc_spec(spec)]), "shop/web");
        assert_eq!(s.cluster_ips, ips(want_ips), "case {name}");
        assert_eq!(s.headless, *want_headless, "case {name}");
    }
}

#[test]
fn headless_service_keeps_its_endpoints() {
    let t = translated(&[
        svc_spec("clusterIP: None\n  selector: {app: web}"),
        pod("shop", "a", "{app: web}", "10.0.0.1"),
        pod("shop", "b", "{app: web}", "10.0.0.2"),
    ]);
    let s = service(&t, "shop/web");
    assert!(s.headless && s.cluster_ips.is_empty());
    assert_eq!(endpoint_addresses(&s), ["10.0.0.1", "10.0.0.2"]);
}

#[test]
fn target_port_forms() {
    // The pod serves `http` on 8080.
    let cases = [
        (
            "absent: the port itself",
            "",
            TargetPort::Number(80),
            Some(80),
        ),
        (
            "number",
            ", targetPort: 9090",
            TargetPort::Number(9090),
            Some(9090),
        ),
        (
            "numeric string",
            ", targetPort: \"9090\"",
            TargetPort::Number(9090),
            Some(9090),
        ),
        (
            "name",
            ", targetPort: http",
            TargetPort::Name("http".into()),
            Some(8080),
        ),
        (
            "name the pod lacks",
            ", targetPort: grpc",
            TargetPort::Name("grpc".into()),
            None,
        ),
    ];
    for (name, target, want_target, want_port) in cases {
        let t = translated(&[
            pod("shop", "a", "{app: web}", "10.0.0.1"),
            format!(
                "kind: Service\nmetadata: {{name: web, namespace: shop}}\nspec:\n  selector: {{app: web}}\n  ports: [{{port: 80{target}}}]\n"
            ),
        ]);
        let s = service(&t, "shop/web");
        assert_eq!(s.ports[0].target_port, want_target, "case {name}");
        assert_eq!(s.endpoints[0].ports, [want_port].into(), "case {name}");
    }
}

#[test]
fn named_target_port_resolves_per_pod_and_protocol() {
    let pod_with = |name: &str, ip: &str, ports: &str| {
        format!(
            "kind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{app: web}}}}\nspec: {{containers: [{{name: app, ports: {ports}}}]}}\nstatus: {{podIP: {ip}, conditions: [{{type: Ready, status: \"True\"}}]}}\n"
        )
    };
    let t = translated(&[
        pod_with(
            "a",
            "10.0.0.1",
            "[{name: http, containerPort: 8080}, {name: dns, containerPort: 5353, protocol: UDP}]",
        ),
        pod_with(
            "b",
            "10.0.0.2",
            "[{name: http, containerPort: 8081}, {name: dns, containerPort: 53, protocol: TCP}]",
        ),
        pod_with("c", "10.0.0.3", "[{name: web, containerPort: 8080}]"),
        r#"
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: dns, port: 53, protocol: UDP, targetPort: dns}
"#
        .to_string(),
    ]);
    let s = service(&t, "shop/web");
    let ports: Vec<_> = s
        .endpoints
        .iter()
        .map(|e| (e.workload.as_deref(), e.ports.to_vec()))
        .collect();
    assert_eq!(
        ports,
        [
            (Some("shop/a"), vec![Some(8080), Some(5353)]),
            // `dns` is TCP in this pod: no match for the UDP service port.
            (Some("shop/b"), vec![Some(8081), None]),
            (Some("shop/c"), vec![None, None]),
        ]
    );
}

#[test]
fn node_ports_are_kept() {
    let t = translated(&[svc_spec("type: NodePort").replace(
        "ports: [{port: 80}]",
        "ports: [{name: http, port: 80, nodePort: 30080}, {name: admin, port: 81}]",
    )]);
    let s = service(&t, "shop/web");
    assert_eq!(s.service_type, ServiceType::NodePort);
    let node_ports: Vec<_> = s
        .ports
        .iter()
        .map(|p| (p.name.as_str(), p.node_port))
        .collect();
    assert_eq!(node_ports, [("http", Some(30080)), ("admin", None)]);
}

#[test]
fn load_balancer_ingress_ips_only_for_type_load_balancer() {
    let status = "status:\n  loadBalancer:\n    ingress: [{ip: 203.0.113.10}, {hostname: lb.example.com}, {ip: \"2001:db8::10\"}]\n";
    let cases: &[(&str, ServiceType, &[&str])] = &[
        (
            "LoadBalancer",
            ServiceType::LoadBalancer,
            &["203.0.113.10", "2001:db8::10"],
        ),
        ("ClusterIP", ServiceType::ClusterIP, &[]),
        ("NodePort", ServiceType::NodePort, &[]),
    ];
    for (kind, want_type, want) in cases {
        let yaml = format!("{}{status}", svc_spec(&format!("type: {kind}")));
        let s = service(&translated(&[yaml]), "shop/web");
        assert_eq!(s.service_type, *want_type, "type {kind}");
        assert_eq!(s.load_balancer_ips, ips(want), "type {kind}");
    }
    // A load balancer without status yet has no ingress IPs.
    let s = service(&translated(&[svc_spec("type: LoadBalancer")]), "shop/web");
    assert!(s.load_balancer_ips.is_empty());
}

#[test]
fn external_ips_are_kept() {
    let cases: &[(&str, &str, &[&str])] = &[
        ("none", "", &[]),
        (
            "both families",
            "externalIPs: [198.51.100.7, \"2001:db8::7\"]",
            &["198.51.100.7", "2001:db8::7"],
        ),
    ];
    for (name, spec, want) in cases {
        let s = service(&translated(&[svc_spec(spec)]), "shop/web");
        assert_eq!(s.external_ips, ips(want), "case {name}");
    }
}

#[test]
fn external_name_service_has_a_name_and_no_endpoints_or_cluster_ips() {
    let t = translated(&[
        pod("shop", "a", "{app: web}", "10.0.0.1"),
        svc_spec("type: ExternalName\n  externalName: db.example.com\n  clusterIP: 10.96.0.20\n  selector: {app: web}"),
        slice_of("shop", "web-1", "web", &["10.1.0.1"]),
    ]);
    let s = service(&t, "shop/web");
    assert_eq!(s.service_type, ServiceType::ExternalName);
    assert_eq!(s.external_name.as_deref(), Some("db.example.com"));
    assert!(s.endpoints.is_empty(), "{:?}", s.endpoints);
    assert!(s.cluster_ips.is_empty());
    assert!(!s.selector, "an ExternalName service selects nothing");

    // Only ExternalName services carry the name.
    let s = service(
        &translated(&[svc_spec("externalName: db.example.com")]),
        "shop/web",
    );
    assert_eq!(s.external_name, None);
}

#[test]
fn session_affinity_client_ip_with_default_or_explicit_timeout() {
    let cases = [
        ("absent", "", None),
        ("None", "sessionAffinity: None", None),
        ("None ignores the config", "sessionAffinity: None\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}", None),
        ("ClientIP, default timeout", "sessionAffinity: ClientIP", Some(10_800)),
        ("ClientIP, empty config", "sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {}}", Some(10_800)),
        ("ClientIP, timeout", "sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}", Some(60)),
        ("ClientIP, maximum", "sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 86400}}", Some(86_400)),
    ];
    assert_eq!(model::DEFAULT_AFFINITY_TIMEOUT_SECONDS, 10_800);
    for (name, spec, want) in cases {
        let s = service(&translated(&[svc_spec(spec)]), "shop/web");
        assert_eq!(s.client_ip_affinity, want, "case {name}");
    }
}

#[test]
fn traffic_policies() {
    use TrafficPolicy::{Cluster, Local};
    let cases = [
        ("defaults", "", Cluster, Cluster),
        (
            "internal Local",
            "internalTrafficPolicy: Local",
            Local,
            Cluster,
        ),
        (
            "external Local",
            "type: NodePort\n  externalTrafficPolicy: Local",
            Cluster,
            Local,
        ),
        (
            "both Local",
            "internalTrafficPolicy: Local\n  externalTrafficPolicy: Local",
            Local,
            Local,
        ),
        (
            "explicit Cluster",
            "internalTrafficPolicy: Cluster\n  externalTrafficPolicy: Cluster",
            Cluster,
            Cluster,
        ),
    ];
    for (name, spec, internal, external) in cases {
        let s = service(&translated(&[svc_spec(spec)]), "shop/web");
        assert_eq!(
            (s.internal_traffic_policy, s.external_traffic_policy),
            (internal, external),
            "case {name}"
        );
    }
}

// --------------------------------------------------- endpoints from selector

#[test]
fn selector_picks_matching_pods_in_the_service_namespace_only() {
    let t = translated(&[
        pod("shop", "a", "{app: web, tier: fe}", "10.0.0.1"),
        pod("shop", "b", "{app: web}", "10.0.0.2"),
        pod("shop", "c", "{app: db, tier: fe}", "10.0.0.3"),
        pod("other", "a", "{app: web, tier: fe}", "10.0.1.1"),
        svc("shop", "fe", "{app: web, tier: fe}"),
        svc("shop", "web", "{app: web}"),
        svc("other", "web", "{app: web}"),
    ]);
    let cases: &[(&str, &[&str])] = &[
        ("shop/fe", &["shop/a"]),
        ("shop/web", &["shop/a", "shop/b"]),
        ("other/web", &["other/a"]),
    ];
    for (key, want) in cases {
        let s = service(&t, key);
        assert!(s.selector, "{key}");
        assert_eq!(endpoint_workloads(&s), *want, "service {key}");
    }
}

#[test]
fn endpoint_conditions_follow_pod_readiness_and_termination() {
    // (case, Ready, terminating) -> (ready, serving, terminating)
    let cases = [
        ("ready", true, false, (true, true, false)),
        ("ready, terminating", true, true, (false, true, true)),
        ("not ready", false, false, (false, false, false)),
        ("not ready, terminating", false, true, (false, false, true)),
    ];
    for (name, ready, term, want) in cases {
        let mut p = pod("shop", "a", "{app: web}", "10.0.0.1");
        if !ready {
            p = unready(p);
        }
        if term {
            p = terminating(p);
        }
        let s = service(
            &translated(&[svc("shop", "web", "{app: web}"), p]),
            "shop/web",
        );
        let [e] = s.endpoints.as_slice() else {
            panic!("case {name}: {:?}", s.endpoints)
        };
        assert_eq!((e.ready, e.serving, e.terminating), want, "case {name}");
        assert_eq!(
            (
                e.workload.as_deref(),
                e.address,
                e.node.as_deref(),
                &*e.ports,
                e.hostname.as_deref()
            ),
            (
                Some("shop/a"),
                "10.0.0.1".parse().unwrap(),
                Some("node-a"),
                [Some(8080)].as_slice(),
                None
            ),
            "case {name}"
        );
    }
}

#[test]
fn publish_not_ready_addresses_makes_every_endpoint_ready() {
    // (case, Ready, terminating) -> (ready, serving, terminating)
    let cases = [
        ("not ready", false, false, (true, false, false)),
        ("ready, terminating", true, true, (true, true, true)),
    ];
    for (name, ready, term, want) in cases {
        let mut p = pod("shop", "a", "{app: web}", "10.0.0.1");
        if !ready {
            p = unready(p);
        }
        if term {
            p = terminating(p);
        }
        let published = svc("shop", "web", "{app: web}")
            .replace("spec:\n", "spec:\n  publishNotReadyAddresses: true\n");
        let s = service(&translated(&[published, p]), "shop/web");
        let [e] = s.endpoints.as_slice() else {
            panic!("case {name}: {:?}", s.endpoints)
        };
        assert_eq!((e.ready, e.serving, e.terminating), want, "case {name}");
    }
}

#[test]
fn dual_stack_pod_gives_one_endpoint_per_address() {
    let p = with(
        pod("shop", "a", "{app: web}", "10.0.0.1"),
        "podIP: \"10.0.0.1\"",
        "podIP: 10.0.0.1\n  podIPs: [{ip: 10.0.0.1}, {ip: \"fd00::1\"}]",
    );
    // A dual-stack service: one endpoint per address.
    let dual = svc("shop", "web", "{app: web}").replace(
        "spec:\n",
        "spec:\n  ipFamilyPolicy: PreferDualStack\n  ipFamilies: [IPv4, IPv6]\n  clusterIPs: [10.96.0.10, \"fd00::10\"]\n",
    );
    let s = service(&translated(&[dual, p.clone()]), "shop/web");
    assert_eq!(endpoint_addresses(&s), ["10.0.0.1", "fd00::1"]);
    assert_eq!(endpoint_workloads(&s), ["shop/a", "shop/a"]);
    // A single-stack one (IPv4: its cluster IP's family): its family only.
    let s = service(
        &translated(&[svc("shop", "web", "{app: web}"), p.clone()]),
        "shop/web",
    );
    assert_eq!(endpoint_addresses(&s), ["10.0.0.1"]);
    // Single-stack IPv6 by ipFamilies.
    let v6 = svc("shop", "web", "{app: web}").replace(
        "clusterIP: 10.96.0.10",
        "clusterIP: \"fd00::10\"\n  ipFamilies: [IPv6]",
    );
    let s = service(&translated(&[v6, p]), "shop/web");
    assert_eq!(endpoint_addresses(&s), ["fd00::1"]);
}

#[test]
fn empty_or_absent_selector_selects_nothing() {
    let mut t = translated(&[
        pod("shop", "a", "{app: web}", "10.0.0.1"),
        svc("shop", "empty", "{}"),
        svc("shop", "none", NO_SELECTOR),
    ]);
    for key in ["shop/empty", "shop/none"] {
        let s = service(&t, key);
        assert!(s.endpoints.is_empty(), "{key}: {:?}", s.endpoints);
        assert!(!s.selector, "{key}");
    }
    // Pod changes do not touch them either.
    assert_eq!(
        step(
            &mut t,
            vec![apply(&unready(pod("shop", "a", "{app: web}", "10.0.0.1")))]
        ),
        ["+workload shop/a"]
    );
}

// ---------------------------------------------- endpoints from EndpointSlices

#[test]
fn slices_take_precedence_over_the_selector() {
    let t = translated(&[
        svc("shop", "web", "{app: web}"),
        pod("shop", "a", "{app: web}", "10.0.0.1"),
        slice_of("shop", "web-abc", "web", &["10.1.0.1"]),
        // Same service name, other namespace: not this service's slice.
        slice_of("other", "web-xyz", "web", &["10.2.0.1"]),
    ]);
    let s = service(&t, "shop/web");
    assert_eq!(endpoint_addresses(&s), ["10.1.0.1"]);
    assert!(s.selector);
    assert_eq!(s.endpoints[0].ports, [Some(8080)].into());
}

#[test]
fn slice_conditions_take_the_api_defaults() {
    // (case, conditions) -> (ready, serving, terminating)
    let cases = [
        ("absent", "", (true, true, false)),
        ("empty", ", conditions: {}", (true, true, false)),
        // "A nil value should be interpreted as true" (EndpointConditions
        // in the API reference), for serving as for ready.
        (
            "not ready, serving unset",
            ", conditions: {ready: false}",
            (false, true, false),
        ),
        (
            "serving unset",
            ", conditions: {ready: true}",
            (true, true, false),
        ),
        (
            "not serving",
            ", conditions: {serving: false}",
            (true, false, false),
        ),
        (
            "terminating",
            ", conditions: {terminating: true}",
            (true, true, true),
        ),
        (
            "all given",
            ", conditions: {ready: false, serving: true, terminating: true}",
            (false, true, true),
        ),
    ];
    for (name, conditions, want) in cases {
        let t = translated(&[
            svc("shop", "web", NO_SELECTOR),
            slice(
                "shop",
                "s",
                "web",
                &format!("[{{addresses: [10.1.0.1]{conditions}}}]"),
            ),
        ]);
        let e = &service(&t, "shop/web").endpoints[0];
        assert_eq!((e.ready, e.serving, e.terminating), want, "case {name}");
    }
}

#[test]
fn slice_ports_map_by_service_port_name_and_protocol() {
    let cases: &[(&str, &str, &str, &[Option<u16>])] = &[
        (
            "by name and protocol",
            "[{name: http, port: 80, targetPort: http}, {name: dns, port: 53, protocol: UDP, targetPort: 5353}, {name: metrics, port: 9100}]",
            "[{name: dns, protocol: UDP, port: 5353}, {name: http, port: 8080}, {name: metrics, protocol: UDP, port: 9999}, {name: extra, port: 1}]",
            &[Some(8080), Some(5353), None],
        ),
        ("unnamed", "[{port: 80}]", "[{port: 8080}]", &[Some(8080)]),
        ("unnamed service port, named slice port", "[{port: 80}]", "[{name: http, port: 8080}]", &[None]),
        ("slice port without number", "[{name: http, port: 80}]", "[{name: http}]", &[None]),
        ("slice without ports", "[{name: http, port: 80}]", "[]", &[None]),
    ];
    for (name, service_ports, slice_ports, want) in cases {
        let t = translated(&[
            format!("kind: Service\nmetadata: {{name: web, namespace: shop}}\nspec: {{ports: {service_ports}}}\n"),
            format!(
                "kind: EndpointSlice\nmetadata: {{name: s, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: {slice_ports}\nendpoints: [{{addresses: [10.1.0.1]}}]\n"
            ),
        ]);
        assert_eq!(
            &*service(&t, "shop/web").endpoints[0].ports,
            *want,
            "case {name}"
        );
    }
}

#[test]
fn slice_target_ref_node_name_and_hostname() {
    let t = translated(&[
        svc("shop", "web", NO_SELECTOR),
        slice(
            "shop",
            "s",
            "web",
            "
- {addresses: [10.1.0.1], nodeName: node-a, hostname: web-0, targetRef: {kind: Pod, name: web-0}}
- {addresses: [10.1.0.2], targetRef: {kind: Pod, namespace: other, name: web-1}}
- {addresses: [10.1.0.3], nodeName: node-b, targetRef: {kind: Node, name: node-b}}
- {addresses: [10.1.0.4]}",
        ),
    ]);
    let s = service(&t, "shop/web");
    let got: Vec<_> = s
        .endpoints
        .iter()
        .map(|e| {
            (
                e.address.to_string(),
                e.workload.as_deref(),
                e.node.as_deref(),
                e.hostname.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "10.1.0.1".to_string(),
                Some("shop/web-0"),
                Some("node-a"),
                Some("web-0")
            ),
            ("10.1.0.2".to_string(), Some("other/web-1"), None, None),
            ("10.1.0.3".to_string(), None, Some("node-b"), None),
            ("10.1.0.4".to_string(), None, None, None),
        ]
    );
}

#[test]
fn fqdn_slices_are_skipped() {
    let t = translated(&[
        svc("shop", "web", NO_SELECTOR),
        "kind: EndpointSlice\nmetadata: {name: a-fqdn, namespace: shop, labels: {kubernetes.io/service-name: web}}\naddressType: FQDN\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [web.example.com]}]\n".to_string(),
        slice_of("shop", "b-ipv4", "web", &["10.1.0.1"]),
    ]);
    assert_eq!(endpoint_addresses(&service(&t, "shop/web")), ["10.1.0.1"]);
}

#[test]
fn ipv6_slices_are_used() {
    let slices = [
        slice_of("shop", "v4", "web", &["10.1.0.1"]),
        with(slice_of("shop", "v6", "web", &["fd00::1"]), "IPv4", "IPv6"),
    ];
    // A dual-stack service uses both families' slices...
    let dual = svc("shop", "web", NO_SELECTOR).replace(
        "spec:\n",
        "spec:\n  ipFamilies: [IPv4, IPv6]\n  clusterIPs: [10.96.0.10, \"fd00::10\"]\n",
    );
    let t = translated(&[dual, slices[0].clone(), slices[1].clone()]);
    assert_eq!(
        endpoint_addresses(&service(&t, "shop/web")),
        ["10.1.0.1", "fd00::1"]
    );
    // ...a single-stack IPv4 one only its family's, as kube-proxy does.
    let t = translated(&[
        svc("shop", "web", NO_SELECTOR),
        slices[0].clone(),
        slices[1].clone(),
    ]);
    assert_eq!(endpoint_addresses(&service(&t, "shop/web")), ["10.1.0.1"]);
}

#[test]
fn duplicate_address_is_used_once() {
    let t = translated(&[
        svc("shop", "web", NO_SELECTOR),
        slice("shop", "s1", "web", "[{addresses: [10.1.0.1], conditions: {ready: true}}]"),
        slice(
            "shop",
            "s2",
            "web",
            "[{addresses: [10.1.0.1], conditions: {ready: false}}, {addresses: [10.1.0.2, 10.1.0.2]}]",
        ),
    ]);
    let s = service(&t, "shop/web");
    assert_eq!(endpoint_addresses(&s), ["10.1.0.1", "10.1.0.2"]);
    assert!(s.endpoints[0].ready, "the first slice (by name) wins");
}

#[test]
fn a_network_endpoint_is_an_address_and_a_port() {
    // The same address on another port is another endpoint; only the
    // first of an endpoint's addresses counts.
    let other_port = "
kind: EndpointSlice
metadata: {name: s2, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 9000}]
endpoints: [{addresses: [10.1.0.1]}, {addresses: [10.1.0.3, 10.1.0.4]}]
";
    let t = translated(&[
        svc("shop", "web", NO_SELECTOR),
        slice_of("shop", "s1", "web", &["10.1.0.1"]),
        other_port.to_string(),
    ]);
    let s = service(&t, "shop/web");
    let got: Vec<(String, Vec<Option<u16>>)> = s
        .endpoints
        .iter()
        .map(|e| (e.address.to_string(), e.ports.to_vec()))
        .collect();
    assert_eq!(
        got,
        [
            ("10.1.0.1".to_string(), vec![Some(8080)]),
            ("10.1.0.1".to_string(), vec![Some(9000)]),
            ("10.1.0.3".to_string(), vec![Some(9000)]),
        ]
    );
}

#[test]
fn selectorless_service_uses_manual_slices() {
    let mut t = translated(&[
        svc("shop", "web", NO_SELECTOR),
        pod("shop", "a", "{app: web}", "10.0.0.1"),
        slice_of("shop", "manual", "web", &["10.9.0.1", "10.9.0.2"]),
    ]);
    let s = service(&t, "shop/web");
    assert!(!s.selector);
    assert_eq!(endpoint_addresses(&s), ["10.9.0.1", "10.9.0.2"]);
    assert_eq!(s.endpoints[0].ports, [Some(8080)].into());

    // Without slices, a selector-less service has no endpoints.
    assert_eq!(
        step(
            &mut t,
            vec![delete(ObjectKind::EndpointSlice, "shop", "manual")]
        ),
        ["+service shop/web"]
    );
    assert!(service(&t, "shop/web").endpoints.is_empty());
}

#[test]
fn slice_moving_to_another_service_updates_both() {
    let mut t = translated(&[
        svc("shop", "web", NO_SELECTOR),
        svc("shop", "api", NO_SELECTOR),
        slice_of("shop", "s", "web", &["10.1.0.1"]),
    ]);
    assert_eq!(endpoint_addresses(&service(&t, "shop/web")), ["10.1.0.1"]);
    assert!(service(&t, "shop/api").endpoints.is_empty());

    assert_eq!(
        step(
            &mut t,
            vec![apply(&slice_of("shop", "s", "api", &["10.1.0.1"]))]
        ),
        ["+service shop/api", "+service shop/web"]
    );
    assert!(service(&t, "shop/web").endpoints.is_empty());
    assert_eq!(endpoint_addresses(&service(&t, "shop/api")), ["10.1.0.1"]);
}

#[test]
fn deleting_the_last_slice_falls_back_to_selector_pods() {
    let mut t = translated(&[
        svc("shop", "web", "{app: web}"),
        pod("shop", "a", "{app: web}", "10.0.0.1"),
        slice_of("shop", "s1", "web", &["10.1.0.1"]),
        slice_of("shop", "s2", "web", &["10.1.0.2"]),
    ]);
    assert_eq!(
        endpoint_addresses(&service(&t, "shop/web")),
        ["10.1.0.1", "10.1.0.2"]
    );

    assert_eq!(
        step(
            &mut t,
            vec![delete(ObjectKind::EndpointSlice, "shop", "s1")]
        ),
        ["+service shop/web"]
    );
    assert_eq!(endpoint_addresses(&service(&t, "shop/web")), ["10.1.0.2"]);

    assert_eq!(
        step(
            &mut t,
            vec![delete(ObjectKind::EndpointSlice, "shop", "s2")]
        ),
        ["+service shop/web"]
    );
    assert_eq!(endpoint_workloads(&service(&t, "shop/web")), ["shop/a"]);
}

#[test]
fn slice_before_its_service_is_used_once_the_service_arrives() {
    let mut t = translated(&[slice_of("shop", "s", "web", &["10.1.0.1"])]);
    assert!(t.published().is_empty());
    assert_eq!(
        step(&mut t, vec![apply(&svc("shop", "web", "{app: web}"))]),
        ["+service shop/web"]
    );
    assert_eq!(endpoint_addresses(&service(&t, "shop/web")), ["10.1.0.1"]);
}

// ------------------------------------------------------------- incrementality

/// A small cluster with every kind of object.
fn cluster() -> Vec<String> {
    vec![
        namespace("shop", "{team: a}"),
        node_yaml("node-a", "[{type: InternalIP, address: 192.168.0.1}]"),
        node_yaml("node-b", "[{type: InternalIP, address: 192.168.0.2}]"),
        svc("shop", "web", "{app: web}"),
        svc("shop", "api", "{app: api}"),
        svc("shop", "db", "{app: db}"),
        svc("shop", "manual", NO_SELECTOR),
        svc("other", "web", "{app: web}"),
        pod("shop", "a", "{app: web}", "10.0.0.1"),
        pod("shop", "b", "{app: web}", "10.0.0.2"),
        pod("shop", "c", "{app: api}", "10.0.0.3"),
        pod("shop", "d", "{app: db}", "10.0.0.4"),
        pod("shop", "x", "{app: none}", "10.0.0.9"),
        pod("other", "e", "{app: web}", "10.0.1.1"),
        slice_of("shop", "manual-1", "manual", &["10.9.0.1"]),
        "kind: NetworkPolicy\nmetadata: {name: deny, namespace: shop}\nspec: {podSelector: {}}\n"
            .to_string(),
    ]
}

#[test]
fn initial_batch_publishes_every_resource_once() {
    let mut t = translator();
    let changes = step(&mut t, applies(&cluster()));
    assert_eq!(
        changes,
        [
            "+node node-a",
            "+node node-b",
            "+policy shop/deny",
            "+service other/web",
            "+service shop/api",
            "+service shop/db",
            "+service shop/manual",
            "+service shop/web",
            "+workload other/e",
            "+workload shop/a",
            "+workload shop/b",
            "+workload shop/c",
            "+workload shop/d",
            "+workload shop/x",
        ]
    );
    assert_eq!(t.policy_count(), 1);
    let m = decoded(&t);
    assert_eq!(
        endpoint_workloads(&m.services["shop/web"]),
        ["shop/a", "shop/b"]
    );
    assert_eq!(endpoint_workloads(&m.services["other/web"]), ["other/e"]);
    assert_eq!(endpoint_addresses(&m.services["shop/manual"]), ["10.9.0.1"]);
}

#[test]
fn batch_order_does_not_change_the_result() {
    let forward = translated(&cluster());
    let mut reversed = cluster();
    reversed.reverse();
    let backward = translated(&reversed);
    let versions = |t: &Translator| -> BTreeMap<String, u64> {
        t.published()
            .iter()
            .map(|(k, p)| (k.to_string(), p.version()))
            .collect()
    };
    assert_eq!(versions(&forward), versions(&backward));
}

#[test]
fn pod_label_change_returns_the_workload_and_its_old_and_new_services_only() {
    let mut t = translated(&cluster());
    let moved = pod("shop", "a", "{app: api}", "10.0.0.1");
    assert_eq!(
        step(&mut t, vec![apply(&moved)]),
        ["+service shop/api", "+service shop/web", "+workload shop/a"]
    );
    assert_eq!(endpoint_workloads(&service(&t, "shop/web")), ["shop/b"]);
    assert_eq!(
        endpoint_workloads(&service(&t, "shop/api")),
        ["shop/a", "shop/c"]
    );
    assert_eq!(
        workload(&t, "shop/a").labels,
        labels(&[("app", "api")]).into()
    );
}

#[test]
fn pod_change_touches_only_the_services_it_backs() {
    let mut t = translated(&cluster());
    let cases = [
        (
            "readiness of a backend",
            unready(pod("shop", "a", "{app: web}", "10.0.0.1")),
            vec!["+service shop/web", "+workload shop/a"],
        ),
        (
            "a pod no service selects",
            pod("shop", "x", "{app: none, v: \"2\"}", "10.0.0.9"),
            vec!["+workload shop/x"],
        ),
        (
            "a label services do not look at",
            pod("shop", "c", "{app: api, v: \"2\"}", "10.0.0.3"),
            // The service is re-translated, but its content is the same.
            vec!["+workload shop/c"],
        ),
    ];
    for (name, yaml, want) in cases {
        assert_eq!(step(&mut t, vec![apply(&yaml)]), want, "case {name}");
    }
    // A new pod joins its service (and the namespace-wide policy that
    // selects every pod of shop); deleting it leaves both again.
    let new = pod("shop", "f", "{app: db}", "10.0.0.6");
    assert_eq!(
        step(&mut t, vec![apply(&new)]),
        ["+policy shop/deny", "+service shop/db", "+workload shop/f"]
    );
    assert_eq!(
        step(&mut t, vec![delete(ObjectKind::Pod, "shop", "f")]),
        ["+policy shop/deny", "+service shop/db", "-workload shop/f"]
    );
    assert_eq!(endpoint_workloads(&service(&t, "shop/db")), ["shop/d"]);
}

#[test]
fn reapplying_identical_objects_changes_nothing() {
    let mut t = translated(&cluster());
    assert!(step(&mut t, applies(&cluster())).is_empty());
    for manifest in cluster() {
        assert!(
            step(&mut t, vec![apply(&manifest)]).is_empty(),
            "{manifest}"
        );
    }
}

#[test]
fn changes_within_one_batch_are_reported_once() {
    let mut t = translated(&cluster());
    let events = vec![
        apply(&unready(pod("shop", "a", "{app: web}", "10.0.0.1"))),
        apply(&pod("shop", "a", "{app: web}", "10.0.0.11")),
        apply(&pod("shop", "b", "{app: web}", "10.0.0.12")),
    ];
    assert_eq!(
        step(&mut t, events),
        ["+service shop/web", "+workload shop/a", "+workload shop/b"]
    );
    assert_eq!(
        endpoint_addresses(&service(&t, "shop/web")),
        ["10.0.0.11", "10.0.0.12"]
    );

    // Created and deleted in the same batch: never published, nothing to say.
    let events = vec![
        apply(&pod("shop", "tmp", "{app: none}", "10.0.0.99")),
        delete(ObjectKind::Pod, "shop", "tmp"),
    ];
    assert!(step(&mut t, events).is_empty());

    // Changed and changed back in the same batch: same content, no change.
    let events = vec![
        apply(&unready(pod("shop", "b", "{app: web}", "10.0.0.12"))),
        apply(&pod("shop", "b", "{app: web}", "10.0.0.12")),
    ];
    assert!(step(&mut t, events).is_empty());
}

#[test]
fn deleting_a_service_removes_it() {
    let mut t = translated(&cluster());
    assert_eq!(
        step(&mut t, vec![delete(ObjectKind::Service, "shop", "web")]),
        ["-service shop/web"]
    );
    assert!(find_service(&t, "shop/web").is_none());
    assert!(find_service(&t, "other/web").is_some());

    // Its former pods change alone now; deleting it again says nothing.
    assert_eq!(
        step(
            &mut t,
            vec![apply(&unready(pod("shop", "a", "{app: web}", "10.0.0.1")))]
        ),
        ["+workload shop/a"]
    );
    assert!(step(&mut t, vec![delete(ObjectKind::Service, "shop", "web")]).is_empty());

    // Re-created, it finds its pods again.
    assert_eq!(
        step(&mut t, vec![apply(&svc("shop", "web", "{app: web}"))]),
        ["+service shop/web"]
    );
    assert_eq!(
        endpoint_workloads(&service(&t, "shop/web")),
        ["shop/a", "shop/b"]
    );
}

#[test]
fn service_selector_change_recomputes_its_members() {
    let mut t = translated(&cluster());
    assert_eq!(
        step(&mut t, vec![apply(&svc("shop", "web", "{app: db}"))]),
        ["+service shop/web"]
    );
    assert_eq!(endpoint_workloads(&service(&t, "shop/web")), ["shop/d"]);
    // Membership now follows the new selector.
    assert_eq!(
        step(
            &mut t,
            vec![apply(&pod("shop", "a", "{app: db}", "10.0.0.1"))]
        ),
        ["+service shop/db", "+service shop/web", "+workload shop/a"]
    );
    assert_eq!(
        endpoint_workloads(&service(&t, "shop/web")),
        ["shop/a", "shop/d"]
    );
}

#[test]
fn node_change_returns_only_that_node() {
    let mut t = translated(&cluster());
    let changed = node_yaml("node-a", "[{type: InternalIP, address: 192.168.0.11}]");
    assert_eq!(step(&mut t, vec![apply(&changed)]), ["+node node-a"]);
    assert_eq!(
        node(&t, "node-a").hbone,
        Some("192.168.0.11:15008".parse().unwrap())
    );
    assert_eq!(
        step(&mut t, vec![delete(ObjectKind::Node, "", "node-b")]),
        ["-node node-b"]
    );
    assert!(!decoded(&t).nodes.contains_key("node-b"));
}

#[test]
fn node_hbone_address_is_first_internal_ip_else_external_ip() {
    let cases: &[(&str, &str, Option<&str>)] = &[
        (
            "InternalIP",
            "[{type: Hostname, address: n1}, {type: InternalIP, address: 10.0.0.1}]",
            Some("10.0.0.1:15008"),
        ),
        (
            "InternalIP before ExternalIP",
            "[{type: ExternalIP, address: 203.0.113.1}, {type: InternalIP, address: 10.0.0.1}, {type: InternalIP, address: 10.0.0.2}]",
            Some("10.0.0.1:15008"),
        ),
        (
            "ExternalIP when there is no InternalIP",
            "[{type: Hostname, address: n1}, {type: ExternalIP, address: 203.0.113.1}]",
            Some("203.0.113.1:15008"),
        ),
        ("IPv6", "[{type: InternalIP, address: \"fd00::1\"}]", Some("[fd00::1]:15008")),
        ("no IP", "[{type: Hostname, address: n1}]", None),
        ("no addresses", "[]", None),
    ];
    for (name, addresses, want) in cases {
        let n = node(&translated(&[node_yaml("n1", addresses)]), "n1");
        assert_eq!(
            n.hbone,
            want.map(|a| a.parse::<SocketAddr>().unwrap()),
            "case {name}"
        );
        assert_eq!(n.name, "n1");
    }
    // All addresses are kept, in order; the port comes from the options.
    let mut t = Translator::new(TranslateOptions {
        hbone_port: 15_009,
        ..TranslateOptions::default()
    });
    t.apply(applies(&[node_yaml(
        "n1",
        "[{type: Hostname, address: n1}, {type: InternalIP, address: 10.0.0.1}]",
    )]));
    let n = node(&t, "n1");
    assert_eq!(n.hbone, Some("10.0.0.1:15009".parse().unwrap()));
    let kinds: Vec<_> = n
        .addresses
        .iter()
        .map(|a| (a.kind.as_str(), a.address.as_str()))
        .collect();
    assert_eq!(kinds, [("Hostname", "n1"), ("InternalIP", "10.0.0.1")]);
}

// ----------------------------------------------------------------- validation

/// Validation problems of a manifest, as `field: message`.
fn problems(yaml: &str) -> Vec<String> {
    validate(&object(yaml))
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// Checks the exact problems of each `(case, manifest, problems)`.
fn assert_problems(cases: &[(&str, String, &[&str])]) {
    for (name, yaml, want) in cases {
        assert_eq!(problems(yaml), *want, "case {name}\n{yaml}");
    }
}

/// Service `shop/web` with this `spec`.
fn bad_service(spec: &str) -> String {
    format!("kind: Service\nmetadata: {{name: web, namespace: shop}}\nspec:\n  {spec}\n")
}

/// NetworkPolicy `shop/np` with this `spec`.
fn bad_policy(spec: &str) -> String {
    format!("kind: NetworkPolicy\nmetadata: {{name: np, namespace: shop}}\nspec:\n  {spec}\n")
}

#[test]
fn validate_accepts_the_objects_used_here() {
    for manifest in cluster() {
        assert_eq!(problems(&manifest), Vec::<String>::new(), "{manifest}");
    }
}

#[test]
fn validate_service_port_out_of_range() {
    assert_problems(&[
        (
            "port and nodePort",
            bad_service("ports: [{name: a, port: 0}, {name: b, port: 70000}, {name: c, port: 80, nodePort: 65536}]"),
            &[
                "spec.ports[0].port: 0 is outside 1-65535",
                "spec.ports[1].port: 70000 is outside 1-65535",
                "spec.ports[2].nodePort: 65536 is outside 1-65535",
            ],
        ),
        ("limits", bad_service("ports: [{name: a, port: 1}, {name: b, port: 65535}]"), &[]),
    ]);
}

#[test]
fn validate_service_bad_protocol() {
    assert_problems(&[
        (
            "unknown",
            bad_service("ports: [{port: 80, protocol: HTTP}]"),
            &[r#"spec.ports[0].protocol: "HTTP" is not one of TCP, UDP, SCTP"#],
        ),
        (
            "lower case",
            bad_service("ports: [{port: 80, protocol: tcp}]"),
            &[r#"spec.ports[0].protocol: "tcp" is not one of TCP, UDP, SCTP"#],
        ),
    ]);
}

#[test]
fn validate_service_bad_target_port() {
    assert_problems(&[
        (
            "underscore",
            bad_service("ports: [{port: 80, targetPort: http_web}]"),
            &[
                r#"spec.ports[0].targetPort: "http_web" is neither a port number nor a valid port name"#,
            ],
        ),
        (
            "longer than 15",
            bad_service("ports: [{port: 80, targetPort: a-very-long-name}]"),
            &[
                r#"spec.ports[0].targetPort: "a-very-long-name" is neither a port number nor a valid port name"#,
            ],
        ),
        (
            "double hyphen",
            bad_service("ports: [{port: 80, targetPort: web--api}]"),
            &[
                r#"spec.ports[0].targetPort: "web--api" is neither a port number nor a valid port name"#,
            ],
        ),
        (
            "numeric string out of range",
            bad_service("ports: [{port: 80, targetPort: \"70000\"}]"),
            &["spec.ports[0].targetPort: 70000 is outside 1-65535"],
        ),
        (
            "number out of range",
            bad_service("ports: [{port: 80, targetPort: 0}]"),
            &["spec.ports[0].targetPort: 0 is outside 1-65535"],
        ),
        (
            "valid name",
            bad_service("ports: [{port: 80, targetPort: http-alt2}]"),
            &[],
        ),
    ]);
}

#[test]
fn validate_service_port_name_required_with_two_or_more_ports() {
    assert_problems(&[
        (
            "two unnamed of three",
            bad_service("ports: [{port: 80}, {name: admin, port: 81}, {port: 82}]"),
            &[
                "spec.ports[0].name: required when the service has more than one port",
                "spec.ports[2].name: required when the service has more than one port",
            ],
        ),
        (
            "a single port needs no name",
            bad_service("ports: [{port: 80}]"),
            &[],
        ),
    ]);
}

#[test]
fn validate_service_duplicate_port_name() {
    assert_problems(&[(
        "same name twice",
        bad_service("ports: [{name: http, port: 80}, {name: http, port: 81, protocol: UDP}]"),
        &[r#"spec.ports[1].name: duplicate port name "http""#],
    )]);
}

#[test]
fn validate_service_bad_cluster_ip() {
    assert_problems(&[
        (
            "clusterIP",
            bad_service("clusterIP: 10.96.0.300"),
            &[r#"spec.clusterIP: "10.96.0.300" is not an IP address"#],
        ),
        (
            "clusterIPs",
            bad_service("clusterIPs: [10.96.0.10, nope]"),
            &[r#"spec.clusterIPs[1]: "nope" is not an IP address"#],
        ),
        (
            "None and empty are fine",
            bad_service("clusterIP: None\n  clusterIPs: [None]"),
            &[],
        ),
    ]);
}

#[test]
fn validate_external_name_service_needs_external_name() {
    assert_problems(&[
        (
            "absent",
            bad_service("type: ExternalName"),
            &["spec.externalName: required for type ExternalName"],
        ),
        (
            "empty",
            bad_service("type: ExternalName\n  externalName: \"\""),
            &["spec.externalName: required for type ExternalName"],
        ),
        (
            "given",
            bad_service("type: ExternalName\n  externalName: db.example.com"),
            &[],
        ),
    ]);
}

#[test]
fn validate_service_bad_session_affinity() {
    assert_problems(&[(
        "Cookie",
        bad_service("sessionAffinity: Cookie"),
        &[r#"spec.sessionAffinity: "Cookie" is not one of None, ClientIP"#],
    )]);
}

#[test]
fn validate_service_affinity_timeout_out_of_range() {
    let timeout = |t: i64| {
        bad_service(&format!("sessionAffinity: ClientIP\n  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {t}}}}}"))
    };
    assert_problems(&[
        (
            "zero",
            timeout(0),
            &["spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0 is outside 1-86400"],
        ),
        (
            "over a day",
            timeout(86_401),
            &["spec.sessionAffinityConfig.clientIP.timeoutSeconds: 86401 is outside 1-86400"],
        ),
        ("one", timeout(1), &[]),
        ("a day", timeout(86_400), &[]),
    ]);
}

#[test]
fn validate_service_bad_traffic_policy() {
    assert_problems(&[(
        "both",
        bad_service("internalTrafficPolicy: Nodes\n  externalTrafficPolicy: local"),
        &[
            r#"spec.internalTrafficPolicy: "Nodes" is not one of Cluster, Local"#,
            r#"spec.externalTrafficPolicy: "local" is not one of Cluster, Local"#,
        ],
    )]);
}

#[test]
fn an_unknown_traffic_distribution_is_accepted_and_gives_no_hints() {
    // Kubernetes adds values over time: a value Ferry does not know is
    // not an error (the API server of a newer version accepts it), it
    // only sets no hints.
    let manifests = [
        zoned_node("node-a", "eu-1a"),
        pod("shop", "a", "{app: web}", "10.0.0.1"),
        format!(
            "{}  trafficDistribution: PreferSomewhere\n",
            svc("shop", "web", "{app: web}")
        ),
    ];
    let t = translated(&manifests);
    let s = service(&t, "shop/web");
    assert_eq!(s.traffic_distribution.as_deref(), Some("PreferSomewhere"));
    assert!(s.endpoints.iter().all(|e| e.zone_hints.is_empty()));
}

#[test]
fn validate_endpoint_slice_without_service_name_label() {
    let slice_with = |labels: &str| {
        format!("kind: EndpointSlice\nmetadata: {{name: s, namespace: shop{labels}}}\naddressType: IPv4\nendpoints: []\n")
    };
    let want: &[&str] =
        &["metadata.labels[kubernetes.io/service-name]: missing: the slice belongs to no service"];
    assert_problems(&[
        ("no labels", slice_with(""), want),
        ("other labels", slice_with(", labels: {app: web}"), want),
        (
            "empty name",
            slice_with(", labels: {kubernetes.io/service-name: \"\"}"),
            want,
        ),
        (
            "labelled",
            slice_with(", labels: {kubernetes.io/service-name: web}"),
            &[],
        ),
    ]);
}

#[test]
fn validate_endpoint_slice_address_must_match_address_type() {
    let slice_with = |family: &str, addresses: &str| {
        format!(
            "kind: EndpointSlice\nmetadata: {{name: s, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}\naddressType: {family}\nendpoints: [{{addresses: {addresses}}}]\n"
        )
    };
    assert_problems(&[
        (
            "IPv6 in an IPv4 slice",
            slice_with("IPv4", "[10.0.0.1, \"fd00::1\"]"),
            &[r#"endpoints[0].addresses[1]: "fd00::1" is not an IPv4 address"#],
        ),
        (
            "IPv4 in an IPv6 slice",
            slice_with("IPv6", "[10.0.0.1]"),
            &[r#"endpoints[0].addresses[0]: "10.0.0.1" is not an IPv6 address"#],
        ),
        (
            "name in an IPv4 slice",
            slice_with("IPv4", "[web.example.com]"),
            &[r#"endpoints[0].addresses[0]: "web.example.com" is not an IPv4 address"#],
        ),
        (
            "name in an FQDN slice",
            slice_with("FQDN", "[web.example.com]"),
            &[],
        ),
    ]);
}

#[test]
fn validate_network_policy_bad_ip_block_cidr() {
    let peer = |cidr: &str| {
        bad_policy(&format!(
            "ingress: [{{from: [{{ipBlock: {{cidr: \"{cidr}\"}}}}]}}]"
        ))
    };
    assert_problems(&[
        (
            "prefix too long",
            peer("10.0.0.0/33"),
            &[r#"spec.ingress[0].from[0].ipBlock.cidr: "10.0.0.0/33": prefix length must be 0-32"#],
        ),
        (
            "host bits",
            peer("10.0.0.1/8"),
            &[
                r#"spec.ingress[0].from[0].ipBlock.cidr: "10.0.0.1/8": host bits are set (did you mean 10.0.0.0/8?)"#,
            ],
        ),
        (
            "no length",
            peer("10.0.0.0"),
            &[r#"spec.ingress[0].from[0].ipBlock.cidr: "10.0.0.0" is not a CIDR (address/length)"#],
        ),
        (
            "egress",
            bad_policy("egress: [{to: [{ipBlock: {cidr: \"fd00::/129\"}}]}]"),
            &[r#"spec.egress[0].to[0].ipBlock.cidr: "fd00::/129": prefix length must be 0-128"#],
        ),
        ("valid", peer("10.0.0.0/8"), &[]),
    ]);
}

#[test]
fn validate_network_policy_except_outside_the_cidr() {
    assert_problems(&[(
        "outside and wider",
        bad_policy(
            "ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16, 192.168.0.0/16, 0.0.0.0/0]}}]}]",
        ),
        &[
            "spec.ingress[0].from[0].ipBlock.except[1]: 192.168.0.0/16 is not inside 10.0.0.0/8",
            "spec.ingress[0].from[0].ipBlock.except[2]: 0.0.0.0/0 is not inside 10.0.0.0/8",
        ],
    )]);
}

#[test]
fn validate_network_policy_end_port_below_port() {
    assert_problems(&[
        (
            "below",
            bad_policy("ingress: [{ports: [{port: 8080, endPort: 80}]}]"),
            &["spec.ingress[0].ports[0].endPort: 80 is below port 8080"],
        ),
        (
            "named port",
            bad_policy("egress: [{ports: [{port: http, endPort: 80}]}]"),
            &["spec.egress[0].ports[0].endPort: needs a numeric port"],
        ),
        (
            "equal",
            bad_policy("ingress: [{ports: [{port: 8080, endPort: 8080}]}]"),
            &[],
        ),
    ]);
}

#[test]
fn validate_network_policy_bad_selector_operator() {
    assert_problems(&[
        (
            "policy selector",
            bad_policy("podSelector: {matchExpressions: [{key: app, operator: Equals, values: [web]}]}"),
            &[r#"spec.podSelector.matchExpressions[0].operator: "Equals" is not one of In, NotIn, Exists, DoesNotExist"#],
        ),
        (
            "peer selectors",
            bad_policy(
                "ingress: [{from: [{podSelector: {matchExpressions: [{key: app, operator: in, values: [web]}]}, namespaceSelector: {matchExpressions: [{key: team, operator: Exists}, {key: env, operator: Has}]}}]}]",
            ),
            &[
                r#"spec.ingress[0].from[0].podSelector.matchExpressions[0].operator: "in" is not one of In, NotIn, Exists, DoesNotExist"#,
                r#"spec.ingress[0].from[0].namespaceSelector.matchExpressions[1].operator: "Has" is not one of In, NotIn, Exists, DoesNotExist"#,
            ],
        ),
    ]);
}

#[test]
fn validate_pod_bad_container_port() {
    assert_problems(&[(
        "zero and too large",
        "kind: Pod\nmetadata: {name: p, namespace: shop}\nspec:\n  containers:\n  - {name: a, ports: [{containerPort: 8080}, {containerPort: 0}]}\n  - {name: b, ports: [{containerPort: 70000}]}\n".to_string(),
        &[
            "spec.containers[0].ports[1].containerPort: 0 is outside 1-65535",
            "spec.containers[1].ports[0].containerPort: 70000 is outside 1-65535",
        ],
    )]);
}

#[test]
fn validate_bad_metadata_name() {
    let pod_named = |metadata: &str| {
        format!("kind: Pod\nmetadata: {metadata}\nspec: {{containers: [{{name: a}}]}}\n")
    };
    assert_problems(&[
        (
            "upper case and underscore",
            pod_named("{name: Web_1, namespace: shop}"),
            &[
                r#"metadata.name: "Web_1" is not a valid name (lower-case letters, digits, '-' and '.')"#,
            ],
        ),
        (
            "leading hyphen",
            pod_named("{name: -web}"),
            &[
                r#"metadata.name: "-web" is not a valid name (lower-case letters, digits, '-' and '.')"#,
            ],
        ),
        (
            "missing",
            pod_named("{namespace: shop}"),
            &["metadata.name: missing"],
        ),
        (
            "empty",
            pod_named("{name: \"\"}"),
            &["metadata.name: missing"],
        ),
        ("dotted", pod_named("{name: web.v1}"), &[]),
        (
            "a service name must be a DNS label",
            bad_service("ports: [{port: 80}]").replace("name: web,", "name: web.v1,"),
            &[r#"metadata.name: "web.v1" is not a valid service name (a DNS label)"#],
        ),
    ]);
}

// ------------------------------------------------------------ topology

fn zoned_node(name: &str, zone: &str) -> String {
    format!(
        "kind: Node\nmetadata: {{name: {name}, labels: {{topology.kubernetes.io/zone: {zone}}}}}\n\
         status: {{addresses: [{{type: InternalIP, address: 192.168.0.1}}]}}\n"
    )
}

fn on_node(pod: String, node: &str) -> String {
    with(pod, "nodeName: node-a", &format!("nodeName: {node}"))
}

/// (address, zone, zone hints, node hints) of an endpoint.
type EndpointTopology = (String, Option<String>, Vec<String>, Vec<String>);

fn topology_of(s: &model::Service) -> Vec<EndpointTopology> {
    s.endpoints
        .iter()
        .map(|e| {
            (
                e.address.to_string(),
                e.zone.as_deref().map(str::to_string),
                e.zone_hints.iter().map(|z| z.to_string()).collect(),
                e.node_hints.iter().map(|n| n.to_string()).collect(),
            )
        })
        .collect()
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_nodes_zone_label_is_published() {
    let t = translated(&[zoned_node("node-a", "eu-1a"), node_yaml("node-b", "[]")]);
    assert_eq!(node(&t, "node-a").zone.as_deref(), Some("eu-1a"));
    assert_eq!(node(&t, "node-b").zone, None);
}

#[test]
fn slice_zones_and_hints_are_kept() {
    let t = translated(&[
        svc("shop", "web", NO_SELECTOR),
        slice(
            "shop",
            "s",
            "web",
            "
- {addresses: [10.1.0.1], zone: eu-1a, hints: {forZones: [{name: eu-1a}, {name: eu-1b}]}}
- {addresses: [10.1.0.2], zone: eu-1b, hints: {forNodes: [{name: node-b}], forZones: [{name: eu-1b}]}}
- {addresses: [10.1.0.3]}",
        ),
    ]);
    assert_eq!(
        topology_of(&service(&t, "shop/web")),
        [
            (
                "10.1.0.1".into(),
                Some("eu-1a".into()),
                strings(&["eu-1a", "eu-1b"]),
                vec![]
            ),
            (
                "10.1.0.2".into(),
                Some("eu-1b".into()),
                strings(&["eu-1b"]),
                strings(&["node-b"])
            ),
            ("10.1.0.3".into(), None, vec![], vec![]),
        ]
    );
}

#[test]
fn selector_endpoints_are_hinted_as_the_endpoint_slice_controller_hints_them() {
    let pods = || {
        vec![
            zoned_node("node-a", "eu-1a"),
            zoned_node("node-b", "eu-1b"),
            node_yaml("node-c", "[]"),
            pod("shop", "a", "{app: web}", "10.0.0.1"),
            on_node(pod("shop", "b", "{app: web}", "10.0.0.2"), "node-b"),
            on_node(pod("shop", "c", "{app: web}", "10.0.0.3"), "node-c"),
            unready(on_node(
                pod("shop", "d", "{app: web}", "10.0.0.4"),
                "node-b",
            )),
        ]
    };
    let with_distribution = |d: Option<&str>| {
        let mut manifests = pods();
        let mut service = svc("shop", "web", "{app: web}");
        if let Some(d) = d {
            service.push_str(&format!("  trafficDistribution: {d}\n"));
        }
        manifests.push(service);
        service_of(&translated(&manifests))
    };
    fn service_of(t: &Translator) -> model::Service {
        service(t, "shop/web")
    }
    let zone = |z: &str| Some(z.to_string());
    // Without a trafficDistribution: zones, no hints.
    assert_eq!(
        topology_of(&with_distribution(None)),
        [
            ("10.0.0.1".into(), zone("eu-1a"), vec![], vec![]),
            ("10.0.0.2".into(), zone("eu-1b"), vec![], vec![]),
            ("10.0.0.3".into(), None, vec![], vec![]),
            ("10.0.0.4".into(), zone("eu-1b"), vec![], vec![]),
        ]
    );
    // PreferClose (and its newer name): each ready endpoint hinted for its
    // own zone; no zone, no hint; not ready, no hint.
    for d in ["PreferClose", "PreferSameZone"] {
        let s = with_distribution(Some(d));
        assert_eq!(s.traffic_distribution.as_deref(), Some(d));
        assert_eq!(
            topology_of(&s),
            [
                (
                    "10.0.0.1".into(),
                    zone("eu-1a"),
                    strings(&["eu-1a"]),
                    vec![]
                ),
                (
                    "10.0.0.2".into(),
                    zone("eu-1b"),
                    strings(&["eu-1b"]),
                    vec![]
                ),
                ("10.0.0.3".into(), None, vec![], vec![]),
                ("10.0.0.4".into(), zone("eu-1b"), vec![], vec![]),
            ],
            "{d}"
        );
    }
    // PreferSameNode: the node as well as the zone.
    assert_eq!(
        topology_of(&with_distribution(Some("PreferSameNode"))),
        [
            (
                "10.0.0.1".into(),
                zone("eu-1a"),
                strings(&["eu-1a"]),
                strings(&["node-a"])
            ),
            (
                "10.0.0.2".into(),
                zone("eu-1b"),
                strings(&["eu-1b"]),
                strings(&["node-b"])
            ),
            ("10.0.0.3".into(), None, vec![], strings(&["node-c"])),
            ("10.0.0.4".into(), zone("eu-1b"), vec![], vec![]),
        ]
    );
}

#[test]
fn a_zone_change_retranslates_the_services_of_the_nodes_pods() {
    let mut t = translated(&[
        zoned_node("node-a", "eu-1a"),
        pod("shop", "a", "{app: web}", "10.0.0.1"),
        svc("shop", "web", "{app: web}"),
        svc("shop", "other", "{app: db}"),
    ]);
    let changes = step(&mut t, vec![apply(&zoned_node("node-a", "eu-1c"))]);
    assert_eq!(changes, ["+node node-a", "+service shop/web"]);
    assert_eq!(
        service(&t, "shop/web").endpoints[0].zone.as_deref(),
        Some("eu-1c")
    );
    // A node update that leaves the zone alone touches no service.
    let mut relabelled = zoned_node("node-a", "eu-1c");
    relabelled = relabelled.replace("labels: {", "labels: {role: db, ");
    let changes = step(&mut t, vec![apply(&relabelled)]);
    assert!(
        changes.iter().all(|c| !c.contains("service")),
        "{changes:?}"
    );
}

#[test]
fn a_pods_controller_names_its_workload_for_telemetry() {
    // (owner kind, owner name, pod-template-hash) -> controller
    let cases = [
        (
            "ReplicaSet",
            "web-7d9f8c6b5",
            Some("7d9f8c6b5"),
            Some("web"),
        ),
        ("ReplicaSet", "web-7d9f8c6b5", None, Some("web-7d9f8c6b5")),
        ("StatefulSet", "db", None, Some("db")),
        ("DaemonSet", "agent", None, Some("agent")),
        ("Job", "report-28391040", None, Some("report")),
        ("Job", "migrate", None, Some("migrate")),
        ("Job", "backup-2", None, Some("backup-2")),
    ];
    for (kind, name, hash, want) in cases {
        let labels = match hash {
            Some(h) => format!("{{app: web, pod-template-hash: \"{h}\"}}"),
            None => "{app: web}".to_string(),
        };
        let p = with(
            pod("shop", "a", &labels, "10.0.0.1"),
            "uid: uid-a,",
            &format!(
                "uid: uid-a, ownerReferences: [{{apiVersion: apps/v1, kind: {kind}, name: {name}, uid: o1, controller: true}}],"
            ),
        );
        let t = translated(&[p]);
        assert_eq!(
            workload(&t, "shop/a").controller.as_deref(),
            want,
            "{kind} {name}"
        );
    }
    let t = translated(&[pod("shop", "a", "{app: web}", "10.0.0.1")]);
    assert_eq!(workload(&t, "shop/a").controller, None, "no owner");
}

// ---------------------------------------------------------- peer groups

/// A pod on `node`.
fn pod_on(node: &str, ns: &str, name: &str, labels: &str, ip: &str) -> String {
    with(
        pod(ns, name, labels, ip),
        "nodeName: node-a",
        &format!("nodeName: {node}"),
    )
}

/// Shop's `web` admits `role: client` pods of every namespace labelled
/// `team: a`; `api` admits the same peer, and `role: front` of shop.
fn grouped_cluster() -> Vec<String> {
    vec![
        "kind: Namespace\nmetadata: {name: shop, labels: {team: a}}".to_string(),
        "kind: Namespace\nmetadata: {name: other, labels: {team: a}}".to_string(),
        "kind: Namespace\nmetadata: {name: far, labels: {team: b}}".to_string(),
        pod_on("node-a", "shop", "web", "{app: web}", "10.0.0.1"),
        pod_on("node-b", "shop", "api", "{app: api}", "10.0.0.2"),
        pod_on("node-a", "shop", "c1", "{role: client}", "10.0.0.3"),
        pod_on("node-c", "other", "c2", "{role: client}", "10.0.1.1"),
        pod_on("node-c", "far", "c3", "{role: client}", "10.0.2.1"),
        pod_on("node-c", "shop", "f1", "{role: front}", "10.0.0.4"),
        "kind: NetworkPolicy\nmetadata: {name: web, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: a}}, podSelector: {matchLabels: {role: client}}}]}]".to_string(),
        // The same peer written the other way round: the same group.
        "kind: NetworkPolicy\nmetadata: {name: api, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: api}}\n  ingress: [{from: [{podSelector: {matchExpressions: [{key: role, operator: In, values: [client]}]}, namespaceSelector: {matchExpressions: [{key: team, operator: In, values: [a]}]}}, {podSelector: {matchLabels: {role: front}}}]}]".to_string(),
    ]
}

/// Every published peer group share: `namespace/group` -> (pods, nodes).
fn shares(t: &Translator) -> BTreeMap<String, (Vec<String>, Scope)> {
    t.published()
        .iter()
        .filter(|(k, _)| k.kind == ferry_api::Kind::PeerGroup)
        .map(|(k, p)| {
            let decoded = VersionedResource::decode(p.resource().unwrap())
                .unwrap_or_else(|e| panic!("{k} does not decode: {e}"));
            let ResourceBody::PeerGroup(g) = decoded.body else {
                panic!("{k} is not a peer group");
            };
            (k.name.to_string(), (g.pods, p.scope.clone()))
        })
        .collect()
}

fn published_policy(t: &Translator, name: &str) -> model::Policy {
    let key = ferry_api::ResourceKey::new(ferry_api::Kind::Policy, name);
    let p = &t.published()[&key];
    match VersionedResource::decode(p.resource().unwrap()).map(|r| r.body) {
        Ok(ResourceBody::Policy(p)) => *p,
        other => panic!("{name}: {other:?}"),
    }
}

fn nodes(list: &[&str]) -> Scope {
    Scope::Nodes(std::sync::Arc::new(
        list.iter().map(|n| n.to_string()).collect(),
    ))
}

#[test]
fn equal_peers_of_different_policies_share_one_group_split_by_namespace() {
    let t = translated(&grouped_cluster());
    let web = published_policy(&t, "shop/web");
    let api = published_policy(&t, "shop/api");
    let group = |p: &model::Policy, i: usize| p.ingress_rules[0].peers[i].group.clone().unwrap();
    assert_eq!(group(&web, 0), group(&api, 0), "one group for one peer");
    assert_ne!(group(&api, 0), group(&api, 1));
    assert!(web.ingress_rules[0].peers[0].workloads.is_empty());
    assert_eq!(t.peer_group_count(), 2);
    let client = group(&web, 0);
    let front = group(&api, 1);
    // Members per namespace (far is team b: none); each share goes where
    // the policies naming it are enforced (web on node-a, api on node-b).
    assert_eq!(
        shares(&t),
        BTreeMap::from([
            (
                format!("other/{client}"),
                (vec!["c2".to_string()], nodes(&["node-a", "node-b"]))
            ),
            (
                format!("shop/{client}"),
                (vec!["c1".to_string()], nodes(&["node-a", "node-b"]))
            ),
            (
                format!("shop/{front}"),
                (vec!["f1".to_string()], nodes(&["node-b"]))
            ),
        ])
    );
    let share = &t.published()
        [&ferry_api::ResourceKey::new(ferry_api::Kind::PeerGroup, format!("shop/{client}"))];
    let Ok(ResourceBody::PeerGroup(g)) =
        VersionedResource::decode(share.resource().unwrap()).map(|r| r.body)
    else {
        panic!("not a group");
    };
    assert_eq!(g.selector, "pods {role=client} in namespaces {team=a}");
}

#[test]
fn the_group_id_depends_on_the_selectors_only() {
    use super::policy::selector_text;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
    let expression = |key: &str, operator: &str, values: &[&str]| LabelSelectorRequirement {
        key: key.into(),
        operator: operator.into(),
        values: Some(values.iter().map(|v| v.to_string()).collect()),
    };
    let a = LabelSelector {
        match_labels: Some(labels(&[("app", "web"), ("tier", "1")])),
        match_expressions: Some(vec![
            expression("zone", "NotIn", &["b", "a", "b"]),
            expression("env", "Exists", &[]),
        ]),
    };
    let b = LabelSelector {
        match_labels: Some(labels(&[("tier", "1"), ("app", "web")])),
        match_expressions: Some(vec![
            expression("env", "Exists", &[]),
            expression("zone", "NotIn", &["a", "b"]),
        ]),
    };
    assert_eq!(selector_text(&a), "app=web,env,tier=1,zone notin (a,b)");
    let one_value = LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![expression("app", "In", &["web"])]),
    };
    assert_eq!(selector_text(&one_value), "app=web");
    assert_eq!(selector_text(&a), selector_text(&b));
    assert_eq!(selector_text(&LabelSelector::default()), "");
    // Two translators (two replicas) name every group alike.
    let one = translated(&grouped_cluster());
    let mut reversed = grouped_cluster();
    reversed.reverse();
    let two = translated(&reversed);
    let versions = |t: &Translator| -> BTreeMap<String, u64> {
        t.published()
            .iter()
            .map(|(k, p)| (k.to_string(), p.version()))
            .collect()
    };
    assert_eq!(versions(&one), versions(&two));
}

#[test]
fn a_pod_label_change_republishes_its_namespace_share_and_no_policy() {
    let mut t = translated(&grouped_cluster());
    let client = published_policy(&t, "shop/web").ingress_rules[0].peers[0]
        .group
        .clone()
        .unwrap();
    // c2 stops being a client: only other's share of the client group and
    // the workload change; no policy is republished.
    assert_eq!(
        step(
            &mut t,
            vec![apply(&pod_on(
                "node-c",
                "other",
                "c2",
                "{role: server}",
                "10.0.1.1"
            ))]
        ),
        [
            "+workload other/c2".to_string(),
            format!("-peer_group other/{client}"),
        ]
    );
    // A new client in shop: shop's share only.
    assert_eq!(
        step(
            &mut t,
            vec![apply(&pod_on(
                "node-c",
                "shop",
                "c4",
                "{role: client}",
                "10.0.0.9"
            ))]
        ),
        [
            format!("+peer_group shop/{client}"),
            "+workload shop/c4".to_string(),
        ]
    );
    assert_eq!(shares(&t)[&format!("shop/{client}")].0, ["c1", "c4"]);
    // Team b's namespace joins team a: its client becomes a member.
    assert_eq!(
        step(
            &mut t,
            vec![apply(
                "kind: Namespace\nmetadata: {name: far, labels: {team: a}}"
            )]
        ),
        [format!("+peer_group far/{client}")]
    );
}

#[test]
fn groups_follow_their_policies_nodes_and_go_with_the_last_policy() {
    let mut t = translated(&grouped_cluster());
    let client = published_policy(&t, "shop/web").ingress_rules[0].peers[0]
        .group
        .clone()
        .unwrap();
    // web moves to node-d: the client group goes to node-d instead of node-a.
    step(
        &mut t,
        vec![apply(&pod_on(
            "node-d",
            "shop",
            "web",
            "{app: web}",
            "10.0.0.1",
        ))],
    );
    assert_eq!(
        shares(&t)[&format!("shop/{client}")].1,
        nodes(&["node-b", "node-d"])
    );
    // api goes: its front group goes with it; the client group stays for web.
    let changes = step(
        &mut t,
        vec![delete(ObjectKind::NetworkPolicy, "shop", "api")],
    );
    assert!(
        changes.contains(&"-policy shop/api".to_string()),
        "{changes:?}"
    );
    assert_eq!(t.peer_group_count(), 1);
    assert_eq!(
        shares(&t)
            .into_values()
            .map(|(_, scope)| scope)
            .collect::<Vec<_>>(),
        [nodes(&["node-d"]), nodes(&["node-d"])]
    );
    // web goes: nothing of either is left.
    step(
        &mut t,
        vec![delete(ObjectKind::NetworkPolicy, "shop", "web")],
    );
    assert_eq!(t.peer_group_count(), 0);
    assert!(shares(&t).is_empty());
}

#[test]
fn a_policy_edit_keeps_the_groups_both_versions_use() {
    let mut t = translated(&grouped_cluster());
    let before = shares(&t);
    // api drops its second peer: the front group goes, the shared one stays
    // (its shares are not republished: same members, same nodes).
    let edited = "kind: NetworkPolicy\nmetadata: {name: api, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: api}}\n  ingress: [{from: [{podSelector: {matchLabels: {role: client}}, namespaceSelector: {matchLabels: {team: a}}}]}]";
    let front = published_policy(&t, "shop/api").ingress_rules[0].peers[1]
        .group
        .clone()
        .unwrap();
    assert_eq!(
        step(&mut t, vec![apply(edited)]),
        [
            "+policy shop/api".to_string(),
            format!("-peer_group shop/{front}"),
        ]
    );
    assert_eq!(shares(&t).len(), before.len() - 1);
}

#[test]
fn the_interner_forgets_what_departed_pods_left() {
    // Rounds of 3,000 pods with labels of their own (a profile each), each
    // round replacing the one before: what the interner holds stays within
    // twice one round's values (it sweeps when it has doubled), where
    // keeping everything would grow by a round's worth each time.
    let mut t = translator();
    let round = |r: usize| -> Vec<String> {
        (0..3_000)
            .map(|i| format!("kind: Pod\nmetadata: {{name: p{r}-{i}, namespace: shop, labels: {{run: r{r}-{i}}}}}\nspec: {{containers: [{{name: app}}]}}\n"))
            .collect()
    };
    t.apply(applies(&round(0)));
    let one_round = t.interner.len();
    assert!(
        one_round > 3_000,
        "{one_round} values for 3,000 distinct pods"
    );
    for r in 1..6 {
        let mut events = applies(&round(r));
        events.extend(
            (0..3_000).map(|i| delete(ObjectKind::Pod, "shop", &format!("p{}-{i}", r - 1))),
        );
        t.apply(events);
        assert!(
            t.interner.len() <= 2 * one_round + 100,
            "round {r}: {} values held, one round is {one_round}",
            t.interner.len()
        );
    }
}

#[test]
fn a_namespace_emptied_of_everything_is_forgotten() {
    let mut t = translated(&[
        "kind: Namespace\nmetadata: {name: tmp}\n".to_string(),
        pod("tmp", "p", "{app: x}", "10.244.1.50"),
        svc("tmp", "s", "{app: x}"),
    ]);
    assert!(t.namespaces.contains_key("tmp"));
    // The pod and the service go: the Namespace object is still there.
    step(
        &mut t,
        vec![
            delete(ObjectKind::Pod, "tmp", "p"),
            delete(ObjectKind::Service, "tmp", "s"),
        ],
    );
    assert!(t.namespaces.contains_key("tmp"));
    // And then the namespace: nothing is left of it.
    step(&mut t, vec![delete(ObjectKind::Namespace, "", "tmp")]);
    assert!(!t.namespaces.contains_key("tmp"));
    // It comes back as it was.
    step(
        &mut t,
        applies(&[pod("tmp", "p", "{app: x}", "10.244.1.50")]),
    );
    assert!(find_workload(&t, "tmp/p").is_some());
}
