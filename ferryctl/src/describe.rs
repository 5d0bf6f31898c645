//! `ferryctl describe pod NS/NAME`: one pod as the live mesh sees it:
//! - its enrolment, identity and certificate (from its node's proxy);
//! - the policies that select it, and what they admit;
//! - the services it backs;
//! - with `--to HOST:PORT`, what its outbound connection there would do.
//!
//! The configuration is the one the control plane serves the pod's node
//! (`MeshStatus/Resources`), applied to the proxy's own store. The route
//! and the verdict come from the same code as `ferryctl route` and
//! `ferryctl policy explain`.

use std::process::ExitCode;

use ferry_api::model::{Policy, PolicyRule, Protocol, TargetPort, Workload};
use ferry_api::{Kind, ResourceBody};
use ferry_core::policy::{evaluate, DirectionVerdict, PolicyIndex, Verdict};
use ferry_core::route::Explanation;
use ferry_core::state::ProxyState;
use ferryctl::live::Target;
use ferryctl::output::{now_unix, print, Output};
use serde::Serialize;

/// A certificate the pod's node proxy holds for its identity.
#[derive(Debug, Serialize)]
pub struct Certificate {
    pub not_after_unix: u64,
    pub refresh_at_unix: u64,
}

/// What a rule admits.
#[derive(Debug, Serialize)]
pub struct RuleView {
    /// Pods (`namespace/name`) the rule's peers match, address blocks
    /// (`CIDR except ...`), or `any peer`.
    pub peers: Vec<String>,
    /// `PORT/PROTOCOL`, `NAME/PROTOCOL`, `FROM-TO/PROTOCOL`; empty: every
    /// port.
    pub ports: Vec<String>,
}

/// A policy that selects the pod.
#[derive(Debug, Serialize)]
pub struct PolicyView {
    pub policy: String,
    /// `ingress`, `egress` or both: what it isolates the pod for.
    pub isolates: Vec<&'static str>,
    pub ingress: Vec<RuleView>,
    pub egress: Vec<RuleView>,
}

/// A service the pod backs.
#[derive(Debug, Serialize)]
pub struct ServiceView {
    pub service: String,
    /// `PORT/PROTOCOL -> TARGET` for each port this pod serves.
    pub ports: Vec<String>,
    pub ready: bool,
}

/// The whole description (`--output json|yaml`).
#[derive(Debug, Serialize)]
pub struct PodView {
    pub pod: String,
    pub node: Option<String>,
    pub addresses: Vec<String>,
    pub ready: bool,
    pub terminating: bool,
    /// Enrolled: its traffic is carried by the mesh (HBONE).
    pub mesh: bool,
    pub service_account: String,
    /// Its SPIFFE identity (a pod outside the mesh has none).
    pub identity: Option<String>,
    /// The certificate its node's proxy holds for that identity.
    pub certificate: Option<Certificate>,
    /// Its controller (Deployment, StatefulSet...), as telemetry names it.
    pub controller: Option<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub services: Vec<ServiceView>,
    /// Policies selecting it; none for a direction: not isolated.
    pub policies: Vec<PolicyView>,
    /// `--to`: the route and, for a pod destination, the policy verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<Explanation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// The endpoint the verdict is for (`namespace/name:port`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict_for: Option<String>,
    /// The revision of the configuration read.
    pub revision: u64,
}

fn protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

