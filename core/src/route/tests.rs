//! Table tests of the routing rules, the load balancer and `explain`,
//! over one small cluster.

use super::*;
use crate::state::ConfigStore;
use ferry_api::model::{Endpoint, Name, Node, NodeAddress, ServicePort, ServiceType, TargetPort};
use ferry_api::ResourceBody;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The source pod's node in every test.
pub(crate) const LOCAL: &str = "n1";

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub(crate) fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub(crate) fn node(
    name: &str,
    internal: &str,
    external: Option<&str>,
    hbone: bool,
) -> ResourceBody {
    let mut addresses = vec![NodeAddress {
        kind: "InternalIP".into(),
        address: internal.into(),
    }];
    addresses.extend(external.map(|a| NodeAddress {
        kind: "ExternalIP".into(),
        address: a.into(),
    }));
    ResourceBody::Node(Box::new(Node {
        name: name.into(),
        addresses,
        hbone: hbone.then(|| SocketAddr::new(ip(internal), 15008)),
        zone: None,
    }))
}

pub(crate) fn pod(name: &str, address: &str, node: &str, mesh: bool) -> Workload {
    Workload {
        key: Workload::key_of("shop", name),
        node: Some(node.into()),
        addresses: vec![ip(address)].into(),
        ready: true,
        terminating: false,
        profile: Arc::new(ferry_api::model::Profile {
            namespace: "shop".into(),
            service_account: "default".into(),
            labels: Default::default(),
            ports: vec![].into(),
            mesh,
            controller: None,
        }),
    }
}

/// Nodes n1 (local, with an external IP), n2 (HBONE), n3 (no HBONE);
/// mesh pods a1, a2, a3 on n1, n2, n3; `legacy` (outside the mesh) on n2;
/// `client` on n1.
pub(crate) fn cluster() -> Vec<ResourceBody> {
    vec![
        node("n1", "10.1.0.1", Some("203.0.113.1"), true),
        node("n2", "10.1.0.2", None, true),
        node("n3", "10.1.0.3", None, false),
        ResourceBody::Workload(pod("a1", "10.0.1.1", "n1", true)),
        ResourceBody::Workload(pod("a2", "10.0.2.1", "n2", true)),
        ResourceBody::Workload(pod("a3", "10.0.3.1", "n3", true)),
        ResourceBody::Workload(pod("legacy", "10.0.2.9", "n2", false)),
        ResourceBody::Workload(client()),
    ]
}

pub(crate) fn client() -> Workload {
    pod("client", "10.0.1.100", "n1", true)
}

pub(crate) fn tcp(name: &str, port: u16, target: u16) -> ServicePort {
    ServicePort {
        name: name.into(),
        port,
        protocol: Protocol::Tcp,
        target_port: TargetPort::Number(target),
        node_port: None,
    }
}

/// A ready endpoint of pod `shop/<pod>` (or a bare address for "").
pub(crate) fn ep(pod: &str, address: &str, node: &str, ports: &[Option<u16>]) -> Endpoint {
    Endpoint {
        workload: (!pod.is_empty()).then(|| format!("shop/{pod}").into()),
        address: ip(address),
        ready: true,
        serving: true,
        terminating: false,
        placement: Arc::new(ferry_api::model::Placement {
            node: (!node.is_empty()).then(|| node.into()),
            ports: ports.to_vec().into(),
            hostname: None,
            node_hints: Vec::new().into(),
            zone: None,
            zone_hints: Vec::new().into(),
        }),
    }
}

pub(crate) fn with_conditions(
    mut e: Endpoint,
    ready: bool,
    serving: bool,
    terminating: bool,
) -> Endpoint {
    e.ready = ready;
    e.serving = serving;
    e.terminating = terminating;
    e
}

pub(crate) fn service(
    name: &str,
    cluster_ip: Option<&str>,
    ports: Vec<ServicePort>,
    endpoints: Vec<Endpoint>,
) -> Service {
    Service {
        namespace: "shop".into(),
        name: name.into(),
        hostname: format!("{name}.shop.svc.cluster.local").into(),
        service_type: ServiceType::ClusterIP,
        cluster_ips: cluster_ip.map(ip).into_iter().collect(),
        headless: false,
        ports,
        load_balancer_ips: vec![],
        external_ips: vec![],
        external_name: None,
        client_ip_affinity: None,
        internal_traffic_policy: TrafficPolicy::Cluster,
        external_traffic_policy: TrafficPolicy::Cluster,
        endpoints,
        selector: true,
        traffic_distribution: None,
    }
}

/// shop/backend at 10.96.0.10: http 80 -> 8080 and metrics 9090 -> the
/// named port `metrics` (9091), served by a1, a2, a3.
pub(crate) fn backend() -> Service {
    let mut metrics = tcp("metrics", 9090, 0);
    metrics.target_port = TargetPort::Name("metrics".into());
    service(
        "backend",
        Some("10.96.0.10"),
        vec![tcp("http", 80, 8080), metrics],
        vec![
            ep("a1", "10.0.1.1", "n1", &[Some(8080), Some(9091)]),
            ep("a2", "10.0.2.1", "n2", &[Some(8080), Some(9091)]),
            ep("a3", "10.0.3.1", "n3", &[Some(8080), Some(9091)]),
        ],
    )
}

/// The cluster plus these services, through the config store.
pub(crate) fn state_with(services: Vec<Service>) -> Arc<ProxyState> {
    let mut bodies = cluster();
    bodies.extend(
        services
            .into_iter()
            .map(|s| ResourceBody::Service(Box::new(s))),
    );
    ConfigStore::holding(&bodies).snapshot()
}

fn expect_service(p: Plan<'_>) -> (&Service, usize, Access, TrafficPolicy) {
    match p {
        Plan::Service {
            service,
            port,
            access,
            policy,
            ..
        } => (service, port, access, policy),
        other => panic!("expected a service plan, got {other:?}"),
    }
}

fn addresses<'s>(endpoints: impl Iterator<Item = &'s Endpoint>) -> Vec<String> {
    endpoints.map(|e| e.address.to_string()).collect()
}

fn explain_to(state: &ProxyState, to: &str) -> Explanation {
    explain(state, &client(), to).unwrap()
}

// ---- destinations ----

#[test]
fn cluster_ip_maps_each_port_to_its_target_port() {
    let s = state_with(vec![backend()]);
    let lb = LoadBalancer::new();
    // (destination, service port index, target port)
    let cases = [("10.96.0.10:80", 0, 8080), ("10.96.0.10:9090", 1, 9091)];
    for (dest, want_index, want_target) in cases {
        let (svc, index, access, policy) = expect_service(plan(&s, Origin::Cluster, sa(dest)));
        assert_eq!(&*svc.name, "backend", "{dest}");
        assert_eq!(index, want_index, "{dest}");
        assert_eq!(access, Access::ClusterIp, "{dest}");
        assert_eq!(policy, TrafficPolicy::Cluster, "{dest}");
        let (_, addr) = lb
            .pick(
                svc,
                index,
                policy,
                LOCAL,
                Ends {
                    client: ip("10.0.1.100"),
                    destination: ip("10.96.0.10"),
                },
                Instant::now(),
            )
            .unwrap();
        assert_eq!(addr.port(), want_target, "{dest}");
    }
}

