//! NetworkPolicy compilation: selectors resolved to workload sets.
//!
//! A compiled policy keeps the set of workloads ("namespace/name") its own
//! pod selector selects, and refers to each peer (a pod selector and a
//! namespace selector) by the id of its group: the group is derived from
//! the selectors alone ([`GroupSpec`]), so every policy writing the same
//! peer shares one, resolved once and published once
//! ([`super::groups`]). The selected set is patched, not recomputed, when
//! a pod of the policy's namespace changes; only a policy's own change
//! compiles it from scratch.
//!
//! Semantics follow networking.k8s.io/v1: policyTypes inferred when absent
//! (Ingress always, Egress when an egress section exists); an empty
//! podSelector selects every pod of the namespace; a peer with both
//! podSelector and namespaceSelector matches pods satisfying both; separate
//! peers are alternatives; an empty or absent `from`/`to`/`ports` means all;
//! ports may be named (resolved by the proxy against the destination pod)
//! and carry an endPort range.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use ferry_api::model::{
    self, IpBlock, LabelLookup, Labels, PolicyPeer, PolicyPort, PolicyRule, Protocol, TargetPort,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The label every namespace carries implicitly (Kubernetes 1.21+).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Whether a label selector matches `labels`. An empty selector matches everything.
pub fn selector_matches(selector: &LabelSelector, labels: &impl LabelLookup) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.label(k) == Some(v.as_str()));
    labels_ok
        && selector.match_expressions.iter().flatten().all(|e| {
            let value = labels.label(&e.key);
            let values = e.values.as_deref().unwrap_or_default();
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
                "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
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
}

impl Slot {
    /// The selectors of a peer; `None` for an ipBlock.
    fn from_peer(peer: &NetworkPolicyPeer) -> Option<Self> {
        if peer.ip_block.is_some() {
            return None;
        }
        Some(match (&peer.namespace_selector, &peer.pod_selector) {
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
        })
    }

    /// Whether a pod (its namespace, labels and its namespace's labels) is in this slot
    /// of a policy living in `policy_namespace`.
    pub fn matches(
        &self,
        policy_namespace: &str,
        pod_namespace: &str,
        pod_labels: &Labels,
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
        }
    }

    pub fn spans_namespaces(&self) -> bool {
        matches!(self, Slot::Namespaces { .. })
    }
}

/// A peer of a compiled rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Peer {
    /// The members of a peer group (by id; see [`super::groups`]).
    Group(String),
    /// An ipBlock.
    Block(IpBlock),
}

/// A rule with its peers and ports.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    /// `None`: every peer (empty or absent `from`/`to`).
    pub peers: Option<Vec<Peer>>,
    pub ports: Vec<PolicyPort>,
}

/// A policy with its own selector resolved; its peers refer to groups.
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
    /// The nodes of the selected pods, where the policy is enforced: as
    /// last published (empty until then).
    pub nodes: BTreeSet<String>,
}

/// A peer selector as a group: its id and what it selects.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSpec {
    pub id: String,
    /// The namespace of the policy that wrote it: a pod-selector-only peer
    /// selects pods of that namespace.
    pub home: String,
    pub slot: Slot,
    /// Canonical text of the selectors (for people; hashed into `id`).
    pub text: String,
}

impl GroupSpec {
    /// The group of a peer slot.
    fn of(slot: Slot, home: &str) -> Self {
        let text = match &slot {
            Slot::Pods(pods) => format!("pods {{{}}} in namespace {home}", selector_text(pods)),
            Slot::Namespaces { namespaces, pods } => format!(
                "pods {{{}}} in namespaces {{{}}}",
                pods.as_ref().map(selector_text).unwrap_or_default(),
                selector_text(namespaces)
            ),
        };
        Self {
            id: format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes())),
            home: home.to_string(),
            slot,
            text,
        }
    }

    /// Whether the group admits pods of other namespaces than its home.
    pub fn spans_namespaces(&self) -> bool {
        self.slot.spans_namespaces()
    }

    pub fn matches(&self, pod: &PodView<'_>) -> bool {
        self.slot
            .matches(&self.home, pod.namespace, pod.labels, pod.namespace_labels)
    }
}

