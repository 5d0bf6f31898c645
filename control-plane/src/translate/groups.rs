//! Policy peers as shared, per-namespace groups.
//!
//! Every distinct peer selector (pod selector × namespace selector) is one
//! group, named by a hash of its canonical text ([`GroupSpec`]), whatever
//! policy wrote it: a thousand policies admitting `role=api` pods of team
//! `a`'s namespaces share one group, resolved once. A group is published as
//! one [`PeerGroup`] resource per namespace it has members in, so a pod
//! change republishes that namespace's share of the groups whose
//! membership it changes, and nothing else: no policy, and no other
//! namespace's members.
//!
//! A group lives while a policy refers to it. It is sent to the nodes of
//! the policies that refer to it (the nodes of the pods those policies
//! select), the same nodes as the policies, so a proxy holds a group
//! whenever it holds a policy naming it (both are in the same revision).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ferry_api::model::PeerGroup;

use super::policy::{GroupSpec, PodView};
use super::{NamespaceState, NsName};

/// One group's resource: `(namespace, group id)`.
pub type Share = (String, String);

#[derive(Debug)]
struct Group {
    spec: GroupSpec,
    /// Member pods by namespace; no entry for a namespace without members.
    members: BTreeMap<String, BTreeSet<String>>,
    /// The policies that refer to the group.
    users: BTreeSet<NsName>,
    /// Where the group is sent: the union of its users' nodes.
    nodes: BTreeSet<String>,
}

/// Every group a policy refers to, with indexes that bound a pod change to
/// the groups that could admit it.
#[derive(Debug, Default)]
pub struct PeerGroups {
    groups: HashMap<String, Group>,
    /// Pod-selector groups by the namespace their pods are in.
    local: HashMap<String, BTreeSet<String>>,
    /// Groups with a namespace selector: a pod of any namespace may join.
    spanning: BTreeSet<String>,
}

impl PeerGroups {
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Records that `user` refers to the group of `spec`; a new group is
    /// resolved against every pod, and each of its shares is marked.
    pub fn acquire(
        &mut self,
        spec: GroupSpec,
        user: &NsName,
        namespaces: &HashMap<String, NamespaceState>,
        changed: &mut BTreeSet<Share>,
    ) {
        if let Some(group) = self.groups.get_mut(&spec.id) {
            if group.spec.text != spec.text {
                // Two selectors whose 64-bit ids collide: the second shares
                // the first's members. Never seen; loud if it happens.
                tracing::error!(
                    group = %spec.id,
                    existing = %group.spec.text,
                    new = %spec.text,
                    policy = %format_args!("{}/{}", user.0, user.1),
                    "peer group id collision: the policy's peer takes the existing group's members"
                );
            }
            group.users.insert(user.clone());
            return;
        }
        let mut members: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let candidates: Box<dyn Iterator<Item = (&String, &NamespaceState)>> =
            if spec.spans_namespaces() {
                Box::new(namespaces.iter())
            } else {
                Box::new(namespaces.get_key_value(&spec.home).into_iter())
            };
        for (namespace, ns) in candidates {
            for view in ns.pod_views(namespace) {
                if spec.matches(&view) {
                    members
                        .entry(namespace.clone())
                        .or_default()
                        .insert(view.name.to_string());
                }
            }
        }
        for namespace in members.keys() {
            changed.insert((namespace.clone(), spec.id.clone()));
        }
        if spec.spans_namespaces() {
            self.spanning.insert(spec.id.clone());
        } else {
            self.local
                .entry(spec.home.clone())
                .or_default()
                .insert(spec.id.clone());
        }
        self.groups.insert(
            spec.id.clone(),
            Group {
                spec,
                members,
                users: BTreeSet::from([user.clone()]),
                nodes: BTreeSet::new(),
            },
        );
    }

