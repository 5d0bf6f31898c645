//! NetworkPolicy evaluation: a leaf that knows policies and the two ends
//! of a connection, and nothing of where they are stored.
//!
//! The control plane sends policies with selectors already resolved to
//! workload sets; [`CompiledPolicy`] turns each into hash sets and parsed
//! CIDRs once, when the config arrives, so evaluating a connection is a few
//! hash lookups per rule. The semantics are those of networking.k8s.io/v1:
//!
//! - a pod is isolated for ingress (egress) when at least one policy of
//!   that type selects it; a connection is allowed when the source's egress
//!   and the destination's ingress both allow it;
//! - a direction allows a connection when any rule of any policy selecting
//!   the pod matches it: a rule matches when one of its peers matches (no
//!   peers: every peer) and one of its ports matches (no ports: every port);
//! - a peer matches a workload in its set, or an address inside its ipBlock
//!   and outside every `except`;
//! - a named port is resolved against the destination pod's container ports.
//!
//! The evaluator is generic over [`PolicyIndex`] (the policies selecting a
//! workload); [`crate::state::ProxyState`] implements it and builds the
//! [`Party`]s, so this module imports no state. The proxy's enforcement
//! (`ferry_proxy::tracker`, the outbound and inbound paths) and `ferryctl policy` both call it.

use ferry_api::cidr::Cidr;
use ferry_api::model::{Policy, PolicyPort, Protocol, TargetPort, Workload};
use serde::Serialize;
use std::collections::HashSet;
use std::net::IpAddr;

/// One peer of a rule, ready for lookups.
#[derive(Debug, Clone)]
struct CompiledPeer {
    /// Workloads listed inline in the policy.
    workloads: HashSet<String>,
    /// The peer group whose members match, looked up in the index.
    group: Option<String>,
    block: Option<(Cidr, Vec<Cidr>)>,
}

impl CompiledPeer {
    fn matches(&self, index: &impl PolicyIndex, other: &Party<'_>) -> bool {
        if let Some(key) = other.key {
            if self.workloads.contains(key) {
                return true;
            }
            if let Some(group) = &self.group {
                if index.in_peer_group(group, key) {
                    return true;
                }
            }
        }
        match &self.block {
            Some((cidr, except)) => {
                cidr.contains(other.ip) && !except.iter().any(|e| e.contains(other.ip))
            }
            None => false,
        }
    }
}

/// One rule, ready for evaluation.
#[derive(Debug, Clone)]
struct CompiledRule {
    /// `None`: every peer.
    peers: Option<Vec<CompiledPeer>>,
    /// Empty: every port.
    ports: Vec<PolicyPort>,
}

/// A policy ready for evaluation.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    pub key: String,
    pub ingress: bool,
    pub egress: bool,
    ingress_rules: Vec<CompiledRule>,
    egress_rules: Vec<CompiledRule>,
}

fn compile_rules(rules: &[ferry_api::model::PolicyRule]) -> Vec<CompiledRule> {
    rules
        .iter()
        .map(|r| CompiledRule {
            peers: (!r.peers.is_empty()).then(|| {
                r.peers
                    .iter()
                    .map(|p| CompiledPeer {
                        workloads: p.workloads.iter().cloned().collect(),
                        group: p.group.clone(),
                        block: p.ip_block.as_ref().and_then(|b| {
                            let cidr = Cidr::parse(&b.cidr).ok()?;
                            let except = b
                                .except
                                .iter()
                                .filter_map(|e| Cidr::parse(e).ok())
                                .collect();
                            Some((cidr, except))
                        }),
                    })
                    .collect()
            }),
            ports: r.ports.clone(),
        })
        .collect()
}

impl CompiledPolicy {
    pub fn compile(policy: &Policy) -> Self {
        Self {
            key: policy.key_name(),
            ingress: policy.ingress,
            egress: policy.egress,
            ingress_rules: compile_rules(&policy.ingress_rules),
            egress_rules: compile_rules(&policy.egress_rules),
        }
    }
}