#[test]
fn a_cluster_ip_on_a_port_the_service_does_not_define_is_refused() {
    let mut dns = service(
        "dns",
        Some("10.96.0.53"),
        vec![ServicePort {
            protocol: Protocol::Udp,
            ..tcp("dns", 53, 53)
        }],
        vec![ep("a1", "10.0.1.1", "n1", &[Some(53)])],
    );
    dns.selector = false;
    let s = state_with(vec![backend(), dns]);
    // (destination, refused service, reason)
    let cases = [
        (
            "10.96.0.10:81",
            "backend",
            "service shop/backend has no TCP port 81 (cluster IP 10.96.0.10)",
        ),
        (
            "10.96.0.53:53",
            "dns",
            "service shop/dns has no TCP port 53 (cluster IP 10.96.0.53)",
        ),
    ];
    for (dest, want_service, want_reason) in cases {
        match plan(&s, Origin::Cluster, sa(dest)) {
            Plan::Refused {
                service: Some(svc),
                reason,
            } => {
                assert_eq!(&*svc.name, want_service, "{dest}");
                assert_eq!(reason, want_reason, "{dest}");
            }
            other => panic!("{dest}: expected a refusal, got {other:?}"),
        }
        let e = explain_to(&s, dest);
        assert_eq!(e.mode, RouteMode::Refused, "{dest}");
        assert_eq!(e.reason.as_deref(), Some(want_reason), "{dest}");
        assert_eq!(e.service, Some(format!("shop/{want_service}")), "{dest}");
    }
    // By name too.
    let e = explain_to(&s, "backend:81");
    assert_eq!(e.mode, RouteMode::Refused);
    assert_eq!(
        e.reason.as_deref(),
        Some("service shop/backend has no TCP port 81")
    );
}

/// shop/web: LoadBalancer at cluster IP 10.96.0.20, LB IP 198.51.100.10,
/// external IP 192.0.2.50, port 80 -> 8080 with node port 30080,
/// externalTrafficPolicy Local.
pub(crate) fn web() -> Service {
    let mut web = backend();
    web.name = "web".into();
    web.hostname = "web.shop.svc.cluster.local".into();
    web.service_type = ServiceType::LoadBalancer;
    web.cluster_ips = vec![ip("10.96.0.20")];
    web.load_balancer_ips = vec![ip("198.51.100.10")];
    web.external_ips = vec![ip("192.0.2.50")];
    web.ports = vec![ServicePort {
        node_port: Some(30080),
        ..tcp("http", 80, 8080)
    }];
    for e in &mut web.endpoints {
        e.ports = vec![Some(8080)].into();
    }
    web.external_traffic_policy = TrafficPolicy::Local;
    web
}

#[test]
fn every_service_address_and_its_traffic_policy() {
    let s = state_with(vec![web()]);
    // (destination, access, policy, eligible endpoints seen from n1)
    let all = ["10.0.1.1", "10.0.2.1", "10.0.3.1"];
    let local = ["10.0.1.1"];
    let cases: [(&str, Access, TrafficPolicy, &[&str]); 7] = [
        // externalTrafficPolicy does not apply to the cluster IP.
        (
            "10.96.0.20:80",
            Access::ClusterIp,
            TrafficPolicy::Cluster,
            &all,
        ),
        // A node port on any node IP, internal or external.
        (
            "10.1.0.1:30080",
            Access::NodePort,
            TrafficPolicy::Local,
            &local,
        ),
        (
            "203.0.113.1:30080",
            Access::NodePort,
            TrafficPolicy::Local,
            &local,
        ),
        // Dialled at another node's address, that node serves it: its endpoints.
        (
            "10.1.0.2:30080",
            Access::NodePort,
            TrafficPolicy::Local,
            &["10.0.2.1"],
        ),
        (
            "[::ffff:10.1.0.3]:30080",
            Access::NodePort,
            TrafficPolicy::Local,
            &["10.0.3.1"],
        ),
        (
            "198.51.100.10:80",
            Access::LoadBalancer,
            TrafficPolicy::Local,
            &local,
        ),
        (
            "192.0.2.50:80",
            Access::ExternalIp,
            TrafficPolicy::Local,
            &local,
        ),
    ];
    for (dest, want_access, want_policy, want_eligible) in cases {
        let planned = plan(&s, Origin::Outside, sa(dest));
        let serving_node = match &planned {
            Plan::Service { node, .. } => node.unwrap_or(LOCAL),
            _ => LOCAL,
        };
        let (svc, index, access, policy) = expect_service(planned);
        assert_eq!(&*svc.name, "web", "{dest}");
        assert_eq!(index, 0, "{dest}");
        assert_eq!(access, want_access, "{dest}");
        assert_eq!(policy, want_policy, "{dest}");
        assert_eq!(
            addresses(eligible(svc, index, policy, serving_node).iter()),
            want_eligible.to_vec(),
            "{dest}"
        );
    }
    // From a pod of the cluster (or the node itself), Local does not
    // restrict: every endpoint, as kube-proxy sends pod traffic for
    // external destinations to the cluster-wide chain.
    for dest in [
        "10.1.0.1:30080",
        "10.1.0.2:30080",
        "198.51.100.10:80",
        "192.0.2.50:80",
    ] {
        let (svc, index, _, policy) = expect_service(plan(&s, Origin::Cluster, sa(dest)));
        assert_eq!(policy, TrafficPolicy::Cluster, "{dest}");
        assert_eq!(
            addresses(eligible(svc, index, policy, LOCAL).iter()),
            all.to_vec(),
            "{dest}"
        );
    }
    // Seen from n2, Local keeps n2's endpoint only.
    let (svc, index, _, policy) = expect_service(plan(&s, Origin::Outside, sa("10.1.0.1:30080")));
    assert_eq!(
        addresses(eligible(svc, index, policy, "n2").iter()),
        ["10.0.2.1"]
    );
}

#[test]
fn addresses_that_are_not_a_service_port_fall_through() {
    let s = state_with(vec![web()]);
    // (destination, what it is)
    let cases = [
        // A pod IP on a node port number is the pod.
        ("10.0.1.1:30080", "pod a1"),
        // A node IP without a node port is the node itself.
        ("10.1.0.1:30081", "passthrough"),
        // An LB or external IP on another port is not the service's.
        ("198.51.100.10:443", "passthrough"),
        ("192.0.2.50:22", "passthrough"),
        // A node port on an address that is not a node's.
        ("192.0.2.99:30080", "passthrough"),
        ("8.8.8.8:53", "passthrough"),
    ];
    for (dest, want) in cases {
        let got = match plan(&s, Origin::Cluster, sa(dest)) {
            Plan::Workload { workload, port } => {
                assert_eq!(port, sa(dest).port());
                format!("pod {}", workload.name())
            }
            Plan::Passthrough => "passthrough".into(),
            other => format!("{other:?}"),
        };
        assert_eq!(got, want, "{dest}");
    }
}

#[test]
fn a_udp_node_port_is_not_a_tcp_destination() {
    let mut svc = web();
    svc.ports[0].protocol = Protocol::Udp;
    let s = state_with(vec![svc]);
    assert_eq!(
        plan(&s, Origin::Cluster, sa("10.1.0.1:30080")),
        Plan::Passthrough
    );
}

