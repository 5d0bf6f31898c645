//! Randomized differential test of routing and NetworkPolicy: seeded small
//! clusters ([`generate`]) are read by Ferry exactly as `ferryctl` reads a
//! folder of manifests (the manifest source with its API defaulting and
//! validation, the control plane's translation, the proxy's store), and
//! every question is answered twice: by Ferry's routing and policy code
//! (`ferryctl route`'s `explain`, the data path's `plan` and
//! `eligible_for`, the policy `evaluate` the proxies run) and by
//! [`reference`], a model written from the Kubernetes API documentation
//! alone. Any disagreement fails the test with the seed, the question, both
//! answers and the manifests (written to `target/differential/`).
//!
//! Bounded: `FERRY_DIFF_CASES` clusters (default 1,500) within
//! `FERRY_DIFF_SECONDS` (default 60); the longer run in
//! docs/conformance.md sets both higher. `FERRY_DIFF_SEED` starts
//! elsewhere (default 0); a single failing seed reruns with
//! `FERRY_DIFF_SEED=N FERRY_DIFF_CASES=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod generate;
mod reference;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_api::model::Protocol;
use ferry_core::policy::{evaluate, Party};
use ferry_core::route::{self, eligible_for, Locality, Origin, Plan, RouteMode};
use ferry_core::state::ProxyState;
use generate::{Generated, PodPlan};
use reference::{Client, Cluster, Route};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The reference model's view: the same manifests, typed.
fn reference_cluster(generated: &Generated) -> anyhow::Result<Cluster> {
    let mut cluster = Cluster::default();
    for m in &generated.manifests {
        let m = m.clone();
        match m["kind"].as_str().unwrap_or("") {
            "Namespace" => cluster.namespaces.push(serde_json::from_value(m)?),
            "Node" => cluster.nodes.push(serde_json::from_value(m)?),
            "Pod" => cluster.pods.push(serde_json::from_value(m)?),
            "Service" => cluster.services.push(serde_json::from_value(m)?),
            "EndpointSlice" => cluster.slices.push(serde_json::from_value(m)?),
            "NetworkPolicy" => cluster.policies.push(serde_json::from_value(m)?),
            other => anyhow::bail!("generated an unexpected kind {other}"),
        }
    }
    Ok(cluster)
}

/// Ferry's answer for a pod client: `ferryctl route`'s explanation.
fn ferry_route_from_pod(
    state: &ProxyState,
    pod: &PodPlan,
    destination: SocketAddr,
) -> Result<Route, String> {
    let key = format!("{}/{}", pod.namespace, pod.name);
    let workload = state
        .workload(&key)
        .ok_or_else(|| format!("Ferry does not know pod {key}"))?;
    let e = route::explain(state, workload, &destination.to_string())?;
    Ok(match (e.service, e.mode) {
        (None, _) => Route::NotAService,
        (Some(_), RouteMode::Refused) => Route::Refused,
        (Some(_), _) => Route::Endpoints(
            e.endpoints
                .iter()
                .map(|e| SocketAddr::new(e.address, e.port))
                .collect(),
        ),
    })
}

/// Ferry's answer for a client outside the cluster entering at `node`: the
/// data path's plan and eligibility.
fn ferry_route_from_outside(state: &ProxyState, node: &str, destination: SocketAddr) -> Route {
    match route::plan(state, Origin::Outside, destination) {
        Plan::Service {
            service,
            port,
            policy,
            node: dialled,
            ..
        } => {
            let at = Locality::of(state, dialled.unwrap_or(node));
            let endpoints: BTreeSet<SocketAddr> =
                eligible_for(service, port, policy, at, destination.ip())
                    .iter()
                    .filter_map(|e| {
                        Some(SocketAddr::new(
                            e.address,
                            e.ports.get(port).copied().flatten()?,
                        ))
                    })
                    .collect();
            if endpoints.is_empty() {
                Route::Refused
            } else {
                Route::Endpoints(endpoints)
            }
        }
        Plan::Refused { .. } => Route::Refused,
        _ => Route::NotAService,
    }
}

fn protocol(name: &str) -> Protocol {
    match name {
        "UDP" => Protocol::Udp,
        "SCTP" => Protocol::Sctp,
        _ => Protocol::Tcp,
    }
}

