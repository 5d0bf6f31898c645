//! A seeded generator of small clusters: namespaces with labels, nodes in
//! zones, labelled pods (IPv4 or dual-stack, ready or not, terminating or
//! not) whose named container ports map to different numbers on different
//! pods, services of every type (selector-based or with hand-written
//! EndpointSlices carrying conditions, zones and hints), and NetworkPolicies
//! drawn from the whole v1 spec. Every object is valid as the API server
//! validates it, and fields the API server would default are often left
//! out, as in hand-written manifests.
//!
//! The same seed gives the same cluster (fastrand's generator is
//! deterministic for a seed).

use serde_json::{json, Map, Value};

/// One generated cluster: its manifests, in apply order.
#[derive(Debug, Clone)]
pub struct Generated {
    pub manifests: Vec<Value>,
}

impl Generated {
    /// The manifests as one multi-document YAML file.
    pub fn yaml(&self) -> Result<String, serde_yaml::Error> {
        let mut out = String::new();
        for m in &self.manifests {
            out.push_str("---\n");
            out.push_str(&serde_yaml::to_string(m)?);
        }
        Ok(out)
    }
}

const APPS: [&str; 3] = ["web", "db", "api"];
const TIERS: [&str; 2] = ["fe", "be"];
const ZONES: [&str; 2] = ["zone-a", "zone-b"];

/// A pod as the generator placed it (what the queries need).
#[derive(Debug, Clone)]
pub struct PodPlan {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub v4: Option<String>,
    pub v6: Option<String>,
    /// Named container ports: (name, number, protocol).
    pub ports: Vec<(String, u16, &'static str)>,
    /// Running with an address (a possible end of a connection).
    pub live: bool,
}

/// A node: name and addresses.
#[derive(Debug, Clone)]
pub struct NodePlan {
    pub name: String,
    pub addresses: Vec<String>,
}

/// What the queries need to know about a generated cluster.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub nodes: Vec<NodePlan>,
    pub pods: Vec<PodPlan>,
    /// Cluster IP destinations worth asking about: (address, port).
    pub destinations: Vec<(String, u16)>,
    /// External and load-balancer IP destinations: (address, port).
    pub external: Vec<(String, u16)>,
    /// Node-port destinations: (node, address, port).
    pub node_ports: Vec<(String, String, u16)>,
}

struct Gen {
    rng: fastrand::Rng,
    next_cluster_ip: u32,
    next_node_port: u16,
    next_bare: u32,
}

impl Gen {
    fn chance(&mut self, percent: u32) -> bool {
        self.rng.u32(0..100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.rng.usize(0..items.len())]
    }

    fn labels(&mut self) -> Map<String, Value> {
        let mut labels = Map::new();
        if self.chance(85) {
            labels.insert("app".into(), json!(*self.pick(&APPS)));
        }
        if self.chance(50) {
            labels.insert("tier".into(), json!(*self.pick(&TIERS)));
        }
        labels
    }

    /// A label selector over app/tier: matchLabels, matchExpressions or
    /// both; sometimes empty (selects everything).
    fn selector(&mut self, keys: &[&str], values: &[&str]) -> Value {
        let mut selector = Map::new();
        if self.chance(20) {
            return Value::Object(selector);
        }
        if self.chance(60) {
            let key = *self.pick(keys);
            let value = *self.pick(values);
            selector.insert("matchLabels".into(), json!({ key: value }));
        }
        if selector.is_empty() || self.chance(30) {
            let key = *self.pick(keys);
            let operator = *self.pick(&["In", "NotIn", "Exists", "DoesNotExist"]);
            let mut expression = json!({"key": key, "operator": operator});
            if operator == "In" || operator == "NotIn" {
                let mut chosen: Vec<&str> =
                    values.iter().copied().filter(|_| self.chance(50)).collect();
                if chosen.is_empty() {
                    chosen.push(*self.pick(values));
                }
                expression["values"] = json!(chosen);
            }
            selector.insert("matchExpressions".into(), json!([expression]));
        }
        Value::Object(selector)
    }