#[test]
fn a_pod_ip_is_that_pod_and_its_mode_depends_on_where_it_runs() {
    let s = state_with(vec![]);
    // (destination, pod, mode)
    let cases = [
        ("10.0.1.1:8080", "a1", Mode::Direct),
        ("10.0.2.1:8080", "a2", Mode::Hbone),
        // n3 has no HBONE address.
        ("10.0.3.1:8080", "a3", Mode::Passthrough),
        // Outside the mesh.
        ("10.0.2.9:8080", "legacy", Mode::Passthrough),
    ];
    for (dest, want_pod, want_mode) in cases {
        match plan(&s, Origin::Cluster, sa(dest)) {
            Plan::Workload { workload, port } => {
                assert_eq!(workload.name(), want_pod, "{dest}");
                assert_eq!(port, 8080, "{dest}");
            }
            other => panic!("{dest}: expected a pod, got {other:?}"),
        }
        let e = explain_to(&s, dest);
        assert_eq!(e.mode, want_mode.into(), "{dest}");
        assert_eq!(e.service, None, "{dest}");
        assert_eq!(e.endpoints.len(), 1, "{dest}");
        assert_eq!(
            e.endpoints[0].pod.as_deref(),
            Some(format!("shop/{want_pod}").as_str())
        );
        assert_eq!(e.endpoints[0].address, sa(dest).ip());
        assert_eq!(e.endpoints[0].port, 8080);
        assert_eq!(e.endpoints[0].mode, want_mode);
    }
}

#[test]
fn a_pod_explained_carries_its_own_conditions() {
    let mut bodies = cluster();
    let mut dying = pod("dying", "10.0.2.7", "n2", true);
    dying.ready = false;
    dying.terminating = true;
    bodies.push(ResourceBody::Workload(dying));
    let e = explain_to(&ConfigStore::holding(&bodies).snapshot(), "10.0.2.7:80");
    let ep = &e.endpoints[0];
    assert_eq!((ep.ready, ep.serving, ep.terminating), (false, false, true));
    assert_eq!(e.mode, RouteMode::Hbone);
}

#[test]
fn a_headless_service_is_reached_through_its_pods() {
    let mut db = service(
        "db",
        None,
        vec![tcp("pg", 5432, 5432)],
        vec![
            with_conditions(
                ep("a3", "10.0.3.1", "n3", &[Some(5432)]),
                false,
                false,
                false,
            ),
            ep("a2", "10.0.2.1", "n2", &[Some(5432)]),
        ],
    );
    db.headless = true;
    let s = state_with(vec![db]);
    // Its backends by pod IP.
    match plan(&s, Origin::Cluster, sa("10.0.2.1:5432")) {
        Plan::Workload { workload, port } => {
            assert_eq!((workload.name(), port), ("a2", 5432));
        }
        other => panic!("expected a pod, got {other:?}"),
    }
    // By name: the first eligible endpoint (a3 is not ready).
    let e = explain_to(&s, "db:5432");
    assert_eq!(e.service.as_deref(), Some("shop/db"));
    assert_eq!(e.mode, RouteMode::Hbone);
    assert_eq!(e.endpoints.len(), 1);
    assert_eq!(e.endpoints[0].pod.as_deref(), Some("shop/a2"));
    assert_eq!(e.endpoints[0].address, ip("10.0.2.1"));
    assert_eq!(e.endpoints[0].port, 5432);
}

#[test]
fn a_headless_service_of_bare_addresses_passes_through_by_name() {
    let mut db = service(
        "db",
        None,
        vec![tcp("pg", 5432, 5432)],
        vec![ep("", "192.0.2.10", "", &[Some(5432)])],
    );
    db.headless = true;
    db.selector = false;
    let s = state_with(vec![db]);
    let e = explain_to(&s, "db:5432");
    assert_eq!(e.mode, RouteMode::Passthrough);
    assert_eq!(e.service.as_deref(), Some("shop/db"));
    assert_eq!(
        e.reason.as_deref(),
        Some(
            "headless service shop/db resolves to 192.0.2.10, not a pod in the mesh: \
             passed through unchanged"
        )
    );
}

#[test]
fn a_headless_service_without_ready_endpoints_is_refused_by_name() {
    let mut db = service("db", None, vec![tcp("pg", 5432, 5432)], vec![]);
    db.headless = true;
    let s = state_with(vec![db]);
    let e = explain_to(&s, "db.shop:5432");
    assert_eq!(e.mode, RouteMode::Refused);
    assert_eq!(
        e.reason.as_deref(),
        Some("headless service shop/db has no ready endpoints")
    );
}

#[test]
fn a_selector_less_service_with_bare_addresses_passes_through() {
    let mut external_db = service(
        "external-db",
        Some("10.96.0.30"),
        vec![tcp("mysql", 3306, 3306)],
        vec![ep("", "192.0.2.10", "", &[Some(3306)])],
    );
    external_db.selector = false;
    let s = state_with(vec![external_db]);
    let (svc, index, _, policy) = expect_service(plan(&s, Origin::Cluster, sa("10.96.0.30:3306")));
    let (_, addr) = LoadBalancer::new()
        .pick(
            svc,
            index,
            policy,
            LOCAL,
            Ends {
                client: ip("10.0.1.100"),
                destination: ip("10.96.0.10"),
            },
            Instant::now(),
        )
        .unwrap();
    assert_eq!(addr, sa("192.0.2.10:3306"));
    let e = explain_to(&s, "external-db:3306");
    assert_eq!(e.mode, RouteMode::Passthrough);
    assert_eq!(e.endpoints.len(), 1);
    assert_eq!(e.endpoints[0].pod, None);
    assert_eq!(e.endpoints[0].node, None);
    assert_eq!(e.endpoints[0].mode, Mode::Passthrough);
}

#[test]
fn an_external_name_service_is_reached_by_name_outside_the_mesh() {
    let mut ext = service("ext", None, vec![], vec![]);
    ext.service_type = ServiceType::ExternalName;
    ext.external_name = Some("db.example.com".into());
    let s = state_with(vec![ext]);
    let svc = service_by_name(&s, "ext", "shop").unwrap();
    assert_eq!(svc.external_name.as_deref(), Some("db.example.com"));
    for to in ["ext:5432", "ext.shop.svc.cluster.local:5432"] {
        let e = explain_to(&s, to);
        assert_eq!(e.mode, RouteMode::Passthrough, "{to}");
        assert_eq!(e.service.as_deref(), Some("shop/ext"), "{to}");
        assert_eq!(e.external_name.as_deref(), Some("db.example.com"), "{to}");
        assert!(e.endpoints.is_empty(), "{to}");
        assert_eq!(e.reason, None, "{to}");
    }
}