/// How the questions were answered (by the reference), over a run: each
/// kind of answer must come up, or the test would not be testing it.
#[derive(Debug, Default)]
struct Tally {
    not_a_service: u64,
    refused: u64,
    endpoints: u64,
    allowed: u64,
    denied: u64,
}

impl Tally {
    fn route(&mut self, route: &Route) {
        match route {
            Route::NotAService => self.not_a_service += 1,
            Route::Refused => self.refused += 1,
            Route::Endpoints(_) => self.endpoints += 1,
        }
    }
}

/// One cluster: every question to both; the disagreements.
fn compare(seed: u64, dir: &std::path::Path, tally: &mut Tally) -> anyhow::Result<Vec<String>> {
    let (generated, plan) = generate::cluster(seed);
    std::fs::write(dir.join("cluster.yaml"), generated.yaml()?)?;
    let mut out = Vec::new();
    let (state, problems) =
        ferryctl::mesh::proxy_state_checked(dir).map_err(|e| anyhow::anyhow!(e))?;
    for problem in problems {
        out.push(format!("Ferry refused a valid object: {problem}"));
    }
    let model = reference_cluster(&generated)?;
    let live: Vec<&PodPlan> = plan.pods.iter().filter(|p| p.live).collect();

    // Routing from pods: every service address, every node port.
    let node_ports = plan.node_ports.iter().map(|(_, a, p)| (a, *p));
    for (address, port) in plan
        .destinations
        .iter()
        .chain(plan.external.iter())
        .map(|(a, p)| (a, *p))
        .chain(node_ports)
    {
        let destination = SocketAddr::new(address.parse()?, port);
        for pod in &live {
            let ferry = ferry_route_from_pod(&state, pod, destination);
            let expected = model.route(
                Client::Pod {
                    namespace: &pod.namespace,
                    name: &pod.name,
                },
                destination,
            );
            tally.route(&expected);
            if ferry.as_ref() != Ok(&expected) {
                out.push(format!(
                    "route from pod {}/{} (node {}) to {destination}: Ferry {ferry:?}, reference {expected:?}",
                    pod.namespace, pod.name, pod.node
                ));
            }
        }
    }
    // Routing from outside: external and load-balancer IPs at every node,
    // node ports at the node dialled.
    for (address, port) in &plan.external {
        let destination = SocketAddr::new(address.parse()?, *port);
        for node in &plan.nodes {
            let ferry = ferry_route_from_outside(&state, &node.name, destination);
            let expected = model.route(Client::Outside { node: &node.name }, destination);
            tally.route(&expected);
            if ferry != expected {
                out.push(format!(
                    "route from outside at {} to {destination}: Ferry {ferry:?}, reference {expected:?}",
                    node.name
                ));
            }
        }
    }
    for (node, address, port) in &plan.node_ports {
        let destination = SocketAddr::new(address.parse()?, *port);
        let ferry = ferry_route_from_outside(&state, node, destination);
        let expected = model.route(Client::Outside { node }, destination);
        tally.route(&expected);
        if ferry != expected {
            out.push(format!(
                "route from outside to node port {destination} of {node}: Ferry {ferry:?}, reference {expected:?}"
            ));
        }
    }

    // Policy: every pair of running pods, per shared address family, on
    // the destination's named ports and a few others.
    for from in &live {
        for to in &live {
            if from.name == to.name && from.namespace == to.namespace {
                continue;
            }
            let from_key = format!("{}/{}", from.namespace, from.name);
            let to_key = format!("{}/{}", to.namespace, to.name);
            let (Some(source), Some(destination)) = (
                state.workload_party(&from_key),
                state.workload_party(&to_key),
            ) else {
                out.push(format!("Ferry does not know {from_key} or {to_key}"));
                continue;
            };
            let families = [(&from.v4, &to.v4), (&from.v6, &to.v6)];
            let mut probes: Vec<(u16, &str)> = to.ports.iter().map(|(_, n, p)| (*n, *p)).collect();
            probes.extend([
                (80, "TCP"),
                (8081, "TCP"),
                (9091, "TCP"),
                (53, "UDP"),
                (9090, "SCTP"),
            ]);
            for (from_ip, to_ip) in families {
                let (Some(from_ip), Some(to_ip)) = (from_ip, to_ip) else {
                    continue;
                };
                let from_ip: IpAddr = from_ip.parse()?;
                let to_ip: IpAddr = to_ip.parse()?;
                let source = Party {
                    ip: from_ip,
                    ..source
                };
                let destination = Party {
                    ip: to_ip,
                    ..destination
                };
                for (port, proto) in &probes {
                    let ferry =
                        evaluate(&*state, &source, &destination, *port, protocol(proto)).allowed;
                    let expected = model.policy_allows(
                        (&from.namespace, &from.name),
                        from_ip,
                        (&to.namespace, &to.name),
                        to_ip,
                        *port,
                        proto,
                    );
                    if expected {
                        tally.allowed += 1;
                    } else {
                        tally.denied += 1;
                    }
                    if ferry != expected {
                        out.push(format!(
                            "policy {from_key} ({from_ip}) -> {to_key} ({to_ip}) {port}/{proto}: \
                             Ferry {}, reference {}",
                            if ferry { "allows" } else { "denies" },
                            if expected { "allows" } else { "denies" },
                        ));
                    }
                }
            }
        }
    }
    Ok(out)
}