    fn cluster_ip(&mut self, v6: bool) -> String {
        self.next_cluster_ip += 1;
        let n = self.next_cluster_ip;
        if v6 {
            format!("fd00:96::{n:x}")
        } else {
            format!("10.96.{}.{}", n / 250, n % 250 + 1)
        }
    }

    fn bare(&mut self, v6: bool) -> String {
        self.next_bare += 1;
        let n = self.next_bare;
        if v6 {
            format!("fd00:250::{n:x}")
        } else {
            format!("10.250.0.{n}")
        }
    }
}

/// The cluster of `seed`.
pub fn cluster(seed: u64) -> (Generated, Plan) {
    let mut g = Gen {
        rng: fastrand::Rng::with_seed(seed),
        next_cluster_ip: 0,
        next_node_port: 30000,
        next_bare: 0,
    };
    let mut manifests = Vec::new();
    let mut plan = Plan::default();

    // Namespaces (one may be used without a Namespace object).
    let all_namespaces = ["alpha", "beta", "gamma"];
    let namespace_count = g.rng.usize(1..=3);
    let namespaces: Vec<&str> = all_namespaces[..namespace_count].to_vec();
    for ns in &namespaces {
        if g.chance(10) {
            continue;
        }
        let mut labels = Map::new();
        if g.chance(70) {
            labels.insert("team".into(), json!(*g.pick(&["red", "blue"])));
        }
        if g.chance(50) {
            labels.insert("env".into(), json!(*g.pick(&["prod", "dev"])));
        }
        manifests.push(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": labels},
        }));
    }

    // Nodes, some in a zone.
    for i in 0..g.rng.usize(2..=3) {
        let name = format!("node-{i}");
        let mut addresses =
            vec![json!({"type": "InternalIP", "address": format!("172.18.0.{}", i + 2)})];
        if g.chance(30) {
            addresses
                .push(json!({"type": "ExternalIP", "address": format!("198.51.100.{}", i + 2)}));
        }
        if g.chance(25) {
            addresses.push(json!({"type": "InternalIP", "address": format!("fd00:18::{}", i + 2)}));
        }
        addresses.push(json!({"type": "Hostname", "address": name}));
        let mut labels = Map::new();
        labels.insert("kubernetes.io/hostname".into(), json!(name));
        if g.chance(75) {
            labels.insert("topology.kubernetes.io/zone".into(), json!(*g.pick(&ZONES)));
        }
        plan.nodes.push(NodePlan {
            name: name.clone(),
            addresses: addresses
                .iter()
                .filter(|a| a["type"] != "Hostname")
                .filter_map(|a| a["address"].as_str().map(str::to_owned))
                .collect(),
        });
        manifests.push(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels},
            "status": {"addresses": addresses},
        }));
    }

    // Pods: named ports whose numbers differ from pod to pod.
    let node_names: Vec<String> = plan.nodes.iter().map(|n| n.name.clone()).collect();
    let mut per_node = vec![0u32; node_names.len()];
    for i in 0..g.rng.usize(3..=8) {
        let namespace = (*g.pick(&namespaces)).to_string();
        let node_index = g.rng.usize(0..node_names.len());
        let node = node_names[node_index].clone();
        per_node[node_index] += 1;
        let host = per_node[node_index];
        let name = format!("p{i}");
        let mut ports: Vec<(String, u16, &'static str)> = Vec::new();
        if g.chance(80) {
            ports.push(("http".into(), *g.pick(&[8080, 8081, 9000]), "TCP"));
        }
        if g.chance(50) {
            ports.push(("metrics".into(), *g.pick(&[9090, 9091]), "TCP"));
        }
        if g.chance(30) {
            ports.push(("dns".into(), *g.pick(&[53, 5353]), "UDP"));
        }
        let container_ports: Vec<Value> = ports
            .iter()
            .map(|(n, p, proto)| {
                let mut port = json!({"name": n, "containerPort": p});
                // TCP is the default: often left out.
                if *proto != "TCP" || g.chance(50) {
                    port["protocol"] = json!(proto);
                }
                port
            })
            .collect();
        let phase = if g.chance(90) {
            "Running"
        } else {
            *g.pick(&["Pending", "Succeeded"])
        };
        let v4 = (phase != "Pending").then(|| format!("10.244.{node_index}.{host}"));
        let v6 = (v4.is_some() && g.chance(40)).then(|| format!("fd00:244::{node_index}:{host}"));
        let mut status = json!({"phase": phase});
        if let Some(v4) = &v4 {
            status["podIP"] = json!(v4);
            let mut ips = vec![json!({"ip": v4})];
            ips.extend(v6.iter().map(|ip| json!({"ip": ip})));
            status["podIPs"] = json!(ips);
        }
        let ready = phase == "Running" && g.chance(75);
        status["conditions"] =
            json!([{"type": "Ready", "status": if ready { "True" } else { "False" }}]);
        let mut metadata = json!({"name": name, "namespace": namespace, "labels": g.labels()});
        if g.chance(15) {
            metadata["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        manifests.push(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": metadata,
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "app", "ports": container_ports}]},
            "status": status,
        }));
        plan.pods.push(PodPlan {
            namespace,
            name,
            node,
            live: phase == "Running",
            v4,
            v6,
            ports,
        });
    }

    // Services.
    for i in 0..g.rng.usize(1..=4) {
        service(&mut g, i, &namespaces, &mut manifests, &mut plan);
    }

    // NetworkPolicies.
    for i in 0..g.rng.usize(0..=3) {
        let namespace = *g.pick(&namespaces);
        manifests.push(policy(&mut g, i, namespace));
    }

    (Generated { manifests }, plan)
}