/// The policies that select a workload (by `namespace/name`), in the order
/// they should be reported, and the members of peer groups.
pub trait PolicyIndex {
    fn policies_selecting<'a>(
        &'a self,
        workload: &'a str,
    ) -> impl Iterator<Item = &'a CompiledPolicy> + 'a;

    /// Whether `workload` (`namespace/name`) is a member of peer group
    /// `group`. A group the index does not hold has no members: a peer
    /// naming it admits nobody (fails closed).
    fn in_peer_group(&self, group: &str, workload: &str) -> bool;
}

/// One end of a connection: an address, and the workload behind it if any
/// (with its key, `namespace/name`, borrowed from the config so that
/// evaluation allocates nothing).
#[derive(Debug, Clone, Copy)]
pub struct Party<'a> {
    pub workload: Option<&'a Workload>,
    pub key: Option<&'a str>,
    pub ip: IpAddr,
}

fn port_matches(
    p: &PolicyPort,
    port: u16,
    protocol: Protocol,
    destination: Option<&Workload>,
) -> bool {
    if p.protocol != protocol {
        return false;
    }
    match &p.port {
        None => true,
        Some(TargetPort::Number(n)) => match p.end_port {
            Some(end) => (*n..=end).contains(&port),
            None => *n == port,
        },
        Some(TargetPort::Name(name)) => {
            destination.and_then(|w| w.named_port(name, protocol)) == Some(port)
        }
    }
}

/// How one direction judged a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum DirectionVerdict {
    /// No policy of this type selects the pod (or there is no pod).
    NotIsolated,
    /// Allowed by this rule (index in the policy's rules of that direction).
    Allowed { policy: String, rule: usize },
    /// The pod is isolated and no rule of these policies allows it.
    Denied { policies: Vec<String> },
}

impl DirectionVerdict {
    pub fn allows(&self) -> bool {
        !matches!(self, DirectionVerdict::Denied { .. })
    }
}

/// Which half of a connection a policy type governs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

impl CompiledRule {
    fn matches(
        &self,
        index: &impl PolicyIndex,
        other: &Party<'_>,
        port: u16,
        protocol: Protocol,
        destination: Option<&Workload>,
    ) -> bool {
        let peer_ok = self
            .peers
            .as_ref()
            .is_none_or(|peers| peers.iter().any(|p| p.matches(index, other)));
        peer_ok
            && (self.ports.is_empty()
                || self
                    .ports
                    .iter()
                    .any(|p| port_matches(p, port, protocol, destination)))
    }
}

impl CompiledPolicy {
    fn rules(&self, direction: Direction) -> Option<&[CompiledRule]> {
        match direction {
            Direction::Ingress => self.ingress.then_some(&self.ingress_rules[..]),
            Direction::Egress => self.egress.then_some(&self.egress_rules[..]),
        }
    }
}

/// The hot path: whether `subject` may have this connection in `direction`.
/// Allocates nothing.
fn allows(
    index: &impl PolicyIndex,
    subject: &str,
    other: &Party<'_>,
    port: u16,
    protocol: Protocol,
    destination: Option<&Workload>,
    direction: Direction,
) -> bool {
    let mut isolated = false;
    for policy in index.policies_selecting(subject) {
        let Some(rules) = policy.rules(direction) else {
            continue;
        };
        isolated = true;
        if rules
            .iter()
            .any(|r| r.matches(index, other, port, protocol, destination))
        {
            return true;
        }
    }
    !isolated
}

/// Whether NetworkPolicy allows a connection, both directions; allocates nothing.
pub fn allowed(
    index: &impl PolicyIndex,
    source: &Party<'_>,
    destination: &Party<'_>,
    port: u16,
    protocol: Protocol,
) -> bool {
    let egress_ok = source.key.is_none_or(|key| {
        allows(
            index,
            key,
            destination,
            port,
            protocol,
            destination.workload,
            Direction::Egress,
        )
    });
    egress_ok
        && destination.key.is_none_or(|key| {
            allows(
                index,
                key,
                source,
                port,
                protocol,
                destination.workload,
                Direction::Ingress,
            )
        })
}