#[test]
fn unknown_destinations_pass_through() {
    let s = state_with(vec![backend()]);
    assert_eq!(
        plan(&s, Origin::Cluster, sa("8.8.8.8:53")),
        Plan::Passthrough
    );
    assert_eq!(
        plan(&s, Origin::Cluster, sa("[2001:db8::1]:443")),
        Plan::Passthrough
    );
    for to in ["8.8.8.8:53", "[2001:db8::1]:443", "example.com:443"] {
        let e = explain_to(&s, to);
        assert_eq!(e.mode, RouteMode::Passthrough, "{to}");
        assert_eq!(e.service, None, "{to}");
        assert!(e.endpoints.is_empty(), "{to}");
        assert!(e.reason.is_some(), "{to}");
    }
}

// ---- endpoints ----

#[test]
fn eligible_endpoints_follow_the_conditions() {
    let e = |n: u8, ready, serving, terminating| {
        with_conditions(
            ep("", &format!("10.0.9.{n}"), "n1", &[Some(8080)]),
            ready,
            serving,
            terminating,
        )
    };
    // (case, endpoints, eligible addresses)
    let cases: Vec<(&str, Vec<Endpoint>, Vec<&str>)> = vec![
        (
            "only the ready ones",
            vec![
                e(1, true, true, false),
                e(2, false, false, false),
                e(3, false, true, true),
                e(4, true, true, false),
            ],
            vec!["10.0.9.1", "10.0.9.4"],
        ),
        (
            "none ready: the serving and terminating ones",
            vec![
                e(1, false, false, false),
                e(2, false, true, true),
                e(3, false, false, true),
                e(4, false, true, true),
            ],
            vec!["10.0.9.2", "10.0.9.4"],
        ),
        (
            "never the unready non-serving ones",
            vec![e(1, false, false, false), e(2, false, false, true)],
            vec![],
        ),
        ("no endpoints", vec![], vec![]),
        (
            "only those that serve the port",
            vec![
                ep("", "10.0.9.1", "n1", &[None]),
                ep("", "10.0.9.2", "n1", &[Some(8080)]),
            ],
            vec!["10.0.9.2"],
        ),
    ];
    for (case, endpoints, want) in cases {
        let svc = service(
            "backend",
            Some("10.96.0.10"),
            vec![tcp("http", 80, 8080)],
            endpoints,
        );
        let set = eligible(&svc, 0, TrafficPolicy::Cluster, LOCAL);
        assert_eq!(addresses(set.iter()), want, "{case}");
        assert_eq!(set.len(), want.len(), "{case}");
        assert_eq!(set.is_empty(), want.is_empty(), "{case}");
        for (i, address) in want.iter().enumerate() {
            assert_eq!(set.get(i).map(|e| e.address), Some(ip(address)), "{case}");
            assert!(set.contains(ip(address)), "{case}");
        }
        assert!(set.get(want.len()).is_none(), "{case}");
        assert!(
            !set.contains(ip("10.0.9.3")) || want.contains(&"10.0.9.3"),
            "{case}"
        );
    }
}

#[test]
fn a_port_index_out_of_range_has_no_endpoints() {
    let svc = backend();
    assert!(eligible(&svc, 2, TrafficPolicy::Cluster, LOCAL).is_empty());
    let err = LoadBalancer::new()
        .pick(
            &svc,
            2,
            TrafficPolicy::Cluster,
            LOCAL,
            Ends {
                client: ip("10.0.1.100"),
                destination: ip("10.96.0.10"),
            },
            Instant::now(),
        )
        .unwrap_err();
    assert_eq!(err, "service shop/backend has no port #2");
}

#[test]
fn no_eligible_endpoint_is_refused_naming_service_and_port() {
    let unready = |e| with_conditions(e, false, false, false);
    // (case, endpoints, policy, reason)
    let cases = [
        (
            "no endpoints",
            vec![],
            TrafficPolicy::Cluster,
            "no ready endpoints for shop/backend:80: the service has no endpoints",
        ),
        (
            "none ready",
            vec![
                unready(ep("a1", "10.0.1.1", "n1", &[Some(8080)])),
                unready(ep("a2", "10.0.2.1", "n2", &[Some(8080)])),
            ],
            TrafficPolicy::Cluster,
            "no ready endpoints for shop/backend:80: none of its 2 endpoints is ready or serving while terminating",
        ),
        (
            "none serves the port",
            vec![ep("a1", "10.0.1.1", "n1", &[None])],
            TrafficPolicy::Cluster,
            "no ready endpoints for shop/backend:80: no endpoint serves this port",
        ),
        (
            "none local",
            vec![ep("a2", "10.0.2.1", "n2", &[Some(8080)])],
            TrafficPolicy::Local,
            "no ready endpoints for shop/backend:80: none of its 1 endpoints is on node n1 (traffic policy Local)",
        ),
        (
            "the local one not ready",
            vec![
                unready(ep("a1", "10.0.1.1", "n1", &[Some(8080)])),
                ep("a2", "10.0.2.1", "n2", &[Some(8080)]),
            ],
            TrafficPolicy::Local,
            "no ready endpoints for shop/backend:80: none of its 1 endpoints on node n1 is ready or serving while terminating (traffic policy Local)",
        ),
    ];
    for (case, endpoints, policy, want) in cases {
        let mut svc = service(
            "backend",
            Some("10.96.0.10"),
            vec![tcp("http", 80, 8080)],
            endpoints,
        );
        svc.internal_traffic_policy = policy;
        let err = LoadBalancer::new()
            .pick(
                &svc,
                0,
                policy,
                LOCAL,
                Ends {
                    client: ip("10.0.1.100"),
                    destination: ip("10.96.0.10"),
                },
                Instant::now(),
            )
            .unwrap_err();
        assert_eq!(err, want, "{case}");
        let s = state_with(vec![svc]);
        let e = explain_to(&s, "10.96.0.10:80");
        assert_eq!(e.mode, RouteMode::Refused, "{case}");
        assert_eq!(e.reason.as_deref(), Some(want), "{case}");
        assert!(e.endpoints.is_empty(), "{case}");
    }
}

#[test]
fn internal_traffic_policy_local_keeps_local_endpoints_only() {
    let mut svc = backend();
    svc.internal_traffic_policy = TrafficPolicy::Local;
    // Plus a terminating-but-serving second endpoint on n2.
    svc.endpoints.push(with_conditions(
        ep("", "10.0.2.50", "n2", &[Some(8080), Some(9091)]),
        false,
        true,
        true,
    ));
    let s = state_with(vec![svc]);
    let (svc, index, access, policy) =
        expect_service(plan(&s, Origin::Cluster, sa("10.96.0.10:80")));
    assert_eq!((access, policy), (Access::ClusterIp, TrafficPolicy::Local));
    // (local node, eligible)
    let cases: [(&str, &[&str]); 4] = [
        ("n1", &["10.0.1.1"]),
        ("n2", &["10.0.2.1"]),
        ("n3", &["10.0.3.1"]),
        ("n4", &[]),
    ];
    for (node, want) in cases {
        assert_eq!(
            addresses(eligible(svc, index, policy, node).iter()),
            want.to_vec(),
            "{node}"
        );
    }
    let lb = LoadBalancer::new();
    for _ in 0..5 {
        let (e, _) = lb
            .pick(
                svc,
                index,
                policy,
                "n1",
                Ends {
                    client: ip("10.0.1.100"),
                    destination: ip("10.96.0.10"),
                },
                Instant::now(),
            )
            .unwrap();
        assert_eq!(e.address, ip("10.0.1.1"));
    }
    let err = lb
        .pick(
            svc,
            index,
            policy,
            "n4",
            Ends {
                client: ip("10.0.1.100"),
                destination: ip("10.96.0.10"),
            },
            Instant::now(),
        )
        .unwrap_err();
    assert!(
        err.contains("shop/backend:80") && err.contains("node n4"),
        "{err}"
    );
    // Seen from n1, the route is direct.
    let e = explain_to(&s, "backend:80");
    assert_eq!(e.mode, RouteMode::Direct);
    assert_eq!(e.endpoints.len(), 1);
}