fn service(
    g: &mut Gen,
    i: usize,
    namespaces: &[&str],
    manifests: &mut Vec<Value>,
    plan: &mut Plan,
) {
    let namespace = *g.pick(namespaces);
    let name = format!("svc{i}");
    let kind = *g.pick(&[
        "ClusterIP",
        "ClusterIP",
        "ClusterIP",
        "NodePort",
        "NodePort",
        "LoadBalancer",
        "Headless",
        "ExternalName",
    ]);
    let mut spec = Map::new();
    if kind == "ExternalName" {
        spec.insert("type".into(), json!("ExternalName"));
        spec.insert("externalName".into(), json!("db.example.com"));
        manifests.push(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }));
        return;
    }
    match kind {
        "NodePort" | "LoadBalancer" => {
            spec.insert("type".into(), json!(kind));
        }
        _ if g.chance(30) => {
            spec.insert("type".into(), json!("ClusterIP"));
        }
        _ => {}
    }
    // Families, in order, and the cluster IPs that go with them.
    let families: Vec<bool> = match g.rng.u32(0..100) {
        0..=59 => vec![false],
        60..=74 => vec![true],
        75..=89 => vec![false, true],
        _ => vec![true, false],
    };
    let dual = families.len() == 2;
    // Addresses of the service to ask about (cluster, external, LB IPs).
    let mut addresses: Vec<String> = Vec::new();
    let mut external: Vec<String> = Vec::new();
    if kind == "Headless" {
        spec.insert("clusterIP".into(), json!("None"));
        spec.insert("clusterIPs".into(), json!(["None"]));
        let names: Vec<&str> = families
            .iter()
            .map(|v6| if *v6 { "IPv6" } else { "IPv4" })
            .collect();
        spec.insert("ipFamilies".into(), json!(names));
    } else {
        let ips: Vec<String> = families.iter().map(|v6| g.cluster_ip(*v6)).collect();
        spec.insert("clusterIP".into(), json!(ips[0]));
        if dual || g.chance(50) {
            spec.insert("clusterIPs".into(), json!(ips));
        }
        if dual || g.chance(50) {
            let names: Vec<&str> = families
                .iter()
                .map(|v6| if *v6 { "IPv6" } else { "IPv4" })
                .collect();
            spec.insert("ipFamilies".into(), json!(names));
        }
        addresses.extend(ips);
    }
    if dual {
        spec.insert(
            "ipFamilyPolicy".into(),
            json!(*g.pick(&["PreferDualStack", "RequireDualStack"])),
        );
    }

    // Ports: unique names (required with several), unique port+protocol.
    let mut ports = Vec::new();
    let mut used = Vec::new();
    let port_count = g.rng.usize(1..=2);
    for p in 0..port_count {
        let number = *g.pick(&[80u16, 443, 8080]);
        let protocol = if g.chance(15) { "UDP" } else { "TCP" };
        if used.contains(&(number, protocol)) {
            continue;
        }
        used.push((number, protocol));
        let mut port = json!({"port": number});
        if port_count > 1 || g.chance(50) {
            port["name"] = json!(format!("port-{p}"));
        }
        if protocol != "TCP" || g.chance(50) {
            port["protocol"] = json!(protocol);
        }
        match g.rng.u32(0..10) {
            0..=1 => {}
            2..=5 => port["targetPort"] = json!(*g.pick(&[8080, 8081, 9000, 9090])),
            _ => port["targetPort"] = json!(*g.pick(&["http", "metrics", "dns", "grpc"])),
        }
        if kind == "NodePort" || kind == "LoadBalancer" {
            g.next_node_port += 1;
            port["nodePort"] = json!(g.next_node_port);
            if protocol == "TCP" {
                for node in &plan.nodes {
                    for address in &node.addresses {
                        plan.node_ports.push((
                            node.name.clone(),
                            address.clone(),
                            g.next_node_port,
                        ));
                    }
                }
            }
        }
        ports.push(port);
    }
    let numbers: Vec<u16> = used.iter().map(|(n, _)| *n).collect();
    spec.insert("ports".into(), json!(ports));

    if kind != "Headless" {
        if g.chance(20) {
            let ip = format!("192.0.2.{}", i + 1);
            spec.insert("externalIPs".into(), json!([ip]));
            external.push(ip);
        }
        if g.chance(40) {
            spec.insert(
                "internalTrafficPolicy".into(),
                json!(*g.pick(&["Cluster", "Local"])),
            );
        }
        if (kind == "NodePort" || kind == "LoadBalancer") && g.chance(60) {
            spec.insert(
                "externalTrafficPolicy".into(),
                json!(*g.pick(&["Cluster", "Local"])),
            );
        }
    }
    for address in addresses {
        for n in &numbers {
            plan.destinations.push((address.clone(), *n));
        }
        plan.destinations.push((address, 9999));
    }
    if g.chance(15) {
        spec.insert("publishNotReadyAddresses".into(), json!(true));
    }
    if g.chance(30) {
        spec.insert(
            "trafficDistribution".into(),
            json!(*g.pick(&["PreferClose", "PreferSameZone", "PreferSameNode"])),
        );
    }
    if g.chance(20) {
        spec.insert("sessionAffinity".into(), json!("ClientIP"));
    }
    let selector_based = g.chance(70);
    if selector_based {
        let mut selector = Map::new();
        selector.insert("app".into(), json!(*g.pick(&APPS)));
        if g.chance(30) {
            selector.insert("tier".into(), json!(*g.pick(&TIERS)));
        }
        spec.insert("selector".into(), Value::Object(selector));
    }
    let mut status = json!({});
    if kind == "LoadBalancer" && g.chance(80) {
        let ip = format!("203.0.113.{}", i + 1);
        status = json!({"loadBalancer": {"ingress": [{"ip": ip}]}});
        external.push(ip);
    }
    for address in external {
        for n in &numbers {
            plan.external.push((address.clone(), *n));
        }
        plan.external.push((address, 9999));
    }
    let service_ports: Vec<(Option<String>, &'static str)> = spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["name"].as_str().map(str::to_owned),
                if p["protocol"] == "UDP" { "UDP" } else { "TCP" },
            )
        })
        .collect();
    manifests.push(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
        "status": status,
    }));
    if !selector_based {
        for s in 0..g.rng.usize(0..=2) {
            manifests.push(slice(
                g,
                &name,
                namespace,
                s,
                &families,
                &service_ports,
                plan,
            ));
        }
    }
}