#[test]
fn ferry_agrees_with_the_reference_model_on_random_clusters() -> anyhow::Result<()> {
    let first = env_number("FERRY_DIFF_SEED", 0);
    let cases = env_number("FERRY_DIFF_CASES", 1_500);
    let budget = Duration::from_secs(env_number("FERRY_DIFF_SECONDS", 60));
    let dir = tempfile::tempdir()?;
    let failures_dir = ferry_tests::repo_root().join("target/differential");
    let started = Instant::now();
    let mut checked = 0u64;
    let mut failed: Vec<(u64, Vec<String>)> = Vec::new();
    let mut tally = Tally::default();
    for seed in first..first.saturating_add(cases) {
        if started.elapsed() > budget {
            break;
        }
        let problems =
            compare(seed, dir.path(), &mut tally).with_context(|| format!("seed {seed}"))?;
        checked += 1;
        if !problems.is_empty() {
            let (generated, _) = generate::cluster(seed);
            std::fs::create_dir_all(&failures_dir)?;
            std::fs::write(
                failures_dir.join(format!("seed-{seed}.yaml")),
                generated.yaml()?,
            )?;
            failed.push((seed, problems));
        }
    }
    println!(
        "differential: {checked} clusters (seeds {first}..{}) in {:.1} s, {} disagreeing; {tally:?}",
        first + checked,
        started.elapsed().as_secs_f64(),
        failed.len()
    );
    if checked < cases {
        eprintln!(
            "differential: the {}-second budget ran out after {checked} of {cases} clusters \
             (a slow machine); the rest were not checked",
            budget.as_secs()
        );
    }
    assert!(checked > 0, "no cluster was checked");
    if checked >= 100 {
        let Tally {
            not_a_service,
            refused,
            endpoints,
            allowed,
            denied,
        } = tally;
        assert!(
            [not_a_service, refused, endpoints, allowed, denied]
                .iter()
                .all(|n| *n > 0),
            "some kind of answer never came up: {tally:?}"
        );
    }
    if !failed.is_empty() {
        let mut report = String::new();
        for (seed, problems) in failed.iter().take(5) {
            report.push_str(&format!(
                "\nseed {seed} (manifests in {}):\n",
                failures_dir.join(format!("seed-{seed}.yaml")).display()
            ));
            for p in problems.iter().take(8) {
                report.push_str(&format!("  {p}\n"));
            }
            if problems.len() > 8 {
                report.push_str(&format!("  ... and {} more\n", problems.len() - 8));
            }
        }
        panic!(
            "{} of {checked} clusters disagree with the reference model:{report}",
            failed.len()
        );
    }
    Ok(())
}