#[test]
fn local_policy_falls_back_to_local_terminating_endpoints() {
    let mut svc = backend();
    svc.endpoints[0] = with_conditions(svc.endpoints[0].clone(), false, true, true);
    // Cluster: the ready remote ones.
    assert_eq!(
        addresses(eligible(&svc, 0, TrafficPolicy::Cluster, LOCAL).iter()),
        ["10.0.2.1", "10.0.3.1"]
    );
    // Local: the local terminating one, not a remote ready one.
    assert_eq!(
        addresses(eligible(&svc, 0, TrafficPolicy::Local, LOCAL).iter()),
        ["10.0.1.1"]
    );
}

// ---- load balancing ----

#[test]
fn round_robin_spreads_evenly() {
    let svc = backend();
    let lb = LoadBalancer::new();
    let mut counts = BTreeMap::new();
    let mut order = Vec::new();
    for i in 0..300u32 {
        let client = IpAddr::from([10, 0, 1, (i % 7) as u8]);
        let (e, addr) = lb
            .pick(
                &svc,
                0,
                TrafficPolicy::Cluster,
                LOCAL,
                Ends {
                    client,
                    destination: ip("10.96.0.10"),
                },
                Instant::now(),
            )
            .unwrap();
        assert_eq!(addr, SocketAddr::new(e.address, 8080));
        *counts.entry(e.address.to_string()).or_insert(0) += 1;
        if i < 6 {
            order.push(e.address.to_string());
        }
    }
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        [
            ("10.0.1.1".to_string(), 100),
            ("10.0.2.1".to_string(), 100),
            ("10.0.3.1".to_string(), 100)
        ]
    );
    assert_eq!(
        order,
        ["10.0.1.1", "10.0.2.1", "10.0.3.1", "10.0.1.1", "10.0.2.1", "10.0.3.1"]
    );
}

#[test]
fn round_robin_is_per_service() {
    let a = backend();
    let mut b = backend();
    b.name = "other".into();
    let lb = LoadBalancer::new();
    let pick = |svc: &Service| {
        lb.pick(
            svc,
            0,
            TrafficPolicy::Cluster,
            LOCAL,
            Ends {
                client: ip("10.0.1.100"),
                destination: ip("10.96.0.10"),
            },
            Instant::now(),
        )
        .unwrap()
        .0
        .address
    };
    assert_eq!(pick(&a), ip("10.0.1.1"));
    assert_eq!(pick(&a), ip("10.0.2.1"));
    // Another service starts at its own first endpoint.
    assert_eq!(pick(&b), ip("10.0.1.1"));
}

#[test]
fn affinity_sticks_until_its_timeout_and_is_refreshed_on_use() {
    let mut svc = backend();
    svc.client_ip_affinity = Some(10);
    let lb = LoadBalancer::new();
    let t0 = Instant::now();
    let secs = |n| t0 + Duration::from_secs(n);
    let pick = |client: &str, now| {
        lb.pick(
            &svc,
            0,
            TrafficPolicy::Cluster,
            LOCAL,
            Ends {
                client: ip(client),
                destination: ip("10.96.0.10"),
            },
            now,
        )
        .unwrap()
        .0
        .address
        .to_string()
    };
    // (client, time, endpoint)
    let steps = [
        ("10.0.1.100", secs(0), "10.0.1.1"),
        // Another client: the next by round robin.
        ("10.0.1.101", secs(0), "10.0.2.1"),
        ("10.0.1.100", secs(5), "10.0.1.1"),
        // 9 s after the last use (refreshed at 5 s).
        ("10.0.1.100", secs(14), "10.0.1.1"),
        // 11 s idle: expired, picked again by round robin.
        ("10.0.1.100", secs(25), "10.0.3.1"),
        ("10.0.1.100", secs(26), "10.0.3.1"),
        // Exactly the timeout is expired too.
        ("10.0.1.101", secs(10), "10.0.1.1"),
    ];
    for (i, (client, now, want)) in steps.into_iter().enumerate() {
        assert_eq!(pick(client, now), want, "step {i}");
    }
    // 10.0.1.101 was last used at 10 s, 10.0.1.100 at 26 s.
    assert_eq!(lb.sweep(secs(20)), 1);
    assert_eq!(lb.sweep(secs(35)), 1);
    assert_eq!(lb.sweep(secs(36)), 0);
}