/// A hand-written EndpointSlice of service `name`.
fn slice(
    g: &mut Gen,
    service: &str,
    namespace: &str,
    index: usize,
    families: &[bool],
    service_ports: &[(Option<String>, &'static str)],
    plan: &Plan,
) -> Value {
    // Mostly a family of the service; sometimes the other one.
    let v6 = if g.chance(85) {
        *g.pick(families)
    } else {
        !families[0]
    };
    let address_type = if v6 { "IPv6" } else { "IPv4" };
    let mut endpoints = Vec::new();
    for _ in 0..g.rng.usize(1..=3) {
        let pods: Vec<&PodPlan> = plan
            .pods
            .iter()
            .filter(|p| if v6 { p.v6.is_some() } else { p.v4.is_some() })
            .collect();
        let mut endpoint = Map::new();
        let pod = (!pods.is_empty() && g.chance(70)).then(|| *g.pick(&pods));
        let address = match pod {
            Some(p) => if v6 { p.v6.clone() } else { p.v4.clone() }.unwrap_or_default(),
            None => g.bare(v6),
        };
        endpoint.insert("addresses".into(), json!([address]));
        let mut conditions = Map::new();
        for condition in ["ready", "serving", "terminating"] {
            match g.rng.u32(0..3) {
                0 => {}
                1 => {
                    conditions.insert(condition.into(), json!(true));
                }
                _ => {
                    conditions.insert(condition.into(), json!(false));
                }
            }
        }
        if !conditions.is_empty() || g.chance(50) {
            endpoint.insert("conditions".into(), Value::Object(conditions));
        }
        let node = match pod {
            Some(p) => Some(p.node.clone()),
            None => g.chance(60).then(|| g.pick(&plan.nodes).name.clone()),
        };
        if let Some(node) = &node {
            endpoint.insert("nodeName".into(), json!(node));
        }
        if let Some(p) = pod {
            endpoint.insert(
                "targetRef".into(),
                json!({"kind": "Pod", "namespace": p.namespace, "name": p.name}),
            );
        }
        if g.chance(60) {
            endpoint.insert("zone".into(), json!(*g.pick(&ZONES)));
        }
        let mut hints = Map::new();
        if g.chance(40) {
            let zones: Vec<Value> = ZONES
                .iter()
                .filter(|_| g.chance(60))
                .map(|z| json!({"name": z}))
                .collect();
            if !zones.is_empty() {
                hints.insert("forZones".into(), json!(zones));
            }
        }
        if g.chance(20) {
            let node = g.pick(&plan.nodes).name.clone();
            hints.insert("forNodes".into(), json!([{"name": node}]));
        }
        if !hints.is_empty() {
            endpoint.insert("hints".into(), Value::Object(hints));
        }
        endpoints.push(Value::Object(endpoint));
    }
    let mut ports: Vec<Value> = Vec::new();
    for (name, protocol) in service_ports {
        if !g.chance(90) {
            continue;
        }
        ports.push({
            let mut port = json!({"port": *g.pick(&[8080, 8081, 9000])});
            let name = if g.chance(10) {
                Some("other".to_string())
            } else {
                name.clone()
            };
            if let Some(name) = name {
                port["name"] = json!(name);
            }
            if *protocol != "TCP" || g.chance(50) {
                port["protocol"] = json!(protocol);
            }
            port
        });
    }
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-{index}"),
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": ports,
    })
}