/// The pods of a peer group (every namespace's share).
fn group_members(state: &ProxyState, group: &str) -> Vec<String> {
    let mut pods: Vec<String> = state
        .iter()
        .filter(|r| r.key.kind == Kind::PeerGroup)
        .filter_map(|r| match &r.body {
            ResourceBody::PeerGroup(g) if g.group == group => Some(
                g.pods
                    .iter()
                    .map(|p| format!("{}/{p}", g.namespace))
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .flatten()
        .collect();
    pods.sort();
    pods
}

fn rule_view(state: &ProxyState, rule: &PolicyRule) -> RuleView {
    let mut peers = Vec::new();
    if rule.peers.is_empty() {
        peers.push("any peer".to_string());
    }
    for peer in &rule.peers {
        if let Some(group) = &peer.group {
            let members = group_members(state, group);
            if members.is_empty() {
                peers.push(format!("no pod (group {group} is empty)"));
            }
            peers.extend(members);
        }
        peers.extend(peer.workloads.iter().cloned());
        if let Some(block) = &peer.ip_block {
            if block.except.is_empty() {
                peers.push(block.cidr.clone());
            } else {
                peers.push(format!("{} except {}", block.cidr, block.except.join(", ")));
            }
        }
    }
    let ports = rule
        .ports
        .iter()
        .map(|p| {
            let port = match (&p.port, p.end_port) {
                (None, _) => "all".to_string(),
                (Some(TargetPort::Number(n)), Some(end)) => format!("{n}-{end}"),
                (Some(TargetPort::Number(n)), None) => n.to_string(),
                (Some(TargetPort::Name(name)), _) => name.clone(),
            };
            format!("{port}/{}", protocol(p.protocol))
        })
        .collect();
    RuleView { peers, ports }
}

fn policy_view(state: &ProxyState, policy: &Policy) -> PolicyView {
    let mut isolates = Vec::new();
    if policy.ingress {
        isolates.push("ingress");
    }
    if policy.egress {
        isolates.push("egress");
    }
    PolicyView {
        policy: policy.key_name(),
        isolates,
        ingress: policy
            .ingress_rules
            .iter()
            .map(|r| rule_view(state, r))
            .collect(),
        egress: policy
            .egress_rules
            .iter()
            .map(|r| rule_view(state, r))
            .collect(),
    }
}

/// Describes `key` from `state`; `certificate` from its node's proxy.
pub fn view(
    state: &ProxyState,
    workload: &Workload,
    trust_domain: &str,
    certificate: Option<Certificate>,
    to: Option<&str>,
) -> Result<PodView, String> {
    let key = workload.key.to_string();
    let mut services = Vec::new();
    for r in state.iter() {
        let ResourceBody::Service(s) = &r.body else {
            continue;
        };
        for e in s
            .endpoints
            .iter()
            .filter(|e| e.workload.as_deref() == Some(key.as_str()))
        {
            let ports = s
                .ports
                .iter()
                .zip(e.ports.iter())
                .filter_map(|(sp, target)| {
                    target.map(|t| format!("{}/{} -> {t}", sp.port, protocol(sp.protocol)))
                })
                .collect();
            services.push(ServiceView {
                service: s.key_name(),
                ports,
                ready: e.ready,
            });
        }
    }
    services.sort_by(|a, b| a.service.cmp(&b.service));
    let mut policies: Vec<PolicyView> = state
        .policies_selecting(&key)
        .filter_map(|compiled| state.policy(&compiled.key))
        .map(|p| policy_view(state, p))
        .collect();
    policies.sort_by(|a, b| a.policy.cmp(&b.policy));
    let (route, verdict) = match to {
        None => (None, None),
        Some(to) => {
            let route = ferry_core::route::explain(state, workload, to)?;
            // To pods: the verdict on the first endpoint (one policy
            // decides for every pod a selector picks alike).
            let verdict = route.endpoints.first().and_then(|e| {
                let destination = state.party_at(e.address);
                let pod = destination.key?.to_string();
                Some((
                    evaluate(
                        state,
                        &state.workload_party(&key)?,
                        &destination,
                        e.port,
                        Protocol::Tcp,
                    ),
                    format!("{pod}:{}", e.port),
                ))
            });
            (Some(route), verdict)
        }
    };
    let (verdict, verdict_for) = verdict.unzip();
    Ok(PodView {
        pod: key,
        node: workload.node.as_deref().map(str::to_string),
        addresses: workload.addresses.iter().map(ToString::to_string).collect(),
        ready: workload.ready,
        terminating: workload.terminating,
        mesh: workload.mesh,
        service_account: workload.service_account.to_string(),
        identity: workload.mesh.then(|| {
            ferry_api::identity::Identity::new(
                trust_domain,
                &workload.namespace,
                &workload.service_account,
            )
            .to_string()
        }),
        certificate,
        controller: workload.controller.as_deref().map(str::to_string),
        labels: workload
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        services,
        policies,
        route,
        verdict,
        verdict_for,
        revision: state.revision(),
    })
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The description for people.
pub fn table(view: &PodView, now: u64) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mut line = |label: &str, value: &str| {
        let _ = writeln!(out, "{label:<17}{value}");
    };
    line("Pod:", &view.pod);
    line("Node:", view.node.as_deref().unwrap_or("(not scheduled)"));
    line("Addresses:", &view.addresses.join(", "));
    line(
        "Ready:",
        &format!(
            "{}{}",
            yes(view.ready),
            if view.terminating {
                " (terminating)"
            } else {
                ""
            }
        ),
    );
    line(
        "Mesh:",
        if view.mesh {
            "enrolled (its traffic is carried over HBONE, mutual TLS)"
        } else {
            "not enrolled (plaintext; policed by the proxies as an outside peer)"
        },
    );
    line("Service account:", &view.service_account);
    line("Identity:", view.identity.as_deref().unwrap_or("none"));
    match &view.certificate {
        Some(c) => line(
            "Certificate:",
            &format!(
                "expires in {}, renewal in {} (held by its node's proxy)",
                ferryctl::live::status::human(c.not_after_unix.saturating_sub(now)),
                ferryctl::live::status::human(c.refresh_at_unix.saturating_sub(now)),
            ),
        ),
        None if view.mesh => line("Certificate:", "none held by its node's proxy"),
        None => {}
    }
    line("Controller:", view.controller.as_deref().unwrap_or("none"));
    line(
        "Labels:",
        &view
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    out.push_str("\nServices it backs:\n");
    if view.services.is_empty() {
        out.push_str("  none\n");
    }
    for s in &view.services {
        let _ = writeln!(
            out,
            "  {} ({}){}",
            s.service,
            if s.ports.is_empty() {
                "no port".to_string()
            } else {
                s.ports.join(", ")
            },
            if s.ready { "" } else { ", not ready" }
        );
    }
    out.push_str("\nPolicies selecting it:\n");
    for direction in ["ingress", "egress"] {
        if !view
            .policies
            .iter()
            .any(|p| p.isolates.contains(&direction))
        {
            let _ = writeln!(out, "  {direction}: not isolated (every peer allowed)");
        }
    }
    for p in &view.policies {
        let _ = writeln!(
            out,
            "  {} (isolates {})",
            p.policy,
            p.isolates.join(" and ")
        );
        for (direction, rules) in [("ingress", &p.ingress), ("egress", &p.egress)] {
            if !p.isolates.contains(&direction) {
                continue;
            }
            if rules.is_empty() {
                let _ = writeln!(out, "    {direction}: nothing admitted");
            }
            for (i, rule) in rules.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "    {direction} rule {i}: {} {} on {}",
                    if direction == "ingress" { "from" } else { "to" },
                    rule.peers.join(", "),
                    if rule.ports.is_empty() {
                        "every port".to_string()
                    } else {
                        rule.ports.join(", ")
                    }
                );
            }
        }
    }
    if let Some(route) = &view.route {
        out.push_str("\nOutbound connection:\n");
        for l in crate::route::table(route).lines() {
            let _ = writeln!(out, "{}", format!("  {l}").trim_end());
        }
    }
    if let Some(verdict) = &view.verdict {
        let half = |name: &str, v: &DirectionVerdict| match v {
            DirectionVerdict::NotIsolated => format!("{name}: allowed (not isolated)"),
            DirectionVerdict::Allowed { policy, rule } => {
                format!("{name}: allowed by {policy}, rule {rule}")
            }
            DirectionVerdict::Denied { policies } => {
                format!("{name}: denied (isolated by {})", policies.join(", "))
            }
        };
        let _ = writeln!(
            out,
            "  policy:        {} to {} ({}; {})",
            if verdict.allowed { "ALLOWED" } else { "DENIED" },
            view.verdict_for.as_deref().unwrap_or("?"),
            half("egress", &verdict.egress),
            half("ingress", &verdict.ingress)
        );
    }
    let _ = writeln!(out, "\n(configuration at revision {})", view.revision);
    out
}

/// Runs `ferryctl describe pod KEY`.
pub fn pod(target: &Target, key: &str, to: Option<&str>, output: Output) -> ExitCode {
    let run = || -> anyhow::Result<PodView> {
        let ferryctl::live::PodState {
            state,
            trust_domain,
            certificate,
        } = ferryctl::live::pod_state(target, key)?;
        let workload = state
            .workload(key)
            .ok_or_else(|| anyhow::anyhow!("no pod {key} in the mesh's configuration"))?;
        let certificate = certificate.map(|(not_after_unix, refresh_at_unix)| Certificate {
            not_after_unix,
            refresh_at_unix,
        });
        view(&state, workload, &trust_domain, certificate, to)
            .map_err(|e| anyhow::anyhow!("--to {}: {e}", to.unwrap_or_default()))
    };
    let view = match run() {
        Ok(view) => view,
        Err(e) => {
            eprintln!("ferryctl describe: {e:#}");
            return ExitCode::from(2);
        }
    };
    if print(&view, output, |v| table(v, now_unix()), "describe") {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn examples() -> std::sync::Arc<ProxyState> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
        ferryctl::mesh::proxy_state(&dir).expect("the example manifests")
    }

    #[test]
    fn a_pod_with_its_services_policies_and_a_route() {
        let state = examples();
        let backend = state.workload("shop/backend-1").expect("backend-1");
        let shown = view(&state, backend, "cluster.local", None, None).expect("view");
        assert_eq!(
            shown.identity.as_deref(),
            Some("spiffe://cluster.local/ns/shop/sa/backend")
        );
        let services: Vec<&str> = shown.services.iter().map(|s| s.service.as_str()).collect();
        assert!(services.contains(&"shop/backend"), "{services:?}");
        assert_eq!(shown.policies.len(), 1);
        let policy = &shown.policies[0];
        assert_eq!(policy.policy, "shop/backend-from-frontend");
        assert_eq!(policy.isolates, ["ingress"]);
        assert_eq!(policy.ingress[0].peers, ["shop/frontend"]);
        assert_eq!(policy.ingress[0].ports, ["api/TCP"]);
        let text = table(&shown, 0);
        assert!(text.contains("egress: not isolated"), "{text}");
        assert!(
            text.contains("ingress rule 0: from shop/frontend on api/TCP"),
            "{text}"
        );

        // From db-0 to the backend service: routed, and denied by policy.
        let db = state.workload("shop/db-0").expect("db-0");
        let shown = view(&state, db, "cluster.local", None, Some("backend.shop:80")).expect("view");
        assert_eq!(
            shown.route.as_ref().and_then(|r| r.service.as_deref()),
            Some("shop/backend")
        );
        assert!(shown.verdict.as_ref().is_some_and(|v| !v.allowed));
        assert!(shown
            .verdict_for
            .as_deref()
            .is_some_and(|v| v.starts_with("shop/backend-")));
        // A pod outside the mesh has no identity.
        let client = state.workload("default/client").expect("client");
        let shown = view(&state, client, "cluster.local", None, None).expect("view");
        assert!(shown.identity.is_none());
        assert!(table(&shown, 0).contains("not enrolled"));
    }
}
