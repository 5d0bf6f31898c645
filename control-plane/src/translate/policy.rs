//! NetworkPolicy compilation: selectors resolved to workload sets.
//!
//! A compiled policy keeps, for its own pod selector and for every peer of
//! every rule, the set of workloads ("namespace/name") it matches. Sets are
//! patched, not recomputed, when a pod or a namespace changes: a pod change
//! re-checks that one pod against the slots of the policies that could
//! match it (those of its namespace, and those with a namespaceSelector
//! peer); a namespace label change re-checks that namespace's pods against
//! namespaceSelector peers. Only a policy's own change compiles it from
//! scratch.
//!
//! Semantics follow networking.k8s.io/v1: policyTypes inferred when absent
//! (Ingress always, Egress when an egress section exists); an empty
//! podSelector selects every pod of the namespace; a peer with both
//! podSelector and namespaceSelector matches pods satisfying both; separate
//! peers are alternatives; an empty or absent `from`/`to`/`ports` means all;
//! ports may be named (resolved by the proxy against the destination pod)
//! and carry an endPort range.

use std::collections::{BTreeMap, HashSet};

use ferry_api::model::{self, IpBlock, PolicyPeer, PolicyPort, PolicyRule, Protocol, TargetPort};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The label every namespace carries implicitly (Kubernetes 1.21+).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Whether a label selector matches `labels`. An empty selector matches everything.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    labels_ok
        && selector.match_expressions.iter().flatten().all(|e| {
            let value = labels.get(&e.key);
            let values = e.values.as_deref().unwrap_or_default();
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                // Refused by validation; match nothing if one slips through.
                _ => false,
            }
        })
}

/// Namespace labels including the implicit name label.
pub fn namespace_labels(
    name: &str,
    labels: Option<&BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    let mut all = labels.cloned().unwrap_or_default();
    all.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
    all
}

/// One selector slot: the policy's own pod selector or one peer.
#[derive(Debug, Clone, PartialEq)]
pub enum Slot {
    /// Pods of the policy's namespace matching the selector.
    Pods(LabelSelector),
    /// Pods matching `pods` (all when `None`) in namespaces matching `namespaces`.
    Namespaces {
        namespaces: LabelSelector,
        pods: Option<LabelSelector>,
    },
    /// An ipBlock peer: no workload set.
    Block(IpBlock),
}

impl Slot {
    fn from_peer(peer: &NetworkPolicyPeer) -> Self {
        if let Some(block) = &peer.ip_block {
            return Slot::Block(IpBlock {
                cidr: block.cidr.clone(),
                except: block.except.clone().unwrap_or_default(),
            });
        }
        match (&peer.namespace_selector, &peer.pod_selector) {
            (Some(ns), pods) => Slot::Namespaces {
                namespaces: ns.clone(),
                pods: pods.clone(),
            },
            (None, Some(pods)) => Slot::Pods(pods.clone()),
            // Refused by validation.
            (None, None) => Slot::Pods(LabelSelector {
                match_expressions: Some(vec![]),
                match_labels: Some(BTreeMap::from([(String::new(), String::new())])),
            }),
        }
    }

    /// Whether a pod (its namespace, labels and its namespace's labels) is in this slot
    /// of a policy living in `policy_namespace`.
    pub fn matches(
        &self,
        policy_namespace: &str,
        pod_namespace: &str,
        pod_labels: &BTreeMap<String, String>,
        namespace_labels: &BTreeMap<String, String>,
    ) -> bool {
        match self {
            Slot::Pods(sel) => {
                pod_namespace == policy_namespace && selector_matches(sel, pod_labels)
            }
            Slot::Namespaces { namespaces, pods } => {
                selector_matches(namespaces, namespace_labels)
                    && pods
                        .as_ref()
                        .is_none_or(|p| selector_matches(p, pod_labels))
            }
            Slot::Block(_) => false,
        }
    }

    pub fn spans_namespaces(&self) -> bool {
        matches!(self, Slot::Namespaces { .. })
    }
}

/// A rule with its peer slots and ports.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    /// `None`: every peer (empty or absent `from`/`to`).
    pub peers: Option<Vec<(Slot, HashSet<String>)>>,
    pub ports: Vec<PolicyPort>,
}

/// A policy with every selector resolved.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    pub namespace: String,
    pub name: String,
    pub select: Slot,
    pub selected: HashSet<String>,
    pub ingress: bool,
    pub egress: bool,
    pub ingress_rules: Vec<CompiledRule>,
    pub egress_rules: Vec<CompiledRule>,
}