/// A label selector as canonical text, in the syntax of `kubectl -l`:
/// terms sorted, values of set terms sorted, a one-value `In` written as
/// `k=v`, so that equal selectors read the same (and name the same group)
/// whatever way they were written.
pub fn selector_text(selector: &LabelSelector) -> String {
    let mut terms: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in selector.match_expressions.iter().flatten() {
        let mut values: Vec<&str> = e.values.iter().flatten().map(String::as_str).collect();
        values.sort_unstable();
        values.dedup();
        let values = values.join(",");
        terms.push(match e.operator.as_str() {
            // `k in (v)` is `k=v`: written either way, one group.
            "In" if !values.contains(',') && !values.is_empty() => {
                format!("{}={values}", e.key)
            }
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            other => format!("{} {other} ({values})", e.key),
        });
    }
    terms.sort_unstable();
    terms.dedup();
    terms.join(",")
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
    home: &str,
    groups: &mut Vec<GroupSpec>,
) -> CompiledRule {
    let peers = peers.filter(|p| !p.is_empty()).map(|p| {
        p.iter()
            .map(|peer| match (Slot::from_peer(peer), &peer.ip_block) {
                (Some(slot), _) => {
                    let spec = GroupSpec::of(slot, home);
                    let id = spec.id.clone();
                    if !groups.iter().any(|g| g.id == id) {
                        groups.push(spec);
                    }
                    Peer::Group(id)
                }
                (None, block) => Peer::Block(IpBlock {
                    cidr: block.as_ref().map(|b| b.cidr.clone()).unwrap_or_default(),
                    except: block
                        .as_ref()
                        .and_then(|b| b.except.clone())
                        .unwrap_or_default(),
                }),
            })
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
    pub labels: &'a Labels,
    pub namespace_labels: &'a BTreeMap<String, String>,
}

impl PodView<'_> {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl CompiledPolicy {
    /// Compiles a policy against the pods of its namespace (the only pods
    /// its own selector can select); returns it with the groups of its
    /// peers (each once).
    pub fn compile<'a>(
        policy: &NetworkPolicy,
        pods: impl Iterator<Item = PodView<'a>>,
    ) -> (Self, Vec<GroupSpec>) {
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
        let mut groups = Vec::new();
        let ingress_rules = spec
            .ingress
            .iter()
            .flatten()
            .map(|r| rule(r.from.as_ref(), r.ports.as_ref(), &namespace, &mut groups))
            .collect();
        let egress_rules = spec
            .egress
            .iter()
            .flatten()
            .map(|r| rule(r.to.as_ref(), r.ports.as_ref(), &namespace, &mut groups))
            .collect();
        let mut compiled = Self {
            select: Slot::Pods(spec.pod_selector.clone().unwrap_or_default()),
            selected: HashSet::new(),
            ingress,
            egress,
            ingress_rules,
            egress_rules,
            namespace,
            name,
            nodes: BTreeSet::new(),
        };
        for pod in pods {
            compiled.update_pod(&pod.key(), Some(pod));
        }
        (compiled, groups)
    }

    /// The ids of the groups its peers refer to (a group may repeat).
    pub fn group_ids(&self) -> impl Iterator<Item = &str> {
        self.ingress_rules
            .iter()
            .chain(&self.egress_rules)
            .flat_map(|r| r.peers.iter().flatten())
            .filter_map(|peer| match peer {
                Peer::Group(id) => Some(id.as_str()),
                Peer::Block(_) => None,
            })
    }

    /// Re-checks one pod (`None`: it is gone) against the policy's own
    /// selector; returns whether the selected set changed.
    pub fn update_pod(&mut self, key: &str, pod: Option<PodView<'_>>) -> bool {
        let now = pod.is_some_and(|p| {
            self.select
                .matches(&self.namespace, p.namespace, p.labels, p.namespace_labels)
        });
        match (now, self.selected.contains(key)) {
            (true, false) => self.selected.insert(key.to_string()),
            (false, true) => self.selected.remove(key),
            _ => false,
        }
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
                        .map(|peer| match peer {
                            Peer::Group(id) => PolicyPeer {
                                group: Some(id.clone()),
                                ..PolicyPeer::default()
                            },
                            Peer::Block(block) => PolicyPeer {
                                ip_block: Some(block.clone()),
                                ..PolicyPeer::default()
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