/// The detailed verdict of one direction (for explanations and messages).
fn judge(
    index: &impl PolicyIndex,
    subject: &str,
    other: &Party<'_>,
    port: u16,
    protocol: Protocol,
    destination: Option<&Workload>,
    direction: Direction,
) -> DirectionVerdict {
    let mut isolating = Vec::new();
    for policy in index.policies_selecting(subject) {
        let Some(rules) = policy.rules(direction) else {
            continue;
        };
        if let Some(index) = rules
            .iter()
            .position(|r| r.matches(index, other, port, protocol, destination))
        {
            return DirectionVerdict::Allowed {
                policy: policy.key.clone(),
                rule: index,
            };
        }
        isolating.push(policy.key.clone());
    }
    if isolating.is_empty() {
        DirectionVerdict::NotIsolated
    } else {
        isolating.sort();
        DirectionVerdict::Denied {
            policies: isolating,
        }
    }
}

/// The source's egress verdict.
pub fn egress(
    index: &impl PolicyIndex,
    source: &Party<'_>,
    destination: &Party<'_>,
    port: u16,
    protocol: Protocol,
) -> DirectionVerdict {
    match source.key {
        Some(key) => judge(
            index,
            key,
            destination,
            port,
            protocol,
            destination.workload,
            Direction::Egress,
        ),
        None => DirectionVerdict::NotIsolated,
    }
}

/// The destination's ingress verdict.
pub fn ingress(
    index: &impl PolicyIndex,
    source: &Party<'_>,
    destination: &Party<'_>,
    port: u16,
    protocol: Protocol,
) -> DirectionVerdict {
    match destination.key {
        Some(key) => judge(
            index,
            key,
            source,
            port,
            protocol,
            destination.workload,
            Direction::Ingress,
        ),
        None => DirectionVerdict::NotIsolated,
    }
}

/// Both halves of a connection's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub allowed: bool,
    pub egress: DirectionVerdict,
    pub ingress: DirectionVerdict,
}

/// Evaluates a connection as the whole mesh would (egress at the source,
/// ingress at the destination).
pub fn evaluate(
    index: &impl PolicyIndex,
    source: &Party<'_>,
    destination: &Party<'_>,
    port: u16,
    protocol: Protocol,
) -> Verdict {
    let egress = egress(index, source, destination, port, protocol);
    let ingress = ingress(index, source, destination, port, protocol);
    Verdict {
        allowed: egress.allows() && ingress.allows(),
        egress,
        ingress,
    }
}

/// The halves of one connection a proxy enforces: egress on the source's
/// node, ingress on the destination's (both when they are the same node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    pub source: IpAddr,
    pub destination: IpAddr,
    pub port: u16,
    pub egress: bool,
    pub ingress: bool,
    /// The revision of the configuration the connection was admitted on
    /// ([`crate::state::ProxyState::revision`]): one tracked after a newer
    /// configuration arrived is judged again against it.
    pub decided_at: u64,
}

/// A connection NetworkPolicy does not allow: the direction that refused it
/// and the policies isolating that end (sorted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{direction} denied by {}", policies.join(", "))]
pub struct Denied {
    pub direction: Direction,
    pub policies: Vec<String>,
}

impl Check {
    /// Whether the halves this check enforces allow the connection between
    /// `source` and `destination` (the parties at its two addresses). Only
    /// a denial pays for the detailed verdict (it names the policies).
    pub fn judge(
        &self,
        index: &impl PolicyIndex,
        source: &Party<'_>,
        destination: &Party<'_>,
    ) -> Result<(), Denied> {
        let halves = [
            (self.egress, Direction::Egress, source, destination),
            (self.ingress, Direction::Ingress, destination, source),
        ];
        for (enforced, direction, subject, other) in halves {
            let Some(key) = subject.key.filter(|_| enforced) else {
                continue;
            };
            let (port, protocol) = (self.port, Protocol::Tcp);
            if allows(
                index,
                key,
                other,
                port,
                protocol,
                destination.workload,
                direction,
            ) {
                continue;
            }
            if let DirectionVerdict::Denied { policies } = judge(
                index,
                key,
                other,
                port,
                protocol,
                destination.workload,
                direction,
            ) {
                return Err(Denied {
                    direction,
                    policies,
                });
            }
        }
        Ok(())
    }
}