fn ports(list: Option<&Vec<NetworkPolicyPort>>) -> Vec<PolicyPort> {
    list.into_iter()
        .flatten()
        .map(|p| PolicyPort {
            protocol: p
                .protocol
                .as_deref()
                .and_then(Protocol::from_k8s)
                .unwrap_or_default(),
            port: p.port.as_ref().and_then(|v| match v {
                IntOrString::Int(n) => u16::try_from(*n).ok().map(TargetPort::Number),
                IntOrString::String(s) => match s.parse::<u16>() {
                    Ok(n) => Some(TargetPort::Number(n)),
                    Err(_) => Some(TargetPort::Name(s.clone())),
                },
            }),
            end_port: p.end_port.and_then(|e| u16::try_from(e).ok()),
        })
        .collect()
}

fn rule(
    peers: Option<&Vec<NetworkPolicyPeer>>,
    port_list: Option<&Vec<NetworkPolicyPort>>,
) -> CompiledRule {
    let peers = peers.filter(|p| !p.is_empty()).map(|p| {
        p.iter()
            .map(|peer| (Slot::from_peer(peer), HashSet::new()))
            .collect()
    });
    CompiledRule {
        peers,
        ports: ports(port_list),
    }
}

/// A set's members in order: the published form (and so its version) is deterministic.
fn sorted(set: &HashSet<String>) -> Vec<String> {
    let mut members: Vec<String> = set.iter().cloned().collect();
    members.sort_unstable();
    members
}

/// A pod as policy compilation sees it.
#[derive(Debug, Clone, Copy)]
pub struct PodView<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub namespace_labels: &'a BTreeMap<String, String>,
}

impl PodView<'_> {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl CompiledPolicy {
    /// Compiles a policy against every pod.
    pub fn compile<'a>(policy: &NetworkPolicy, pods: impl Iterator<Item = PodView<'a>>) -> Self {
        let namespace = policy
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = policy.metadata.name.clone().unwrap_or_default();
        let spec = policy.spec.clone().unwrap_or_default();
        // Empty or missing: the API server's default (see
        // `source::defaults`), for objects that did not pass through it.
        let (ingress, egress) = match spec.policy_types.as_deref().filter(|t| !t.is_empty()) {
            Some(t) => (
                t.iter().any(|t| t == "Ingress"),
                t.iter().any(|t| t == "Egress"),
            ),
            None => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
        };
        let mut compiled = Self {
            select: Slot::Pods(spec.pod_selector.clone().unwrap_or_default()),
            selected: HashSet::new(),
            ingress,
            egress,
            ingress_rules: spec
                .ingress
                .iter()
                .flatten()
                .map(|r| rule(r.from.as_ref(), r.ports.as_ref()))
                .collect(),
            egress_rules: spec
                .egress
                .iter()
                .flatten()
                .map(|r| rule(r.to.as_ref(), r.ports.as_ref()))
                .collect(),
            namespace,
            name,
        };
        for pod in pods {
            compiled.update_pod(&pod.key(), Some(pod));
        }
        compiled
    }

    /// Whether any slot can match pods outside the policy's namespace.
    pub fn spans_namespaces(&self) -> bool {
        self.ingress_rules
            .iter()
            .chain(&self.egress_rules)
            .flat_map(|r| r.peers.iter().flatten())
            .any(|(slot, _)| slot.spans_namespaces())
    }

    /// Re-checks one pod (`None`: it is gone) against every slot; returns
    /// whether any set changed.
    pub fn update_pod(&mut self, key: &str, pod: Option<PodView<'_>>) -> bool {
        let Self {
            namespace,
            select,
            selected,
            ingress_rules,
            egress_rules,
            ..
        } = self;
        let check = |slot: &Slot, set: &mut HashSet<String>| -> bool {
            let now = pod.is_some_and(|p| {
                slot.matches(namespace, p.namespace, p.labels, p.namespace_labels)
            });
            match (now, set.contains(key)) {
                (true, false) => set.insert(key.to_string()),
                (false, true) => set.remove(key),
                _ => false,
            }
        };
        let mut changed = check(select, selected);
        for rule in ingress_rules.iter_mut().chain(egress_rules.iter_mut()) {
            for (slot, set) in rule.peers.iter_mut().flatten() {
                changed |= check(slot, set);
            }
        }
        changed
    }

    /// The model resource.
    pub fn to_model(&self) -> model::Policy {
        let rules = |rules: &[CompiledRule]| -> Vec<PolicyRule> {
            rules
                .iter()
                .map(|r| PolicyRule {
                    peers: r
                        .peers
                        .iter()
                        .flatten()
                        .map(|(slot, set)| PolicyPeer {
                            workloads: sorted(set),
                            ip_block: match slot {
                                Slot::Block(b) => Some(b.clone()),
                                _ => None,
                            },
                        })
                        .collect(),
                    ports: r.ports.clone(),
                })
                .collect()
        };
        model::Policy {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            selected: sorted(&self.selected),
            ingress: self.ingress,
            egress: self.egress,
            ingress_rules: rules(&self.ingress_rules),
            egress_rules: rules(&self.egress_rules),
        }
    }
}