/// A NetworkPolicy drawn from the whole v1 spec.
fn policy(g: &mut Gen, i: usize, namespace: &str) -> Value {
    let mut spec = Map::new();
    spec.insert(
        "podSelector".into(),
        g.selector(&["app", "tier"], &["web", "db", "api", "fe", "be"]),
    );
    let ingress = rules(g, "from");
    let egress = rules(g, "to");
    if let Some(rules) = ingress {
        spec.insert("ingress".into(), rules);
    }
    if let Some(rules) = egress {
        spec.insert("egress".into(), rules);
    }
    match g.rng.u32(0..100) {
        0..=29 => {}
        30..=34 => {
            spec.insert("policyTypes".into(), json!([]));
        }
        35..=54 => {
            spec.insert("policyTypes".into(), json!(["Ingress"]));
        }
        55..=74 => {
            spec.insert("policyTypes".into(), json!(["Egress"]));
        }
        _ => {
            spec.insert("policyTypes".into(), json!(["Ingress", "Egress"]));
        }
    }
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": format!("np{i}"), "namespace": namespace},
        "spec": spec,
    })
}

/// Ingress or egress rules: absent, empty, or one or two rules.
fn rules(g: &mut Gen, peers_field: &str) -> Option<Value> {
    match g.rng.u32(0..10) {
        0..=3 => return None,
        4 => return Some(json!([])),
        _ => {}
    }
    let mut rules = Vec::new();
    for _ in 0..g.rng.usize(1..=2) {
        let mut rule = Map::new();
        match g.rng.u32(0..10) {
            0..=1 => {}
            2 => {
                rule.insert(peers_field.into(), json!([]));
            }
            _ => {
                let peers: Vec<Value> = (0..g.rng.usize(1..=2)).map(|_| peer(g)).collect();
                rule.insert(peers_field.into(), json!(peers));
            }
        }
        match g.rng.u32(0..10) {
            0..=2 => {}
            3 => {
                rule.insert("ports".into(), json!([]));
            }
            _ => {
                let ports: Vec<Value> = (0..g.rng.usize(1..=2)).map(|_| policy_port(g)).collect();
                rule.insert("ports".into(), json!(ports));
            }
        }
        rules.push(Value::Object(rule));
    }
    Some(json!(rules))
}