    /// `user` no longer refers to group `id`; the group goes with its last
    /// user (its shares are marked, to be removed).
    pub fn release(&mut self, id: &str, user: &NsName, changed: &mut BTreeSet<Share>) {
        let Some(group) = self.groups.get_mut(id) else {
            return;
        };
        group.users.remove(user);
        if !group.users.is_empty() {
            return;
        }
        let Some(group) = self.groups.remove(id) else {
            return;
        };
        for namespace in group.members.keys() {
            changed.insert((namespace.clone(), id.to_string()));
        }
        if group.spec.spans_namespaces() {
            self.spanning.remove(id);
        } else if let Some(ids) = self.local.get_mut(&group.spec.home) {
            ids.remove(id);
            if ids.is_empty() {
                self.local.remove(&group.spec.home);
            }
        }
    }

    /// Re-checks one pod (`None`: it is gone) against the groups that could
    /// admit it: the pod-selector groups of its namespace and the groups
    /// with a namespace selector.
    pub fn update_pod(
        &mut self,
        namespace: &str,
        name: &str,
        pod: Option<PodView<'_>>,
        changed: &mut BTreeSet<Share>,
    ) {
        let Self {
            groups,
            local,
            spanning,
        } = self;
        let ids = local.get(namespace).into_iter().flatten().chain(&*spanning);
        for id in ids {
            let Some(group) = groups.get_mut(id) else {
                continue;
            };
            let now = pod.as_ref().is_some_and(|p| group.spec.matches(p));
            if Self::set_member(&mut group.members, namespace, name, now) {
                changed.insert((namespace.to_string(), id.clone()));
            }
        }
    }

    /// A namespace's labels changed: its pods are re-checked against the
    /// groups with a namespace selector.
    pub fn update_namespace(
        &mut self,
        namespace: &str,
        ns: &NamespaceState,
        changed: &mut BTreeSet<Share>,
    ) {
        for id in &self.spanning {
            let Some(group) = self.groups.get_mut(id) else {
                continue;
            };
            let mut any = false;
            for view in ns.pod_views(namespace) {
                let now = group.spec.matches(&view);
                any |= Self::set_member(&mut group.members, namespace, view.name, now);
            }
            if any {
                changed.insert((namespace.to_string(), id.clone()));
            }
        }
    }

    fn set_member(
        members: &mut BTreeMap<String, BTreeSet<String>>,
        namespace: &str,
        pod: &str,
        member: bool,
    ) -> bool {
        if member {
            match members.get_mut(namespace) {
                Some(pods) => pods.insert(pod.to_string()),
                None => {
                    members.insert(namespace.to_string(), BTreeSet::from([pod.to_string()]));
                    true
                }
            }
        } else {
            let Some(pods) = members.get_mut(namespace) else {
                return false;
            };
            let removed = pods.remove(pod);
            if pods.is_empty() {
                members.remove(namespace);
            }
            removed
        }
    }

    /// The policies that refer to group `id`.
    pub fn users(&self, id: &str) -> impl Iterator<Item = &NsName> {
        self.groups.get(id).into_iter().flat_map(|g| &g.users)
    }

    /// Sets where group `id` is sent; when that changes, every share of the
    /// group is marked (nodes that gained it need it, those that lost it
    /// drop it).
    pub fn set_nodes(&mut self, id: &str, nodes: BTreeSet<String>, changed: &mut BTreeSet<Share>) {
        let Some(group) = self.groups.get_mut(id) else {
            return;
        };
        if group.nodes == nodes {
            return;
        }
        group.nodes = nodes;
        for namespace in group.members.keys() {
            changed.insert((namespace.clone(), id.to_string()));
        }
    }

    /// The resource of one share and the nodes it goes to; `None` when the
    /// group has no members there (or is gone).
    pub fn share(&self, namespace: &str, id: &str) -> Option<(PeerGroup, &BTreeSet<String>)> {
        let group = self.groups.get(id)?;
        let pods = group.members.get(namespace)?;
        Some((
            PeerGroup {
                namespace: namespace.to_string(),
                group: id.to_string(),
                pods: pods.iter().cloned().collect(),
                selector: group.spec.text.clone(),
            },
            &group.nodes,
        ))
    }
}