#[test]
fn affinity_moves_when_its_endpoint_becomes_ineligible() {
    let mut svc = backend();
    svc.client_ip_affinity = Some(model_default_timeout());
    let lb = LoadBalancer::new();
    let t0 = Instant::now();
    let client = ip("10.0.1.100");
    let (first, _) = lb
        .pick(
            &svc,
            0,
            TrafficPolicy::Cluster,
            LOCAL,
            Ends {
                client,
                destination: ip("10.96.0.10"),
            },
            t0,
        )
        .unwrap();
    assert_eq!(first.address, ip("10.0.1.1"));

    // a1 stops being ready: the client moves, and sticks to the new one.
    let mut changed = svc.clone();
    changed.endpoints[0] = with_conditions(changed.endpoints[0].clone(), false, false, false);
    let (moved, _) = lb
        .pick(
            &changed,
            0,
            TrafficPolicy::Cluster,
            LOCAL,
            Ends {
                client,
                destination: ip("10.96.0.10"),
            },
            t0,
        )
        .unwrap();
    assert_ne!(moved.address, ip("10.0.1.1"));
    let moved = moved.address;
    for s in 1..4 {
        let now = t0 + Duration::from_secs(s);
        let (again, _) = lb
            .pick(
                &changed,
                0,
                TrafficPolicy::Cluster,
                LOCAL,
                Ends {
                    client,
                    destination: ip("10.96.0.10"),
                },
                now,
            )
            .unwrap();
        assert_eq!(again.address, moved);
    }
    // a1 coming back does not take the client back.
    let (kept, _) = lb
        .pick(
            &svc,
            0,
            TrafficPolicy::Cluster,
            LOCAL,
            Ends {
                client,
                destination: ip("10.96.0.10"),
            },
            t0 + Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(kept.address, moved);

    // An endpoint that stops serving the port is ineligible as well.
    let mut unported = svc.clone();
    for e in &mut unported.endpoints {
        if e.address == moved {
            let mut ports = e.ports.to_vec();
            ports[0] = None;
            e.ports = ports.into();
        }
    }
    let (elsewhere, _) = lb
        .pick(
            &unported,
            0,
            TrafficPolicy::Cluster,
            LOCAL,
            Ends {
                client,
                destination: ip("10.96.0.10"),
            },
            t0 + Duration::from_secs(6),
        )
        .unwrap();
    assert_ne!(elsewhere.address, moved);
}

fn model_default_timeout() -> u32 {
    ferry_api::model::DEFAULT_AFFINITY_TIMEOUT_SECONDS
}

#[test]
fn no_endpoint_keeps_no_affinity() {
    let mut svc = service(
        "backend",
        Some("10.96.0.10"),
        vec![tcp("http", 80, 8080)],
        vec![],
    );
    svc.client_ip_affinity = Some(10);
    let lb = LoadBalancer::new();
    let now = Instant::now();
    assert!(lb
        .pick(
            &svc,
            0,
            TrafficPolicy::Cluster,
            LOCAL,
            Ends {
                client: ip("10.0.1.100"),
                destination: ip("10.96.0.10")
            },
            now
        )
        .is_err());
    assert_eq!(lb.sweep(now), 0);
}

// ---- carrying ----

#[test]
fn mode_for_each_kind_of_endpoint() {
    let s = state_with(vec![]);
    // (case, endpoint node, endpoint workload, mode)
    let cases = [
        ("local pod", Some("n1"), Some("shop/a1"), Mode::Direct),
        ("local bare address", Some("n1"), None, Mode::Direct),
        ("remote mesh pod", Some("n2"), Some("shop/a2"), Mode::Hbone),
        (
            "remote pod outside the mesh",
            Some("n2"),
            Some("shop/legacy"),
            Mode::Passthrough,
        ),
        (
            "node without HBONE",
            Some("n3"),
            Some("shop/a3"),
            Mode::Passthrough,
        ),
        (
            "unknown node",
            Some("n9"),
            Some("shop/a2"),
            Mode::Passthrough,
        ),
        ("remote bare address", Some("n2"), None, Mode::Passthrough),
        (
            "unknown workload",
            Some("n2"),
            Some("shop/ghost"),
            Mode::Passthrough,
        ),
        ("no node", None, Some("shop/a2"), Mode::Passthrough),
    ];
    for (case, node, workload, want) in cases {
        assert_eq!(mode_for(&s, LOCAL, true, node, workload), want, "{case}");
    }
    // A source outside the mesh has no identity: plaintext to remote
    // pods (the destination polices it), direct to local ones.
    assert_eq!(
        mode_for(&s, LOCAL, false, Some("n2"), Some("shop/a2")),
        Mode::Passthrough
    );
    assert_eq!(
        mode_for(&s, LOCAL, false, Some("n1"), Some("shop/a1")),
        Mode::Direct
    );
}

#[test]
fn the_route_mode_of_a_service() {
    let on = |nodes: &[(&str, &str, &str)]| {
        let mut svc = service(
            "backend",
            Some("10.96.0.10"),
            vec![tcp("http", 80, 8080)],
            vec![],
        );
        svc.endpoints = nodes
            .iter()
            .map(|(pod, address, node)| ep(pod, address, node, &[Some(8080)]))
            .collect();
        svc
    };
    // (case, endpoints, mode)
    let cases = [
        ("all local", on(&[("a1", "10.0.1.1", "n1")]), Mode::Direct),
        (
            "one over HBONE",
            on(&[("a1", "10.0.1.1", "n1"), ("a2", "10.0.2.1", "n2")]),
            Mode::Hbone,
        ),
        (
            "remote, none over HBONE",
            on(&[
                ("a1", "10.0.1.1", "n1"),
                ("a3", "10.0.3.1", "n3"),
                ("legacy", "10.0.2.9", "n2"),
            ]),
            Mode::Passthrough,
        ),
    ];
    for (case, svc, want) in cases {
        let s = state_with(vec![svc]);
        assert_eq!(explain_to(&s, "backend:80").mode, want.into(), "{case}");
    }
}

// ---- names ----

#[test]
fn service_by_name_resolves_like_a_pods_dns_search_path() {
    let mut other = backend();
    other.namespace = "other".into();
    other.hostname = "backend.other.svc.cluster.local".into();
    other.cluster_ips = vec![ip("10.96.1.10")];
    let s = state_with(vec![backend(), other]);
    // (name, pod namespace, service found)
    let cases = [
        ("backend", "shop", Some("shop/backend")),
        ("backend", "other", Some("other/backend")),
        ("backend.shop", "other", Some("shop/backend")),
        ("backend.shop.svc", "other", Some("shop/backend")),
        (
            "backend.shop.svc.cluster.local",
            "other",
            Some("shop/backend"),
        ),
        (
            "backend.shop.svc.cluster.local.",
            "other",
            Some("shop/backend"),
        ),
        (
            "Backend.SHOP.svc.Cluster.Local",
            "other",
            Some("shop/backend"),
        ),
        // Wrong namespace.
        ("backend", "nowhere", None),
        ("backend.nowhere", "shop", None),
        ("frontend", "shop", None),
        // Another cluster domain than the service's own.
        ("backend.shop.svc.example.org", "shop", None),
        // Not a service name.
        ("backend.shop.pod", "shop", None),
        ("backend.shop.cluster.local", "shop", None),
        ("backend.shop.svc.", "shop", Some("shop/backend")),
        ("", "shop", None),
        (".shop", "shop", None),
        ("backend.", "shop", Some("shop/backend")),
    ];
    for (name, namespace, want) in cases {
        assert_eq!(
            service_by_name(&s, name, namespace)
                .map(Service::key_name)
                .as_deref(),
            want,
            "{name:?} from {namespace}"
        );
    }
}

// ---- ferryctl route ----

#[test]
fn explain_serializes_to_the_documented_shape() {
    let mut svc = backend();
    svc.client_ip_affinity = Some(10_800);
    svc.endpoints[2] = with_conditions(svc.endpoints[2].clone(), false, false, false);
    svc.endpoints
        .push(ep("legacy", "10.0.2.9", "n2", &[Some(8080), None]));
    let s = state_with(vec![svc]);
    let e = explain_to(&s, "backend.shop.svc.cluster.local:80");
    assert_eq!(
        serde_json::to_value(&e).unwrap(),
        json!({
            "service": "shop/backend",
            "mode": "hbone",
            "reason": null,
            "affinity": {"type": "ClientIP", "timeout_seconds": 10800},
            "external_name": null,
            "endpoints": [
                {"pod": "shop/a1", "address": "10.0.1.1", "port": 8080, "node": "n1",
                 "zone": null, "ready": true, "serving": true, "terminating": false, "mode": "direct"},
                {"pod": "shop/a2", "address": "10.0.2.1", "port": 8080, "node": "n2",
                 "zone": null, "ready": true, "serving": true, "terminating": false, "mode": "hbone"},
                {"pod": "shop/legacy", "address": "10.0.2.9", "port": 8080, "node": "n2",
                 "zone": null, "ready": true, "serving": true, "terminating": false, "mode": "passthrough"},
            ],
            "topology": {"node": "n1", "zone": null, "decision": "everywhere",
                         "traffic_distribution": null, "summary": "every zone: no topology hints"},
        })
    );
    // The metrics port: legacy does not serve it.
    let e = explain_to(&s, "10.96.0.10:9090");
    assert_eq!(
        e.endpoints.iter().map(|e| e.port).collect::<Vec<_>>(),
        [9091, 9091]
    );
}

#[test]
fn explain_serializes_refusals_and_external_names() {
    let mut ext = service("ext", None, vec![], vec![]);
    ext.service_type = ServiceType::ExternalName;
    ext.external_name = Some("db.example.com".into());
    let s = state_with(vec![backend(), ext]);
    assert_eq!(
        serde_json::to_value(explain_to(&s, "10.96.0.10:81")).unwrap(),
        json!({
            "service": "shop/backend",
            "mode": "refused",
            "reason": "service shop/backend has no TCP port 81 (cluster IP 10.96.0.10)",
            "affinity": null,
            "external_name": null,
            "endpoints": [],
            "topology": null,
        })
    );
    assert_eq!(
        serde_json::to_value(explain_to(&s, "ext:443")).unwrap(),
        json!({
            "service": "shop/ext",
            "mode": "passthrough",
            "reason": null,
            "affinity": null,
            "external_name": "db.example.com",
            "endpoints": [],
            "topology": null,
        })
    );
}

#[test]
fn explain_rejects_bad_input() {
    let s = state_with(vec![backend()]);
    let mut unscheduled = client();
    unscheduled.node = None;
    assert_eq!(
        explain(&s, &unscheduled, "backend:80").unwrap_err(),
        "pod shop/client is not scheduled on a node"
    );
    // (to, error)
    let cases = [
        ("backend", "\"backend\": expected HOST:PORT"),
        (
            "backend:http",
            "\"backend:http\": \"http\" is not a port number (1-65535)",
        ),
        (
            "backend:0",
            "\"backend:0\": \"0\" is not a port number (1-65535)",
        ),
        (
            "backend:70000",
            "\"backend:70000\": \"70000\" is not a port number (1-65535)",
        ),
        (":80", "\":80\": expected HOST:PORT, the host is empty"),
    ];
    for (to, want) in cases {
        assert_eq!(explain(&s, &client(), to).unwrap_err(), want, "{to}");
    }
}

#[test]
fn a_service_name_means_the_same_to_dns_and_to_ferryctl() {
    use super::names::{name_target, resolve_fqdn, NameAnswer, NameTarget};
    // Not marked headless, yet without a cluster IP: its name is its pods,
    // for every reader of the name.
    let unallocated = service(
        "unallocated",
        None,
        vec![tcp("http", 80, 8080)],
        vec![ep("a1", "10.0.1.1", "n1", &[Some(8080)])],
    );
    let mut external = service("search", None, vec![], vec![]);
    external.service_type = ServiceType::ExternalName;
    external.external_name = Some("search.example.com".into());
    let state = state_with(vec![backend(), unallocated.clone(), external.clone()]);

    assert_eq!(
        name_target(&unallocated),
        NameTarget::Pods(vec![ip("10.0.1.1")])
    );
    assert_eq!(
        resolve_fqdn(
            &state,
            "unallocated.shop.svc.cluster.local",
            "cluster.local"
        ),
        NameAnswer::Addresses(vec![ip("10.0.1.1")])
    );
    // ferryctl route by name: the pod on the port dialed (a cluster IP
    // plan would refuse 8080, which is not a service port).
    let explained = explain_to(&state, "unallocated.shop:8080");
    assert_eq!(
        explained
            .endpoints
            .iter()
            .map(|e| e.address)
            .collect::<Vec<_>>(),
        [ip("10.0.1.1")],
        "{explained:?}"
    );

    assert_eq!(
        name_target(&external),
        NameTarget::External(Some("search.example.com"))
    );
    assert_eq!(
        resolve_fqdn(&state, "search.shop.svc.cluster.local", "cluster.local"),
        NameAnswer::Alias("search.example.com".into())
    );
    assert_eq!(
        name_target(&backend()),
        NameTarget::ClusterIps(&[ip("10.96.0.10")])
    );
}

#[test]
fn a_dual_stack_service_is_served_per_family() {
    let mut dual = service(
        "dual",
        Some("10.96.0.40"),
        vec![tcp("http", 80, 8080)],
        vec![
            ep("a1", "10.0.1.1", "n1", &[Some(8080)]),
            ep("a1", "fd00:1::1", "n1", &[Some(8080)]),
        ],
    );
    dual.cluster_ips.push(ip("fd00::40"));
    let s = state_with(vec![dual]);
    let lb = LoadBalancer::new();
    for (destination, want) in [
        ("10.96.0.40:80", "10.0.1.1"),
        ("[fd00::40]:80", "fd00:1::1"),
    ] {
        let (svc, index, _, policy) = expect_service(plan(&s, Origin::Cluster, sa(destination)));
        for _ in 0..3 {
            let (_, address) = lb
                .pick(
                    svc,
                    index,
                    policy,
                    LOCAL,
                    Ends {
                        client: ip("10.0.1.100"),
                        destination: sa(destination).ip(),
                    },
                    Instant::now(),
                )
                .unwrap();
            assert_eq!(address.ip(), ip(want), "{destination}");
        }
    }
}

// ---- topology ----

fn hinted(mut e: Endpoint, zone: &str, zones: &[&str], nodes: &[&str]) -> Endpoint {
    e.zone = Some(zone.into());
    e.zone_hints = zones.iter().map(|z| Name::from(*z)).collect();
    e.node_hints = nodes.iter().map(|n| Name::from(*n)).collect();
    e
}

/// backend with a1 (n1, zone a), a2 (n2, zone b), a3 (n3, zone b), each
/// hinted for its own zone.
fn zoned_backend() -> Service {
    let mut svc = backend();
    let zones = ["a", "b", "b"];
    svc.endpoints = svc
        .endpoints
        .into_iter()
        .zip(zones)
        .map(|(e, z)| hinted(e, z, &[z], &[]))
        .collect();
    svc.traffic_distribution = Some("PreferClose".into());
    svc
}

fn at<'a>(node: &'a str, zone: Option<&'a str>) -> Locality<'a> {
    Locality { node, zone }
}

#[test]
fn zone_hints_keep_a_connection_in_its_zone() {
    let svc = zoned_backend();
    let set = eligible(&svc, 0, TrafficPolicy::Cluster, at("n1", Some("a")));
    assert_eq!(addresses(set.iter()), ["10.0.1.1"]);
    assert_eq!(set.topology(), Topology::SameZone("a"));
    let set = eligible(&svc, 0, TrafficPolicy::Cluster, at("n9", Some("b")));
    assert_eq!(addresses(set.iter()), ["10.0.2.1", "10.0.3.1"]);
    assert_eq!(set.topology(), Topology::SameZone("b"));
}

#[test]
fn zone_hints_fall_back_to_every_endpoint_as_kube_proxy_does() {
    let all = ["10.0.1.1", "10.0.2.1", "10.0.3.1"];
    // (case, service, serving locality, expected decision)
    let mut one_unhinted = zoned_backend();
    one_unhinted.endpoints[2].zone_hints = Arc::from([]);
    let mut unready_unhinted = zoned_backend();
    unready_unhinted.endpoints[2] =
        with_conditions(unready_unhinted.endpoints[2].clone(), false, false, false);
    unready_unhinted.endpoints[2].zone_hints = Arc::from([]);
    let cases: [(&str, Service, Locality<'_>, Topology<'_>, &[&str]); 5] = [
        (
            "no hints at all",
            backend(),
            at("n1", Some("a")),
            Topology::Everywhere(Unhinted::NoHints),
            &all,
        ),
        (
            "a ready endpoint without a hint",
            one_unhinted,
            at("n1", Some("a")),
            Topology::Everywhere(Unhinted::MissingHint),
            &all,
        ),
        (
            "the node has no zone label",
            zoned_backend(),
            at("n1", None),
            Topology::Everywhere(Unhinted::NodeWithoutZone),
            &all,
        ),
        (
            "no endpoint hinted for the node's zone",
            zoned_backend(),
            at("n1", Some("c")),
            Topology::Everywhere(Unhinted::NoneForZone),
            &all,
        ),
        (
            "an unready endpoint's missing hint does not matter",
            unready_unhinted,
            at("n2", Some("b")),
            Topology::SameZone("b"),
            &["10.0.2.1"],
        ),
    ];
    for (case, svc, locality, decision, expected) in cases {
        let set = eligible(&svc, 0, TrafficPolicy::Cluster, locality);
        assert_eq!(set.topology(), decision, "{case}");
        assert_eq!(addresses(set.iter()), expected, "{case}");
    }
}

#[test]
fn hints_apply_to_the_cluster_policy_and_ready_endpoints_only() {
    // Policy Local: the node's endpoints, whatever the hints say.
    let mut svc = zoned_backend();
    svc.endpoints[0].zone_hints = vec!["b".into()].into();
    let set = eligible(&svc, 0, TrafficPolicy::Local, at("n1", Some("a")));
    assert_eq!(addresses(set.iter()), ["10.0.1.1"]);
    assert_eq!(set.topology(), Topology::Everywhere(Unhinted::LocalPolicy));
    // Nothing ready: the serving-and-terminating fallback ignores hints.
    let mut svc = zoned_backend();
    for e in &mut svc.endpoints {
        *e = with_conditions(e.clone(), false, true, true);
    }
    let set = eligible(&svc, 0, TrafficPolicy::Cluster, at("n1", Some("a")));
    assert_eq!(addresses(set.iter()), ["10.0.1.1", "10.0.2.1", "10.0.3.1"]);
    assert_eq!(set.topology(), Topology::Everywhere(Unhinted::Fallback));
}

#[test]
fn node_hints_come_before_zone_hints() {
    // PreferSameNode: each ready endpoint hinted for its node and zone.
    let mut svc = zoned_backend();
    for e in &mut svc.endpoints {
        e.node_hints = e.node.iter().cloned().collect();
    }
    let set = eligible(&svc, 0, TrafficPolicy::Cluster, at("n2", Some("b")));
    assert_eq!(addresses(set.iter()), ["10.0.2.1"]);
    assert_eq!(set.topology(), Topology::SameNode("n2"));
    // A node without an endpoint of its own: its zone's endpoints.
    let set = eligible(&svc, 0, TrafficPolicy::Cluster, at("n9", Some("b")));
    assert_eq!(addresses(set.iter()), ["10.0.2.1", "10.0.3.1"]);
    assert_eq!(set.topology(), Topology::SameZone("b"));
    // One ready endpoint without a node hint: node hints are ignored.
    svc.endpoints[2].node_hints = Arc::from([]);
    let set = eligible(&svc, 0, TrafficPolicy::Cluster, at("n2", Some("b")));
    assert_eq!(set.topology(), Topology::SameZone("b"));
}

#[test]
fn the_data_path_and_ferryctl_route_use_the_serving_nodes_zone() {
    let mut bodies = cluster();
    for b in &mut bodies {
        if let ResourceBody::Node(n) = b {
            n.zone = Some(if n.name == "n1" { "a" } else { "b" }.into());
        }
    }
    bodies.push(ResourceBody::Service(Box::new(zoned_backend())));
    let s = ConfigStore::holding(&bodies).snapshot();
    let lb = LoadBalancer::new();
    let svc = s.service("shop/backend").unwrap();
    for _ in 0..4 {
        let (e, _) = lb
            .pick(
                svc,
                0,
                TrafficPolicy::Cluster,
                Locality::of(&s, LOCAL),
                Ends {
                    client: ip("10.0.1.100"),
                    destination: ip("10.96.0.10"),
                },
                Instant::now(),
            )
            .unwrap();
        assert_eq!(e.address, ip("10.0.1.1"), "zone a has one endpoint");
    }
    let e = explain_to(&s, "10.96.0.10:80");
    let topology = e.topology.unwrap();
    assert_eq!(
        (
            topology.node.as_str(),
            topology.zone.as_deref(),
            topology.decision
        ),
        ("n1", Some("a"), "same_zone")
    );
    assert_eq!(
        topology.traffic_distribution.as_deref(),
        Some("PreferClose")
    );
    assert_eq!(e.endpoints.len(), 1);
    assert_eq!(e.endpoints[0].zone.as_deref(), Some("a"));
}

#[test]
fn a_single_stack_service_is_unknown_on_the_other_family() {
    // kube-proxy runs one proxier per family: an IPv4-only service's node
    // port on a node's IPv6 address, and its external IP of the other
    // family, are not the service's.
    let mut bodies = cluster();
    bodies.push(node("n6", "fd00:18::6", None, true));
    let mut svc = web();
    svc.external_ips.push(ip("2001:db8::50"));
    bodies.push(ResourceBody::Service(Box::new(svc)));
    let s = ConfigStore::holding(&bodies).snapshot();
    for (destination, is_service) in [
        ("10.1.0.2:30080", true),
        ("[fd00:18::6]:30080", false),
        ("192.0.2.50:80", true),
        ("[2001:db8::50]:80", false),
    ] {
        let p = plan(&s, Origin::Outside, sa(destination));
        assert_eq!(
            matches!(p, Plan::Service { .. }),
            is_service,
            "{destination}: {p:?}"
        );
    }
}

#[test]
fn affinity_keeps_the_address_and_port_of_its_endpoint() {
    // Two slices list one address with two ports: two endpoints. A client
    // with ClientIP affinity stays on the one it got, port included.
    let mut svc = service(
        "twoports",
        Some("10.96.0.60"),
        vec![tcp("http", 80, 8080)],
        vec![
            ep("a2", "10.0.2.1", "n2", &[Some(8080)]),
            ep("a2", "10.0.2.1", "n2", &[Some(9000)]),
        ],
    );
    svc.client_ip_affinity = Some(60);
    let s = state_with(vec![svc]);
    let lb = LoadBalancer::new();
    let svc = s.service("shop/twoports").unwrap();
    let now = Instant::now();
    let pick = |client: &str| {
        lb.pick(
            svc,
            0,
            TrafficPolicy::Cluster,
            LOCAL,
            Ends {
                client: ip(client),
                destination: ip("10.96.0.60"),
            },
            now,
        )
        .unwrap()
        .1
    };
    for client in ["10.0.1.100", "10.0.1.101"] {
        let first = pick(client);
        for _ in 0..4 {
            assert_eq!(pick(client), first, "{client}");
        }
    }
    // Round robin gave the two clients the two endpoints.
    assert_ne!(pick("10.0.1.100"), pick("10.0.1.101"));
}