fn peer(g: &mut Gen) -> Value {
    match g.rng.u32(0..10) {
        0..=2 => {
            json!({"podSelector": g.selector(&["app", "tier"], &["web", "db", "api", "fe", "be"])})
        }
        3..=4 => json!({"namespaceSelector": g.selector(
            &["team", "env", "kubernetes.io/metadata.name"],
            &["red", "blue", "prod", "dev", "alpha", "beta", "gamma"],
        )}),
        5..=7 => json!({
            "podSelector": g.selector(&["app", "tier"], &["web", "db", "api", "fe", "be"]),
            "namespaceSelector": g.selector(
                &["team", "env", "kubernetes.io/metadata.name"],
                &["red", "blue", "prod", "dev", "alpha", "beta", "gamma"],
            ),
        }),
        _ => {
            let (cidr, except) = *g.pick(&[
                ("10.244.0.0/16", Some("10.244.1.0/24")),
                ("10.244.1.0/24", Some("10.244.1.0/30")),
                ("10.244.0.0/24", None),
                ("0.0.0.0/0", Some("10.244.2.0/24")),
                ("fd00:244::/32", None),
                ("fd00:244::1:0/112", Some("fd00:244::1:0/126")),
            ]);
            let mut block = json!({"cidr": cidr});
            if let Some(except) = except {
                if g.chance(70) {
                    block["except"] = json!([except]);
                }
            }
            json!({"ipBlock": block})
        }
    }
}

fn policy_port(g: &mut Gen) -> Value {
    let mut port = Map::new();
    let protocol = *g.pick(&["TCP", "TCP", "UDP", "SCTP"]);
    if protocol != "TCP" || g.chance(50) {
        port.insert("protocol".into(), json!(protocol));
    }
    match g.rng.u32(0..10) {
        0..=1 => {}
        2..=5 => {
            let number = *g.pick(&[53u16, 80, 8080, 8081, 9000, 9090]);
            port.insert("port".into(), json!(number));
            if g.chance(30) {
                port.insert("endPort".into(), json!(number + g.rng.u16(0..=1000)));
            }
        }
        _ => {
            port.insert("port".into(), json!(*g.pick(&["http", "metrics", "dns"])));
        }
    }
    Value::Object(port)
}