/// The generator's clusters are what the test says they are: varied
/// enough to reach every rule (a check of the generator, not of Ferry).
#[test]
fn the_generator_reaches_every_kind_of_object_and_field() -> anyhow::Result<()> {
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for seed in 0..300 {
        let (generated, _) = generate::cluster(seed);
        for m in &generated.manifests {
            let kind = m["kind"].as_str().unwrap_or("");
            seen.insert(kind.to_string());
            let spec = &m["spec"];
            let mut note = |cond: bool, what: &str| {
                if cond {
                    seen.insert(what.to_string());
                }
            };
            match kind {
                "Service" => {
                    note(spec["type"] == "NodePort", "NodePort");
                    note(spec["type"] == "LoadBalancer", "LoadBalancer");
                    note(spec["type"] == "ExternalName", "ExternalName");
                    note(spec["clusterIP"] == "None", "headless");
                    note(spec["type"].is_null(), "type defaulted");
                    note(
                        spec["ipFamilies"].as_array().is_some_and(|f| f.len() == 2),
                        "dual-stack",
                    );
                    note(spec["ipFamilies"][0] == "IPv6", "IPv6 first");
                    note(
                        spec["internalTrafficPolicy"] == "Local",
                        "internalTrafficPolicy Local",
                    );
                    note(
                        spec["externalTrafficPolicy"] == "Local",
                        "externalTrafficPolicy Local",
                    );
                    note(
                        spec["publishNotReadyAddresses"] == true,
                        "publishNotReadyAddresses",
                    );
                    note(
                        !spec["trafficDistribution"].is_null(),
                        "trafficDistribution",
                    );
                    note(!spec["externalIPs"].is_null(), "externalIPs");
                    note(spec["selector"].is_null(), "no selector");
                    for p in spec["ports"].as_array().into_iter().flatten() {
                        note(p["targetPort"].is_string(), "named targetPort");
                        note(p["targetPort"].is_null(), "targetPort defaulted");
                        note(p["protocol"] == "UDP", "UDP service port");
                    }
                }
                "EndpointSlice" => {
                    note(m["addressType"] == "IPv6", "IPv6 slice");
                    for e in m["endpoints"].as_array().into_iter().flatten() {
                        note(e["conditions"]["ready"].is_null(), "ready defaulted");
                        note(
                            e["conditions"]["terminating"] == true,
                            "terminating endpoint",
                        );
                        note(!e["hints"]["forZones"].is_null(), "forZones");
                        note(!e["hints"]["forNodes"].is_null(), "forNodes");
                        note(e["targetRef"].is_null(), "bare address");
                    }
                }
                "NetworkPolicy" => {
                    note(spec["policyTypes"].is_null(), "policyTypes defaulted");
                    note(
                        spec["podSelector"] == serde_json::json!({}),
                        "empty podSelector",
                    );
                    let rules = spec["ingress"]
                        .as_array()
                        .into_iter()
                        .chain(spec["egress"].as_array())
                        .flatten();
                    for rule in rules {
                        let peers = rule["from"].as_array().or(rule["to"].as_array());
                        for peer in peers.into_iter().flatten() {
                            note(!peer["ipBlock"]["except"].is_null(), "ipBlock except");
                            note(
                                !peer["podSelector"].is_null()
                                    && !peer["namespaceSelector"].is_null(),
                                "pod and namespace selector",
                            );
                            note(
                                !peer["podSelector"]["matchExpressions"].is_null(),
                                "matchExpressions",
                            );
                        }
                        for port in rule["ports"].as_array().into_iter().flatten() {
                            note(!port["endPort"].is_null(), "endPort");
                            note(port["port"].is_string(), "named policy port");
                            note(port["protocol"] == "SCTP", "SCTP");
                        }
                    }
                }
                "Pod" => {
                    note(
                        m["metadata"]["deletionTimestamp"].is_string(),
                        "terminating pod",
                    );
                    note(
                        m["status"]["podIPs"]
                            .as_array()
                            .is_some_and(|a| a.len() == 2),
                        "dual-stack pod",
                    );
                }
                _ => {}
            }
        }
    }
    let wanted = [
        "Namespace",
        "Node",
        "Pod",
        "Service",
        "EndpointSlice",
        "NetworkPolicy",
        "NodePort",
        "LoadBalancer",
        "ExternalName",
        "headless",
        "type defaulted",
        "dual-stack",
        "IPv6 first",
        "internalTrafficPolicy Local",
        "externalTrafficPolicy Local",
        "publishNotReadyAddresses",
        "trafficDistribution",
        "externalIPs",
        "no selector",
        "named targetPort",
        "targetPort defaulted",
        "UDP service port",
        "IPv6 slice",
        "ready defaulted",
        "terminating endpoint",
        "forZones",
        "forNodes",
        "bare address",
        "policyTypes defaulted",
        "empty podSelector",
        "ipBlock except",
        "pod and namespace selector",
        "matchExpressions",
        "endPort",
        "named policy port",
        "SCTP",
        "terminating pod",
        "dual-stack pod",
    ];
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|w| !seen.contains(*w))
        .collect();
    assert!(
        missing.is_empty(),
        "the generator never produced: {missing:?}"
    );
    Ok(())
}
