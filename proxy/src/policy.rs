//! NetworkPolicy evaluation and enforcement state, shared with `ferryctl
//! policy`.
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
//! [`ConnectionTracker`] keeps the open connections so that a policy change
//! closes those it no longer allows.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use ferry_api::cidr::Cidr;
use ferry_api::model::{Policy, PolicyPort, Protocol, TargetPort, Workload};
use serde::Serialize;
use tokio::sync::Notify;

use crate::state::{ConfigStore, ProxyState};

/// One peer of a rule, ready for lookups.
#[derive(Debug, Clone)]
struct CompiledPeer {
    workloads: HashSet<String>,
    block: Option<(Cidr, Vec<Cidr>)>,
}

impl CompiledPeer {
    fn matches(&self, other: &Party<'_>) -> bool {
        if let Some(key) = other.key {
            if self.workloads.contains(key) {
                return true;
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

/// One end of a connection: an address, and the workload behind it if any
/// (with its key, `namespace/name`, borrowed from the config so that
/// evaluation allocates nothing).
#[derive(Debug, Clone, Copy)]
pub struct Party<'a> {
    pub workload: Option<&'a Workload>,
    pub key: Option<&'a str>,
    pub ip: IpAddr,
}

impl<'a> Party<'a> {
    /// The party at `ip`, with its workload if the config knows one.
    pub fn at(state: &'a ProxyState, ip: IpAddr) -> Self {
        match state.workload_entry_by_ip(&ip) {
            Some((key, w)) => Self {
                workload: Some(w),
                key: Some(key),
                ip,
            },
            None => Self {
                workload: None,
                key: None,
                ip,
            },
        }
    }

    /// A workload by key, at its first address (unspecified when it has none).
    pub fn workload(state: &'a ProxyState, key: &str) -> Option<Self> {
        let (key, w) = state.workload_entry(key)?;
        Some(Self {
            workload: Some(w),
            key: Some(key),
            ip: w
                .addresses
                .first()
                .copied()
                .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
        })
    }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

impl CompiledRule {
    fn matches(
        &self,
        other: &Party<'_>,
        port: u16,
        protocol: Protocol,
        destination: Option<&Workload>,
    ) -> bool {
        let peer_ok = self
            .peers
            .as_ref()
            .is_none_or(|peers| peers.iter().any(|p| p.matches(other)));
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
    state: &ProxyState,
    subject: &str,
    other: &Party<'_>,
    port: u16,
    protocol: Protocol,
    destination: Option<&Workload>,
    direction: Direction,
) -> bool {
    let mut isolated = false;
    for policy in state.policies_selecting(subject) {
        let Some(rules) = policy.rules(direction) else {
            continue;
        };
        isolated = true;
        if rules
            .iter()
            .any(|r| r.matches(other, port, protocol, destination))
        {
            return true;
        }
    }
    !isolated
}

/// Whether NetworkPolicy allows a connection, both directions; allocates nothing.
pub fn allowed(
    state: &ProxyState,
    source: &Party<'_>,
    destination: &Party<'_>,
    port: u16,
    protocol: Protocol,
) -> bool {
    let egress_ok = source.key.is_none_or(|key| {
        allows(
            state,
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
                state,
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
    state: &ProxyState,
    subject: &str,
    other: &Party<'_>,
    port: u16,
    protocol: Protocol,
    destination: Option<&Workload>,
    direction: Direction,
) -> DirectionVerdict {
    let mut isolating = Vec::new();
    for policy in state.policies_selecting(subject) {
        let Some(rules) = policy.rules(direction) else {
            continue;
        };
        if let Some(index) = rules
            .iter()
            .position(|r| r.matches(other, port, protocol, destination))
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
    state: &ProxyState,
    source: &Party<'_>,
    destination: &Party<'_>,
    port: u16,
    protocol: Protocol,
) -> DirectionVerdict {
    match source.key {
        Some(key) => judge(
            state,
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
    state: &ProxyState,
    source: &Party<'_>,
    destination: &Party<'_>,
    port: u16,
    protocol: Protocol,
) -> DirectionVerdict {
    match destination.key {
        Some(key) => judge(
            state,
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
    state: &ProxyState,
    source: &Party<'_>,
    destination: &Party<'_>,
    port: u16,
    protocol: Protocol,
) -> Verdict {
    let egress = egress(state, source, destination, port, protocol);
    let ingress = ingress(state, source, destination, port, protocol);
    Verdict {
        allowed: egress.allows() && ingress.allows(),
        egress,
        ingress,
    }
}

/// Which halves a proxy enforces for one of its connections.
#[derive(Debug, Clone)]
pub struct Check {
    pub source: IpAddr,
    pub destination: IpAddr,
    pub port: u16,
    pub egress: bool,
    pub ingress: bool,
}

impl Check {
    /// Whether the connection is allowed by the halves this proxy enforces.
    pub fn allowed(&self, state: &ProxyState) -> Result<(), String> {
        let source = Party::at(state, self.source);
        let destination = Party::at(state, self.destination);
        let fast = |direction| match direction {
            Direction::Egress => source.key.is_none_or(|key| {
                allows(
                    state,
                    key,
                    &destination,
                    self.port,
                    Protocol::Tcp,
                    destination.workload,
                    direction,
                )
            }),
            Direction::Ingress => destination.key.is_none_or(|key| {
                allows(
                    state,
                    key,
                    &source,
                    self.port,
                    Protocol::Tcp,
                    destination.workload,
                    direction,
                )
            }),
        };
        // Only a denial pays for the detailed verdict (it names the policies).
        if self.egress && !fast(Direction::Egress) {
            if let DirectionVerdict::Denied { policies } =
                egress(state, &source, &destination, self.port, Protocol::Tcp)
            {
                return Err(format!("egress denied by {}", policies.join(", ")));
            }
        }
        if self.ingress && !fast(Direction::Ingress) {
            if let DirectionVerdict::Denied { policies } =
                ingress(state, &source, &destination, self.port, Protocol::Tcp)
            {
                return Err(format!("ingress denied by {}", policies.join(", ")));
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Tracked {
    check: Check,
    closed: Arc<Notify>,
}

/// Open connections, re-checked whenever the config changes.
#[derive(Debug, Default)]
pub struct ConnectionTracker {
    next: AtomicU64,
    open: DashMap<u64, Tracked>,
    /// Connections refused or closed by policy.
    pub denied: AtomicU64,
    pub closed_by_update: AtomicU64,
}

/// Keeps a connection tracked until dropped.
#[derive(Debug)]
pub struct TrackedConnection {
    id: u64,
    tracker: Arc<ConnectionTracker>,
    closed: Arc<Notify>,
}

impl TrackedConnection {
    /// Resolves when a policy update no longer allows the connection.
    pub async fn revoked(&self) {
        self.closed.notified().await;
    }
}

impl Drop for TrackedConnection {
    fn drop(&mut self) {
        self.tracker.open.remove(&self.id);
    }
}

impl ConnectionTracker {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn track(self: &Arc<Self>, check: Check) -> TrackedConnection {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let closed = Arc::new(Notify::new());
        self.open.insert(
            id,
            Tracked {
                check,
                closed: closed.clone(),
            },
        );
        TrackedConnection {
            id,
            tracker: self.clone(),
            closed,
        }
    }

    pub fn open_connections(&self) -> usize {
        self.open.len()
    }

    /// Closes the tracked connections `state` no longer allows; returns how many.
    pub fn recheck(&self, state: &ProxyState) -> usize {
        let mut closed = 0;
        for entry in self.open.iter() {
            if let Err(reason) = entry.check.allowed(state) {
                tracing::info!(source = %entry.check.source, destination = %entry.check.destination, port = entry.check.port, %reason, "closing a connection the updated policy no longer allows");
                entry.closed.notify_one();
                closed += 1;
            }
        }
        self.closed_by_update
            .fetch_add(closed as u64, Ordering::Relaxed);
        closed
    }

    /// Re-checks open connections after every config change, until dropped.
    pub async fn run(self: Arc<Self>, store: Arc<ConfigStore>) {
        let mut changes = store.subscribe();
        while changes.changed().await.is_ok() {
            self.recheck(&store.snapshot());
        }
    }
}
